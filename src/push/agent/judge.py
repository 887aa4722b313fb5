"""Judging the health of what runs: a small worker per app, and the verdicts it reaches.

After every install the agent hands the app's release to the `Judge` (its units, its
declared check, when the judgement started and its deadline). A worker thread per app
probes it: the units' facts from the service manager (a failed unit, or one that is not
active, is not healthy; without a declared check the units must also have been active for
the settle time), then the check (push.agent.checks), which has its own timeout. While the
release is in its install window (never yet healthy) it is probed every `FAST` seconds: it
is `progressing` until it is healthy, and `unhealthy` with `final` set when a unit failed or
its deadline passed — the plan then reverts it. Once healthy it is probed every `interval`
seconds, and a failure then is reported, never reverted.

Why workers, not the step: a check may take up to its timeout (10 s by default, a hung
command until it is killed); in a thread it never delays installs, removals or unit
requests of other apps, and a verdict that changes wakes the loop (`on_change`) so the
report follows within a step's time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from push import timestamps
from push.agent import checks
from push.agent.services import ServiceManager, UnitFacts
from push.errors import PushError
from push.health import DEFAULT_SETTLE, Health, HealthCheck
from push.units import units_to_start

log = logging.getLogger(__name__)

FAST = 0.2          # seconds between probes while a release is progressing
LOG_LINES = 10      # lines of a unit's journal (or supervisor log) in an unhealthy verdict


@dataclass(frozen=True)
class Subject:
    """What to judge: one app's installed release."""

    app: str
    release: str
    units: tuple[str, ...]
    check: HealthCheck | None      # None: no declared check (units only)
    since: str                     # UTC text: when the judgement started
    since_epoch: float
    deadline_epoch: float
    revert: bool                   # an unhealthy final verdict in the install window may revert it
    healthy: bool = False          # judged healthy before (a restarted agent resumes there)


@dataclass(frozen=True)
class Verdict:
    """The health of one app's release as last probed: the facts the plan and the report read."""

    app: str
    release: str
    health: Health
    detail: str
    final: bool = False            # unhealthy in its install window, for good: a unit failed or the deadline passed
    revert: bool = False           # ... and it may be reverted
    healthy_once: bool = False     # it has been healthy since it was installed (never reverted after that)
    since: str | None = None
    deadline: str | None = None    # UTC text, while in the install window
    probes: int = 0


def _describe(unit: str, f: UnitFacts) -> str:
    bits = [f"{unit} is {f.state}" + (f" ({f.sub_state})" if f.sub_state and f.sub_state != f.state else "")]
    if f.last_exit not in (None, 0):
        bits.append(f"last exit {f.last_exit}")
    if f.restarts:
        bits.append(f"restarted {f.restarts} time{'s' if f.restarts != 1 else ''}")
    return ", ".join(bits)


def probe(subject: Subject, services: ServiceManager, root: Path | None, *, settle: float,
          now_epoch: float) -> tuple[Health, str, bool]:
    """One look at `subject`: (health, detail, final). Blocks for at most the check's timeout.

    The detail's words stay the same while nothing changes (no seconds counting up): a report
    is published when it differs from the last, so they must not make every step a new one.
    """
    in_window = not subject.healthy
    past_deadline = now_epoch >= subject.deadline_epoch
    try:
        facts = {u: f for u, f in services.facts(subject.units).items() if f.state != "unsupported"}
    except PushError as e:
        return Health.UNKNOWN, f"cannot read the units' states: {e}", False
    failed = [u for u, f in facts.items() if f.state == "failed"]
    if failed:
        return Health.UNHEALTHY, "; ".join(_describe(u, facts[u]) for u in failed), in_window
    waiting = [u for u, f in facts.items() if f.state != "active"]
    if waiting:
        detail = "; ".join(_describe(u, facts[u]) for u in waiting)
        return _not_yet(subject, detail, past_deadline)
    if subject.check is None or not subject.check.declared:
        young = {u: f for u, f in facts.items() if (f.active_for or 0.0) < settle}
        if young:
            detail = "; ".join(f"{_describe(u, f)}, not yet for the {settle:g}s settle time"
                               for u, f in young.items())
            if not in_window:  # restarted while running (a unit request, Restart=): settling again
                return Health.PROGRESSING, detail, False
            return _not_yet(subject, detail, past_deadline)
        if not facts:
            return Health.HEALTHY, "installed, with no units to run", False
        return Health.HEALTHY, f"{', '.join(sorted(facts))} active for at least {settle:g}s", False
    result = checks.run(subject.check, subject.app, root)
    if result.ok:
        return Health.HEALTHY, "health check passed", False
    if not in_window:
        return Health.UNHEALTHY, f"health check failed: {result.detail}", False
    return _not_yet(subject, f"health check failed: {result.detail}", past_deadline)


def _not_yet(subject: Subject, detail: str, past_deadline: bool) -> tuple[Health, str, bool]:
    if subject.healthy:
        return Health.UNHEALTHY, detail, False
    if past_deadline:
        within = subject.deadline_epoch - subject.since_epoch
        return Health.UNHEALTHY, f"not healthy within {within:g}s: {detail}", True
    return Health.PROGRESSING, detail, False


class _Worker(threading.Thread):
    def __init__(self, judge: Judge, subject: Subject) -> None:
        super().__init__(name=f"judge-{subject.app}", daemon=True)
        self.judge = judge
        self.subject = subject
        self.stopped = threading.Event()

    def run(self) -> None:
        subject, probes = self.subject, 0
        while not self.stopped.is_set():
            try:
                health, detail, final = probe(subject, self.judge.services, self.judge.root,
                                              settle=self.judge.settle, now_epoch=time.time())
            except Exception as e:  # a bug must not end the judgement silently
                log.exception("health probe failed")
                health, detail, final = Health.UNKNOWN, f"the health probe failed: {e}", False
            probes += 1
            if health is Health.UNHEALTHY and (final or subject.healthy):
                detail = self.judge.with_logs(subject, detail)
            if health is Health.HEALTHY and not subject.healthy:
                subject = replace(subject, healthy=True)
            verdict = Verdict(subject.app, subject.release, health, detail, final=final,
                              revert=final and subject.revert, healthy_once=subject.healthy, since=subject.since,
                              deadline=None if subject.healthy else utc_text(subject.deadline_epoch),
                              probes=probes)
            if not self.judge.publish(self, verdict):
                return
            if final:
                return  # for good: the plan reverts it, or it stays unhealthy until the next install
            interval = subject.check.interval if subject.check is not None else self.judge.running_interval
            settling = health in (Health.PROGRESSING, Health.UNKNOWN)
            self.stopped.wait(FAST if settling else interval)


class Judge:
    """The health workers of one agent, and their latest verdicts (thread-safe)."""

    def __init__(self, services: ServiceManager, root: Path | None, *, settle: float = DEFAULT_SETTLE,
                 running_interval: float = 30.0, on_change: Callable[[], None] | None = None) -> None:
        self.services = services
        self.root = root
        self.settle = settle
        self.running_interval = running_interval   # between probes of a running release with no declared check
        self.on_change = on_change
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._changed = threading.Condition(self._lock)

    def judge(self, subject: Subject) -> None:
        """Start judging `subject` (replacing any judgement of the app), unless it is judged already."""
        with self._lock:
            worker = self._workers.get(subject.app)
            if worker is not None and worker.subject.release == subject.release \
                    and worker.subject.since_epoch == subject.since_epoch:
                return
            if worker is not None:
                worker.stopped.set()
            self._verdicts[subject.app] = Verdict(
                subject.app, subject.release, Health.UNKNOWN if subject.healthy else Health.PROGRESSING,
                "not judged yet" if subject.healthy else "just started: not judged yet", healthy_once=subject.healthy,
                since=subject.since,
                deadline=None if subject.healthy else utc_text(subject.deadline_epoch))
            worker = self._workers[subject.app] = _Worker(self, subject)
            worker.start()

    def forget(self, app: str) -> None:
        with self._lock:
            worker = self._workers.pop(app, None)
            if worker is not None:
                worker.stopped.set()
            self._verdicts.pop(app, None)

    def subjects(self) -> dict[str, Subject]:
        with self._lock:
            return {app: w.subject for app, w in self._workers.items()}

    def publish(self, worker: _Worker, verdict: Verdict) -> bool:
        """A worker's verdict; False when the worker was replaced meanwhile (its verdict is dropped)."""
        with self._lock:
            if self._workers.get(verdict.app) is not worker:
                return False
            before = self._verdicts.get(verdict.app)
            self._verdicts[verdict.app] = verdict
            self._changed.notify_all()
        if before is None or (before.health, before.final, before.detail) != (verdict.health, verdict.final,
                                                                             verdict.detail):
            if before is None or before.health != verdict.health or verdict.final:
                log.info("health", extra={"event": "health", "app": verdict.app, "release": verdict.release,
                                          "health": str(verdict.health), "detail": verdict.detail,
                                          "final": verdict.final})
            if self.on_change is not None and (before is None or before.health != verdict.health
                                               or before.final != verdict.final):
                self.on_change()
        return True

    def verdicts(self) -> dict[str, Verdict]:
        with self._lock:
            return dict(self._verdicts)

    def wait(self, done: Callable[[dict[str, Verdict]], bool], timeout: float) -> dict[str, Verdict]:
        """Wait until `done(verdicts)` or `timeout` seconds; the verdicts then."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(dict(self._verdicts)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return dict(self._verdicts)

    def with_logs(self, subject: Subject, detail: str) -> str:
        """`detail` and the last lines of each unit's journal (or supervisor log)."""
        parts = [detail]
        for unit in subject.units:
            try:
                lines = self.services.log_tail(unit, LOG_LINES)
            except (PushError, OSError) as e:
                lines = [f"(cannot read its log: {e})"]
            if lines:
                parts.append(f"last lines of {unit}:\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        with self._lock:
            for worker in self._workers.values():
                worker.stopped.set()


def units_judged(units: Sequence[str]) -> tuple[str, ...]:
    """The units whose state says whether an app works: the ones Push starts."""
    return tuple(units_to_start(list(units)))


def utc_text(epoch: float) -> str:
    """Seconds since the epoch as Push writes times."""
    return timestamps.format_time(datetime.fromtimestamp(epoch, UTC))
