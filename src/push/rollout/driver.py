"""The rollout driver: the thin loop around push.rollout.step. Every `push serve` runs one
(`Driver.run` in a thread), and `push rollout ... --wait` runs one straight on the bucket;
the lease (push.rollout.lease) makes exactly one of them drive each rollout.

One round, per active rollout: hold its lease (else leave it to its holder), read it,
observe its servers in a fleet view (push.fleetview: their files and their agents' reports,
followed through the change journal; no read per server per round), `step()`, make the
writes through push.fleet (the same operation as a deploy: config, compare-and-swap,
signing, history naming the rollout, triggers), and save the rollout by compare-and-swap.
A control request written meanwhile is merged in and the save retried.
A driver that dies between a write and the save loses nothing: its successor sees the
server file already holds the release and counts the server as changed.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from push import timestamps
from push.errors import Conflict, PushError, StoreError
from push.fleet import ChangedMeanwhile, Context, rollout_change
from push.fleetstate import liveness
from push.fleetview import FleetView, Snapshot
from push.release import short
from push.rollout import model
from push.rollout.lease import TTL, Leases
from push.rollout.model import Rollout
from push.rollout.step import Observed, Write, applied, judge, step

log = logging.getLogger(__name__)
INTERVAL = 1.0
# While a wave waits on its servers' health, the driver asks for a look at the change journal
# this often (one listing, whatever the fleet's size) and steps when it names one of the
# wave's servers: a wave is done within about this long after its last server reports healthy.
BUSY_INTERVAL = 0.25
# Straight to the bucket (`--wait`), the driver's own fleet view re-lists the bucket this
# often: a heartbeat (not journaled) is seen within it, so an agent reporting every 5 s or more
# is never called stale between two of its reports.
STRAIGHT_FULL_INTERVAL = 5.0
WRITERS = 8              # threads writing a wave's server files


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Driver:
    """Drives the active rollouts it holds the lease of, judging their servers from a fleet
    view (push.fleetview: the servers' files and their agents' reports, followed through the
    change journal), never by reading each server's objects at every round. Inside `push
    serve` that is the push server's own view and `look` asks its watch hub for a poll now;
    straight to the bucket (`Driver.straight`) the driver keeps a view of its own. Every
    server file the driver writes must reach the view before its next round: push serve's
    triggers refresh its view after every write of the push server's; else `after_write`. Its changes are recorded
    as made by whoever started the rollout, via this process's front end."""

    def __init__(self, ctx: Context, view: FleetView, *, look: Callable[[], object] | None = None,
                 after_write: Callable[[str], object] | None = None, holder: str | None = None,
                 ttl: float = TTL, stale_after: float | None = None) -> None:
        self.ctx = ctx
        self.view = view
        self.own_view = look is None  # looked at by each round (else by its owner, push serve's hub)
        self.look = look or (lambda: view.refresh(include_catalog=False))
        self.after_write = after_write
        self.leases = Leases(ctx.store, holder or holder_name(), ttl)
        self.stale_after = stale_after
        self._driving: set[str] = set()  # the rollouts this driver has held the lease of since it took it
        self._waiting: set[str] = set()  # the servers of waves waiting on their health
        self._wake = threading.Event()
        self.rounds = 0
        view.on_news = self.news

    @classmethod
    def straight(cls, ctx: Context, **kwargs: Any) -> Driver:
        """A driver straight on the bucket (`push rollout ... --wait` without a push server):
        its own fleet view, refreshed by each of its writes."""
        view = FleetView(ctx, full_interval=STRAIGHT_FULL_INTERVAL)
        return cls(ctx, view, after_write=view.refresh_server, **kwargs)

    def wake(self) -> None:
        """Step now rather than at the next interval (a start or control request)."""
        self._wake.set()

    def news(self, servers: frozenset[str] | None) -> None:
        """The fleet view saw news (None: a full look): step now if it concerns a waiting wave."""
        if servers is None or not servers.isdisjoint(self._waiting):
            self._wake.set()

    # -- one round ------------------------------------------------------------------------

    def round(self) -> bool:
        """One step of every active rollout this driver may drive; whether one of them waits
        on its servers' health (then the journal is looked at every BUSY_INTERVAL)."""
        self.rounds += 1
        busy = False
        if self.own_view:
            self._look_now()
        try:
            ids = model.active_ids(self.ctx.store)
        except PushError as e:
            log.warning("rollouts: cannot list the active ones: %s", e)
            return False
        waiting: set[str] = set()
        for rid in ids:
            try:
                r = self.drive(rid)
            except PushError as e:
                log.warning("rollout %s: %s", rid, e)
                continue
            if r is not None and _waits(r):
                busy = True
                waiting.update(r.wave_servers(r.wave))
        self._waiting = waiting
        return busy

    def drive(self, rollout_id: str) -> Rollout | None:
        """One step of one rollout, if this driver holds (or takes) its lease; the rollout
        after it (None: another driver holds it)."""
        if not self.leases.hold(rollout_id):
            self._driving.discard(rollout_id)
            return None
        r = model.read(self.ctx.store, rollout_id)
        if r.active:
            taken = rollout_id not in self._driving
            if taken:  # who drives is part of the story (a takeover)
                r.note(timestamps.now_text(), f"driven by {self.leases.holder}")
            self._driving.add(rollout_id)
            r = self._step(r, save=taken)
        if not r.active:
            self._driving.discard(rollout_id)
            model.release_active(self.ctx.store, r.app, rollout_id=r.id)
            self.leases.release(r.id)
        return r

    def _observe(self, r: Rollout) -> dict[str, Observed]:
        """What the fleet view shows of the servers step() looks at: the current wave's and
        those written. No read of the bucket: the view follows it."""
        snapshot = self.view.snapshot
        now = timestamps.now()
        wanted = set(r.wave_servers(r.wave)) | {s.server for s in r.servers.values() if s.phase != "pending"}
        return {server: self._look(r, snapshot, server, now) for server in wanted}

    def _look(self, r: Rollout, snapshot: Snapshot, server: str, now: datetime) -> Observed:
        seen = snapshot.seen
        error = seen.file_errors.get(server)
        if error is not None:
            return Observed(desired=None, readable=False, detail=error[1])
        sf = seen.files.get(server)
        release = sf.release_of(r.app) if sf is not None else None
        desired = release.name if release is not None else None
        if desired != r.release:
            return Observed(desired=desired)
        report = snapshot.report(server)
        live = liveness(report, self.view.watcher(server), seen.report_times.get(server), now)
        health, detail = judge(report, r.app, r.release, now, self.stale_after, live)
        return Observed(desired=desired, health=health, detail=detail)

    def _step(self, r: Rollout, save: bool = False) -> Rollout:
        new, writes = step(r, self._observe(r), timestamps.now())
        self._write_all(new, writes)
        # A wave done (bake 0, or a promote) started the next, whose servers were not observed
        # yet: step again now to write them, rather than a round later.
        wave = r.wave
        while new.active and new.wave != wave \
                and any(new.servers[s].phase == "pending" for s in new.wave_servers(new.wave)):
            wave = new.wave
            new, writes = step(new, self._observe(new), timestamps.now())
            self._write_all(new, writes)
        if not save and new.model_dump() == r.model_dump():
            return r  # nothing new: no write
        saved = self._save(r, new)
        announce(self.ctx, r, saved)
        return saved

    def _write_all(self, r: Rollout, writes: list[Write]) -> None:
        """Make a step's writes, each server by its own compare-and-swap through push.fleet,
        a few at a time (as many servers' writes are independent), and record each in `r`."""
        if not writes:
            return
        with ThreadPoolExecutor(min(WRITERS, len(writes))) as pool:
            outcomes = list(pool.map(lambda w: self._write(r, w), writes))
        now = timestamps.now()
        for w, (record_id, current, refused, retry) in zip(writes, outcomes, strict=True):
            if retry:
                continue
            applied(r, w, now, record_id=record_id, current=current, refused=refused)

    def _write(self, r: Rollout, w: Write) -> tuple[str | None, str | None, str | None, bool]:
        """(history id, what the server runs instead, why refused, to retry) of one write."""
        try:
            change = rollout_change(self.ctx, r.who, w.server, r.app, w.to, w.action, w.expected, r.id)
        except ChangedMeanwhile as e:
            return None, e.current, f"changed meanwhile: it runs {short(e.current)}", False
        except StoreError as e:  # the bucket: tried again at the next step
            log.warning("rollout %s: writing %s failed: %s", r.id, w.server, e)
            return None, None, None, True
        except PushError as e:  # not allowed any more, release gone, ...: that server is left
            return None, None, str(e), False
        if self.after_write is not None:
            try:
                self.after_write(w.server)
            except PushError as e:  # seen at the view's next look
                log.warning("rollout %s: re-reading %s failed: %s", r.id, w.server, e)
        return (change.record.id if change.record is not None else None), None, None, False

    def _save(self, before: Rollout, new: Rollout) -> Rollout:
        """Save by compare-and-swap; control requests written meanwhile are merged in."""
        for _ in range(20):
            try:
                return model.write(self.ctx.store, new)
            except Conflict:
                fresh = model.read(self.ctx.store, new.id)
                for field in ("pause", "promote", "abort"):
                    if getattr(fresh, field) != getattr(before, field):
                        setattr(new, field, getattr(fresh, field))
                before, new.generation = fresh, fresh.generation
        raise Conflict(f"rollout {new.id}: could not be saved (too many writers)")

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        """Rounds every `interval` seconds until `stop` is set (push serve's thread); while a
        wave waits on health, a look at the journal every BUSY_INTERVAL and a round on news."""
        last = float("-inf")
        busy = False
        while not stop.is_set():
            if self._wake.is_set() or time.monotonic() - last >= interval:
                self._wake.clear()
                last = time.monotonic()
                try:
                    busy = self.round()
                except Exception:
                    log.exception("rollouts: a round failed")
                    busy = False
            if busy and not self.own_view:
                self._look_now()
            self._wake.wait(max(0.0, min(BUSY_INTERVAL if busy else interval, last + interval - time.monotonic())))

    def _look_now(self) -> None:
        try:
            self.look()
        except PushError as e:
            log.warning("rollouts: cannot look at the bucket: %s", e)

    def follow(self, rollout_id: str, interval: float, on_round: Callable[[Rollout], None]) -> Rollout:
        """Drive (or, while another driver holds the lease, watch) one rollout until it ends:
        `push rollout ... --wait` straight to the bucket. The driver's view is refreshed
        every BUSY_INTERVAL while a wave waits, else every `interval`."""
        self._look_now()
        while True:
            self._wake.clear()
            r = self.drive(rollout_id)
            if r is None:
                r = model.read(self.ctx.store, rollout_id)
            on_round(r)
            if not r.active:
                return r
            self._waiting = set(r.wave_servers(r.wave))
            deadline = time.monotonic() + interval
            while not self._wake.is_set() and time.monotonic() < deadline:
                if _waits(r):
                    self._look_now()
                self._wake.wait(max(0.0, min(BUSY_INTERVAL if _waits(r) else interval,
                                             deadline - time.monotonic())))
            if not _waits(r):
                self._look_now()


def _waits(r: Rollout) -> bool:
    """Whether `r` waits on its current wave's health (its driver then looks often)."""
    return r.active and r.state != "paused" and r.waves[r.wave].healthy_at is None


def announce(ctx: Context, before: Rollout, after: Rollout) -> None:
    """The rollout.* notifications (push.notify) of one step: each wave done, a failure, the end."""
    def emit(kind: str, wave: int | None = None, servers: list[str] | None = None, reason: str | None = None) -> None:
        fields: dict[str, object] = {"who": after.who, "rollout": after.id, "app": after.app,
                                     "release": after.release, "wave": wave,
                                     "servers": servers if servers is not None else after.plan.servers}
        if reason:
            fields["reason"] = reason
        ctx.notifier.emit(kind, fields)

    for i, (old, new) in enumerate(zip(before.waves, after.waves, strict=True)):
        if old.done is None and new.done is not None:
            emit("rollout.wave_done", i + 1, after.wave_servers(i))
    if before.state == after.state:
        return
    if after.state in ("rolling_back", "failed") and before.state in ("running", "paused") \
            and not (after.reason or "").startswith("aborted"):
        emit("rollout.failed", after.wave + 1, reason=after.reason)
    if after.state in ("completed", "rolled_back", "aborted"):
        emit(f"rollout.{after.state}", reason=after.reason if after.state != "completed" else None)
