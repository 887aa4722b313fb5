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
from collections.abc import Callable

from push import serverfile, status, timestamps
from push.errors import Conflict, NotFound, PushError, StoreError
from push.fleet import ChangedMeanwhile, Context, rollout_change
from push.rollout import model
from push.rollout.lease import TTL, Leases
from push.rollout.model import Rollout
from push.rollout.step import Observed, Write, applied, judge, step
from push.serverfile import ServerFile
from push.status import AgentStatus

log = logging.getLogger(__name__)
INTERVAL = 1.0

ReportOf = Callable[[str], AgentStatus | None]


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Driver:
    """Drives the active rollouts it holds the lease of. `report_of` reads an agent's report
    (the push server passes its fleet view's; default: the bucket)."""

    def __init__(self, ctx: Context, *, who: str = "rollout", report_of: ReportOf | None = None,
                 holder: str | None = None, ttl: float = TTL, stale_after: float = status.STALE_AFTER_SECONDS,
                 on_event: Callable[[Rollout, str], None] | None = None) -> None:
        self.ctx = ctx
        self.who = who
        self.leases = Leases(ctx.store, holder or holder_name(), ttl)
        self.report_of = report_of or (lambda server: status.read(ctx.store, server))
        self.stale_after = stale_after
        self.on_event = on_event
        self._files: dict[str, ServerFile] = {}
        self._driving: set[str] = set()  # the rollouts this driver has held the lease of since it took it
        self.rounds = 0

    # -- one round ------------------------------------------------------------------------

    def round(self) -> None:
        """One step of every active rollout this driver may drive."""
        self.rounds += 1
        try:
            ids = model.active_ids(self.ctx.store)
        except PushError as e:
            log.warning("rollouts: cannot list the active ones: %s", e)
            return
        for rid in ids:
            try:
                self.drive(rid)
            except PushError as e:
                log.warning("rollout %s: %s", rid, e)

    def drive(self, rollout_id: str) -> Rollout | None:
        """One step of one rollout, if this driver holds (or takes) its lease; the rollout
        after it (None: another driver holds it)."""
        if not self.leases.hold(rollout_id):
            self._driving.discard(rollout_id)
            return None
        r = model.read(self.ctx.store, rollout_id)
        if r.active:
            if rollout_id not in self._driving:  # who drives is part of the story (a takeover)
                r.note(timestamps.now_text(), f"driven by {self.leases.holder}")
            self._driving.add(rollout_id)
            r = self._step(r)
        if not r.active:
            self._driving.discard(rollout_id)
            model.release_active(self.ctx.store, r.app, rollout_id=r.id)
            self.leases.release(r.id)
        return r

    def _observe(self, r: Rollout) -> dict[str, Observed]:
        now = timestamps.now()
        wanted = set(r.wave_servers(r.wave)) | {s.server for s in r.servers.values() if s.phase != "pending"}
        out: dict[str, Observed] = {}
        for server in wanted:
            try:
                old = self._files.get(server)
                sf = serverfile.read(self.ctx.store, server, old.generation if old and old.generation else None)
                sf = sf if sf is not None else old
                assert sf is not None
                self._files[server] = sf
                release = sf.release_of(r.app)
                desired = release.name if release is not None else None
            except PushError as e:
                out[server] = Observed(desired=None, readable=False, detail=str(e))
                continue
            health, detail = "unknown", None
            if desired == r.release:
                try:
                    report = self.report_of(server)
                except PushError as e:
                    report, detail = None, str(e)
                health, detail = judge(report, r.app, r.release, now, self.stale_after)
            out[server] = Observed(desired=desired, health=health, detail=detail)
        return out

    def _step(self, r: Rollout) -> Rollout:
        new, writes = step(r, self._observe(r), timestamps.now())
        for w in writes:
            self._write(new, w)
        # A wave done (bake 0, or a promote) started the next, whose servers were not observed
        # yet: step again now to write them, rather than a round later.
        wave = r.wave
        while new.active and new.wave != wave \
                and any(new.servers[s].phase == "pending" for s in new.wave_servers(new.wave)):
            wave = new.wave
            new, writes = step(new, self._observe(new), timestamps.now())
            for w in writes:
                self._write(new, w)
        saved = self._save(r, new)
        announce(self.ctx, r, saved)
        for event in saved.events[len(r.events):] if len(saved.events) >= len(r.events) else saved.events[-3:]:
            if self.on_event is not None:
                self.on_event(saved, event)
        return saved

    def _write(self, r: Rollout, w: Write) -> None:
        now = timestamps.now()
        try:
            change = rollout_change(self.ctx, r.who, w.server, r.app, w.to, w.action,
                                    w.expected, r.id)
        except ChangedMeanwhile as e:
            applied(r, w, now, current=e.current, refused=f"changed meanwhile: it runs {e.current or 'nothing'}")
            return
        except StoreError as e:  # the bucket: tried again at the next step
            log.warning("rollout %s: writing %s failed: %s", r.id, w.server, e)
            return
        except PushError as e:  # not allowed any more, release gone, ...: that server is left
            applied(r, w, now, current=None, refused=str(e))
            return
        self._files.pop(w.server, None)
        applied(r, w, now, record_id=change.record.id if change.record is not None else None)

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
            try:
                self.round()
            except Exception:
                log.exception("rollouts: a round failed")
            stop.wait(interval)

    def follow(self, rollout_id: str, interval: float, on_round: Callable[[Rollout], None]) -> Rollout:
        """Drive (or, while another driver holds the lease, watch) one rollout until it ends:
        `push rollout ... --wait` straight to the bucket."""
        stop = threading.Event()
        while True:
            r = self.drive(rollout_id)
            if r is None:
                try:
                    r = model.read(self.ctx.store, rollout_id)
                except NotFound:
                    raise
            on_round(r)
            if not r.active:
                return r
            stop.wait(interval)


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
