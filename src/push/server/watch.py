"""The agents' watch long-poll, and the loops that keep the fleet view fresh.

`GET /api/v1/watch/{server}?since=REV&timeout=S` waits on an asyncio future, so thousands
of idle agents cost a few hundred bytes each and no thread. Revisions change when this
process writes (woken at once), and when anyone else writes: the bucket is listed every
`poll_interval` seconds (server files, agent reports, unit requests) and the catalogue
refreshed every `catalog_interval` seconds, each in a worker thread.

The long-poll is also the agent's heartbeat: the hub records, in memory, when each server's
agent came for a watch and by when it must come back (the poll's timeout plus
`watch_grace`, or `watch_grace` after it was answered); the fleet view calls an agent that
is not back by then stale (push.fleetstate.liveness), within 90 s of its stop with the
defaults (55 + 20 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import timedelta

from push import timestamps
from push.fleetstate import Watcher
from push.fleetview import FleetView

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 55.0
MAX_TIMEOUT = 300.0
# A long-poll with nothing to say is answered up to this fraction early, at random: agents
# that all connected at once (a push server restart, a network blip) would otherwise come
# back all at once every `timeout` seconds, forever in step.
TIMEOUT_JITTER = 0.1
# How long after its long-poll ends an agent has to come back before it is stale (the
# network, a reconnect's first backoff; pulld's watch thread comes back at once).
WATCH_GRACE = 20.0


def jittered(timeout: float) -> float:
    """When to answer a long-poll asked to wait `timeout` seconds, if nothing changes."""
    return timeout * random.uniform(1 - TIMEOUT_JITTER, 1.0)


class WatchHub:
    def __init__(self, view: FleetView, *, poll_interval: float = 2.0, catalog_interval: float = 10.0,
                 watch_grace: float = WATCH_GRACE) -> None:
        self.view = view
        self.watch_grace = watch_grace
        self.poll_interval = poll_interval
        self.catalog_interval = catalog_interval
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = asyncio.Event()
        self.poll_errors = 0
        self.last_poll_error: str | None = None
        self.wakeups = 0
        self._soon: asyncio.Event | None = None  # set by poll_soon(): the next poll now

    @property
    def watchers(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._soon = asyncio.Event()
        self._tasks = [asyncio.create_task(self._poll_loop(), name="push-bucket-poll"),
                       asyncio.create_task(self._catalog_loop(), name="push-catalog-refresh")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    async def ready(self) -> None:
        """Wait for the first load of the bucket (so a rev is never answered from nothing)."""
        if not self.view.loaded:
            await asyncio.to_thread(self.view.ensure_loaded)

    async def _poll_loop(self) -> None:
        while True:
            try:
                changed = await asyncio.to_thread(self.view.refresh, include_catalog=not self.view.loaded)
                self.last_poll_error = None
                self._notify(changed)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down: keep serving what we have, retry
                self.poll_errors += 1
                self.last_poll_error = f"{type(e).__name__}: {e}"
                log.warning("bucket poll failed: %s", self.last_poll_error)
            assert self._soon is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), self.poll_interval)
            self._soon.clear()

    def poll_soon(self) -> None:
        """Poll the bucket now rather than at the next interval (from any thread): the rollout
        driver asks while a wave waits on its servers' health. A poll is one listing of the
        change journal when nothing changed, whatever the fleet's size."""
        loop, soon = self._loop, self._soon
        if loop is not None and soon is not None and not loop.is_closed():
            loop.call_soon_threadsafe(soon.set)

    async def _catalog_loop(self) -> None:
        while True:
            await asyncio.sleep(self.catalog_interval)
            try:
                if await asyncio.to_thread(self.view.refresh_catalog):
                    log.info("new releases in the catalogue")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.poll_errors += 1
                self.last_poll_error = f"{type(e).__name__}: {e}"
                log.warning("catalogue refresh failed: %s", self.last_poll_error)

    def _notify(self, servers: set[str]) -> None:
        for server in servers:
            waiters = self._waiters.pop(server, None)
            if not waiters:
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
                    self.wakeups += 1

    def wake_from_thread(self, server: str) -> None:
        """After a write by this process (called from a worker thread): re-read the server
        and wake its watchers now, without waiting for the next poll."""
        changed = self.view.refresh_server(server)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify, changed | {server})

    async def wait(self, server: str, since: str | None, timeout: float) -> tuple[str, bool]:
        """(rev, changed): at once without `since` or if the rev differs, else when it
        changes or after `timeout` seconds."""
        await self.ready()
        rev = self.view.rev(server)
        if since is None:
            self._came(server, 0.0)
            return rev, False
        wait = jittered(max(0.0, min(timeout, MAX_TIMEOUT)))
        self._came(server, wait)
        try:
            return await self._wait(server, since, rev, wait)
        finally:
            self._came(server, 0.0)  # answered (or the agent went away): back within the grace

    def _came(self, server: str, wait: float) -> None:
        """Record the agent's watch: it must be back `wait` seconds plus the grace from now."""
        if server not in self.view.sources.config.servers:
            return  # only servers of the fleet: a stranger's names cost no memory
        now = timestamps.now()
        self.view.watched(server, Watcher(last=now, back_by=now + timedelta(seconds=wait + self.watch_grace)))

    async def _wait(self, server: str, since: str, rev: str, wait: float) -> tuple[str, bool]:
        deadline = time.monotonic() + wait
        loop = asyncio.get_running_loop()
        while rev == since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return rev, False
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(server, set()).add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(server)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[server]
            rev = self.view.rev(server)
        return rev, True
