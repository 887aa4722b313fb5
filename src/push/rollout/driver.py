"""The rollout driver: the thin loop around push.rollout.step. Every `push serve` runs one
(`Driver.run` in a thread), and `push rollout ... --wait` runs one straight on the bucket;
the lease (push.rollout.lease) makes exactly one of them drive each rollout.

One round, per active rollout: hold its lease (else leave it to its holder), read it,
observe its servers (their server files by conditional reads, their agents' reports),
`step()`, make the writes through push.fleet (the same operation as a deploy: config,
compare-and-swap, signing, history naming the rollout, triggers), and save the rollout by
compare-and-swap. A control request written meanwhile is merged in and the save retried.
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

from push import serverfile, status, timestamps
from push.errors import Conflict, PushError, StoreError
from push.fleet import ChangedMeanwhile, Context, rollout_change
from push.rollout import model
from push.rollout.lease import TTL, Leases
from push.rollout.model import Rollout
from push.rollout.step import Observed, Write, applied, judge, step
from push.serverfile import ServerFile
from push.status import AgentStatus

log = logging.getLogger(__name__)
INTERVAL = 1.0
# Between rounds while a wave waits on its servers' health: a wave is done this soon after its
# last server reports healthy (about 20% of a core while 50 agents converge; docs/benchmarks.md).
BUSY_INTERVAL = 0.1
OBSERVERS = 8            # threads reading server files and reports
WRITERS = 8              # threads writing a wave's server files
HEALTHY_RECHECK = 2.0    # seconds between re-reads of a report that said healthy

ReportOf = Callable[[str], AgentStatus | None]


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Driver:
    """Drives the active rollouts it holds the lease of. `report_of` reads an agent's report
    (default: from the bucket, so a wave is judged on reports as fresh as they are written,
    not at the fleet view's next poll). Its changes are recorded as made by whoever started
    the rollout, via this process's front end."""

    def __init__(self, ctx: Context, *, report_of: ReportOf | None = None, holder: str | None = None,
                 ttl: float = TTL, stale_after: float | None = None) -> None:
        self.ctx = ctx
        self.leases = Leases(ctx.store, holder or holder_name(), ttl)
        self.report_of = report_of or (lambda server: status.read(ctx.store, server))
        self.stale_after = stale_after
        self._files: dict[str, ServerFile] = {}
        self._healthy: dict[str, tuple[str, float]] = {}  # server -> (rollout, when its report last said healthy)
        self._driving: set[str] = set()  # the rollouts this driver has held the lease of since it took it
        self._wake = threading.Event()
        self.rounds = 0

    def wake(self) -> None:
        """Step now rather than at the next interval (news in the fleet view, a request)."""
        self._wake.set()

    # -- one round ------------------------------------------------------------------------

    def round(self) -> bool:
        """One step of every active rollout this driver may drive; whether one of them waits
        on its servers' health (then the next round comes after BUSY_INTERVAL)."""
        self.rounds += 1
        busy = False
        try:
            ids = model.active_ids(self.ctx.store)
        except PushError as e:
            log.warning("rollouts: cannot list the active ones: %s", e)
            return False
        for rid in ids:
            try:
                r = self.drive(rid)
            except PushError as e:
                log.warning("rollout %s: %s", rid, e)
                continue
            if r is not None and r.active and r.state != "paused" and r.waves[r.wave].healthy_at is None:
                busy = True
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
        """What the bucket shows of the servers step() looks at: the current wave's and those
        written, each read in a small pool of threads (a wave of hundreds on GCS is hundreds
        of round trips). A server judged healthy has its report read again only every
        HEALTHY_RECHECK seconds; the others at every round."""
        now = timestamps.now()
        wanted = set(r.wave_servers(r.wave)) | {s.server for s in r.servers.values() if s.phase != "pending"}
        with ThreadPoolExecutor(OBSERVERS) as pool:
            return dict(zip(wanted, pool.map(lambda server: self._look(r, server, now), wanted), strict=True))

    def _look(self, r: Rollout, server: str, now: datetime) -> Observed:
        try:
            old = self._files.get(server)
            sf = serverfile.read(self.ctx.store, server, old.generation if old and old.generation else None)
            sf = sf if sf is not None else old
            assert sf is not None
            self._files[server] = sf
            release = sf.release_of(r.app)
            desired = release.name if release is not None else None
        except PushError as e:
            return Observed(desired=None, readable=False, detail=str(e))
        if desired != r.release:
            return Observed(desired=desired)
        seen = self._healthy.get(server)
        if seen is not None and seen[0] == r.id and time.monotonic() - seen[1] < HEALTHY_RECHECK:
            return Observed(desired=desired, health="healthy")
        detail = None
        try:
            report = self.report_of(server)
        except PushError as e:
            report, detail = None, str(e)
        health, detail = judge(report, r.app, r.release, now, self.stale_after) if report or not detail \
            else ("unknown", detail)
        if health == "healthy":
            self._healthy[server] = (r.id, time.monotonic())
        else:
            self._healthy.pop(server, None)
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
            if refused is None:
                self._files.pop(w.server, None)
            applied(r, w, now, record_id=record_id, current=current, refused=refused)

    def _write(self, r: Rollout, w: Write) -> tuple[str | None, str | None, str | None, bool]:
        """(history id, what the server runs instead, why refused, to retry) of one write."""
        try:
            change = rollout_change(self.ctx, r.who, w.server, r.app, w.to, w.action, w.expected, r.id)
        except ChangedMeanwhile as e:
            return None, e.current, f"changed meanwhile: it runs {e.current or 'nothing'}", False
        except StoreError as e:  # the bucket: tried again at the next step
            log.warning("rollout %s: writing %s failed: %s", r.id, w.server, e)
            return None, None, None, True
        except PushError as e:  # not allowed any more, release gone, ...: that server is left
            return None, None, str(e), False
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
        """Rounds every `interval` seconds until `stop` is set (push serve's thread)."""
        while not stop.is_set():
            self._wake.clear()
            busy = False
            try:
                busy = self.round()
            except Exception:
                log.exception("rollouts: a round failed")
            self._wake.wait(min(interval, BUSY_INTERVAL) if busy else interval)

    def follow(self, rollout_id: str, interval: float, on_round: Callable[[Rollout], None]) -> Rollout:
        """Drive (or, while another driver holds the lease, watch) one rollout until it ends:
        `push rollout ... --wait` straight to the bucket."""
        while True:
            r = self.drive(rollout_id)
            if r is None:
                r = model.read(self.ctx.store, rollout_id)
            on_round(r)
            if not r.active:
                return r
            time.sleep(min(interval, BUSY_INTERVAL) if r.waves[r.wave].healthy_at is None else interval)


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
