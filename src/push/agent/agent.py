"""The Agent: one converge step that makes a server match its `server/{server}.json`.

A step ties the agent's pieces together: recovery, once (`push.agent.recovery`); a
conditional read of the server file (nothing is downloaded when it did not change); a plan
(`push.agent.plan`, a pure function of what the agent knows); the executor that carries it
out with dpkg and units (`push.agent.executor`); unit requests; and a report built from a
fresh plan (`push.agent.report`, pure), which `push.agent.publisher` writes to
`status/{server}.json`. The health of what runs is judged by `push.agent.judge`'s workers;
their verdicts are facts the plan reads (a release not healthy in time is reverted). A
failing release is reported with the failing tool's words and retried with backoff
(`push.agent.failures`); it never blocks the others.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from push import timestamps
from push.agent import recovery, report
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg, InstalledPackage
from push.agent.errors import AgentStateError
from push.agent.executor import Executor
from push.agent.failures import Failures
from push.agent.judge import FAST, Judge, Subject, Verdict, units_judged
from push.agent.metrics import Metrics
from push.agent.plan import Plan, plan
from push.agent.publisher import Publisher
from push.agent.services import ServiceManager
from push.agent.state import AgentState, Judgement
from push.agent.trust import Trust, TrustOptions
from push.agent.unitactions import act_on_requests
from push.errors import InvalidRelease, InvalidServerFile, NotFound, PushError
from push.health import DEFAULT_SETTLE, Health, HealthCheck
from push.layout import server_file_key
from push.serverfile import ServerFile
from push.status import AgentStatus
from push.store import Store

log = logging.getLogger(__name__)

SELF_APP = "pulld"


@dataclass
class AgentOptions:
    server: str
    root: Path | None = None                   # None or / : the real system
    state_dir: Path | None = None              # default /var/lib/pulld, or ROOT/var/lib/pulld
    backoff: Backoff = field(default_factory=Backoff)
    download_rate_limit: float | None = None   # bytes per second; None = unlimited
    report_interval: float = 60.0              # publish at least this often even when nothing changes
    requests_interval: float = 60.0            # look for unit requests at least this often when polling
    self_app: str = SELF_APP
    hostname: str = field(default_factory=socket.gethostname)
    settle: float = DEFAULT_SETTLE             # without a declared check: how long units must stay up
    trust: TrustOptions = field(default_factory=TrustOptions)   # no keys: nothing verified

    @property
    def sandbox_root(self) -> Path | None:
        return self.root if self.root is not None and Path(self.root) != Path("/") else None

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return Path(self.state_dir)
        return (self.sandbox_root or Path("/")) / "var/lib/pulld"


def _load_state(state_dir: Path) -> AgentState:
    try:
        return AgentState.load(state_dir)
    except AgentStateError as e:
        # Never let a damaged record stop the agent: installs carry on; only the removal
        # of apps installed before is lost (their packages are then left alone).
        broken = state_dir / "state.json"
        broken.rename(broken.with_suffix(".json.broken"))
        log.error("agent state unreadable; starting a new one", extra={"event": "state.broken", "error": str(e)})
        return AgentState(broken)


class Agent:
    """Converges one server (or one sandbox root) on its server file."""

    def __init__(self, store: Store, options: AgentOptions, services: ServiceManager, *,
                 dpkg: Dpkg | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.options = options
        self.server = options.server
        self.services = services
        self.dpkg = dpkg or Dpkg(options.sandbox_root)
        self.metrics = metrics or Metrics()
        self.state_dir = options.resolved_state_dir()
        self.downloads = self.state_dir / "downloads"
        self.state = _load_state(self.state_dir)
        self.failures = Failures(options.backoff)
        self.trust = Trust.load(options.trust, self.state_dir)
        self.executor = Executor(store, self.dpkg, services, self.state, self.failures, downloads=self.downloads,
                                 self_app=options.self_app, metrics=self.metrics,
                                 rate_limit=options.download_rate_limit, trust=self.trust)
        self.publisher = Publisher(store, interval=options.report_interval, metrics=self.metrics)
        self.judge = Judge(services, options.sandbox_root, settle=options.settle)
        self.step_count = 0
        # The server file followed (None: none, or not trusted), the one last read (its bytes,
        # as parsed), and its generation (for conditional reads).
        self._server_file: ServerFile | None = None
        self._read: tuple[bytes, ServerFile | None] | None = None
        self._generation: str | None = None
        self._server_file_error: str | None = None
        self._recovered = False
        self._requests_checked = float("-inf")
        self._last_error: str | None = None
        self.in_sync = False                       # what the last step found

    @property
    def restart_requested(self) -> bool:
        """pulld's own release was installed: the process should re-execute itself."""
        return self.executor.restart_requested

    def recover(self) -> None:
        """Finish or undo what a killed agent left (see push.agent.recovery)."""
        recovery.recover(self.dpkg, self.state, state_dir=self.state_dir, downloads=self.downloads)
        self._recovered = True

    # -- the step -------------------------------------------------------------------------------

    def step(self, reasons: Sequence[str] = ("start",)) -> bool:
        """One converge step; True when the server then matches its file.

        `reasons` are what woke the agent: after a trigger (not a mere poll) it also looks
        for unit requests, which otherwise it does every `requests_interval`.
        """
        started = time.monotonic()
        self.step_count += 1
        error = self._follow()
        if error is not None:  # nothing is installed or removed: what runs keeps running
            self.failures.fail_step(error)
            return self._finish(self._report(error), started)
        self.failures.step_worked()
        try:
            planned = self._plan()
            if planned.changes:
                log.info("plan", extra={"event": "plan", "changes": planned.summary()})
                self.publisher.publish(self._report(None, planned, working=True), force=True)
            self.executor.carry_out(planned)
            self._judge_installed()
            if set(reasons) - {"poll", "health"} or started - self._requests_checked >= self.options.requests_interval:
                self._unit_requests()
            done = self._report(None)
        except Exception as e:  # the step's one guard: dpkg-query failing, the state dir unwritable, a bug
            log.exception("step failed")
            failure = self.failures.fail_step(str(e) if isinstance(e, PushError) else f"{type(e).__name__}: {e}")
            done = self._report(failure.error)
        return self._finish(done, started)

    def _follow(self) -> str | None:
        """Recover (once), then read the server file; the step's error, if either failed."""
        if not self._recovered:
            try:
                self.recover()
            except (PushError, OSError) as e:  # dpkg-query, or the state directory
                return f"cannot recover in {self.state_dir}: {e}"
        try:
            self._read_server_file()
            untrusted = self._check_trust()
        except PushError as e:  # the store only ever raises these (push.store.base)
            return f"cannot read {server_file_key(self.server)}: {e}"
        return self._server_file_error or untrusted

    def _read_server_file(self) -> None:
        """Conditional read (nothing is downloaded while its generation is unchanged); a
        missing or malformed file is kept as the step's error. Raises on store errors."""
        key = server_file_key(self.server)
        try:
            got = self.store.get(key, if_generation_not_match=self._generation)
        except NotFound:
            self._read, self._generation = None, None
            self._server_file_error = (f"no server file {key} in {self.store.url}: "
                                       "nothing is installed or removed until there is one")
            self.metrics.server_file_reads.labels("missing").inc()
            return
        if got is None:
            self.metrics.server_file_reads.labels("no").inc()
            return
        data, info = got
        self.metrics.server_file_reads.labels("yes").inc()
        self._generation = info.generation
        try:
            self._read = (data, ServerFile.parse(self.server, data, info.generation))
            self._server_file_error = None
        except InvalidServerFile as e:
            # Keep running what runs now; the file is read again once its generation changes.
            self._read = (data, None)
            self._server_file_error = str(e)

    def _check_trust(self) -> str | None:
        """Decide which file to follow: the one read, unless trusted deploy keys refuse it (then
        none: what runs keeps running). Checked every step, so an expiry shows without a change."""
        parsed = self._read[1] if self._read is not None else None
        refused = None
        if parsed is not None and self._read is not None:
            refused = self.trust.check_server_file(self.store, self.server, self._read[0])
        self._server_file = parsed if refused is None else None
        return refused

    def _plan(self) -> Plan:
        """The plan of the moment; the metadata it lacks is read first, then it is made again."""
        decided = self._decide()
        if decided.needs_metadata:
            self.executor.read_metadata(decided)
            decided = self._decide()
        self.failures.forget(decided.forget)
        self._forget_refusals(decided)
        return decided

    def _decide(self, installed: Mapping[str, InstalledPackage] | None = None) -> Plan:
        return plan(self._server_file, installed=self.executor.installed() if installed is None else installed,
                    record=self.state, metadata=self.executor.metadata, failures=self.failures.apps,
                    now=time.monotonic(), self_app=self.options.self_app, health=self.judge.verdicts())

    # -- health ---------------------------------------------------------------------------------

    def _forget_refusals(self, decided: Plan) -> None:
        """The server file changed since a release was refused: it may be tried again."""
        changed = False
        for app in decided.forget_refusals:
            rec = self.state.apps.get(app)
            if rec is not None and rec.refused is not None:
                log.info("refusal over", extra={"event": "health.refusal-over", "app": app,
                                                "release": rec.refused.release})
                rec.refused = None
                changed = True
        if changed:
            self.state.save()

    def _judge_installed(self) -> None:
        """Hand every installed release to the judge (resuming a judgement the record holds),
        and record the ones judged healthy once (from then on they are never reverted)."""
        installed = self.executor.installed()
        verdicts = self.judge.verdicts()
        subjects = self.judge.subjects()
        dirty = False
        for app, rec in self.state.apps.items():
            row = installed.get(rec.package or "")
            if rec.release is None or row is None or not row.ok or row.version != rec.version:
                if app in subjects:
                    self.judge.forget(app)
                continue
            j = rec.judgement
            if j is None or j.release != rec.release:
                # Installed without a judgement: by an older pulld, or finished by recovery after
                # a crash. Judged from now, with its deadline, but never reverted.
                info = self.executor.metadata.get(rec.release)
                try:
                    check = HealthCheck.of_release(info) if info is not None else None
                except InvalidRelease:
                    check = None
                now = time.time()
                within = check.within if check is not None else HealthCheck().within
                j = rec.judgement = Judgement(rec.release, timestamps.now_text(), now, now + within,
                                              check=check.encode() if check is not None else None, revert=False)
                dirty = True
            v = verdicts.get(app)
            if v is not None and v.release == j.release and v.healthy_once and not j.healthy:
                j.healthy = True
                dirty = True
            try:
                check = HealthCheck.decode(j.check) if j.check is not None else None
            except InvalidRelease:
                check = None
            self.judge.judge(Subject(app, j.release, units_judged(self.executor.units_of(row.package, row.version)),
                                     check, j.since, j.since_epoch, j.deadline_epoch, j.revert, j.healthy))
        for app in set(subjects) - set(self.state.apps):
            self.judge.forget(app)
        if dirty:
            self.state.save()

    def await_health(self) -> bool:
        """`--once`: wait for the verdict on each release in its install window (until it is
        healthy or final, or its deadline passed), revert what must be (one more step), and
        say whether every installed app is then healthy and none was refused."""
        subjects = self.judge.subjects()
        slack = max((s.check.timeout for s in subjects.values() if s.check is not None), default=0.0) + 1.0
        # A release in its install window until its deadline; one that was healthy before (a
        # unit just restarted) for a settle time.
        now = time.time()
        deadline = max((now + self.options.settle if s.healthy else s.deadline_epoch for s in subjects.values()),
                       default=now)

        def judged(verdicts: dict[str, Verdict]) -> bool:
            for app in subjects:
                v = verdicts.get(app)
                if v is None or v.health is Health.PROGRESSING or v.health is Health.UNKNOWN:
                    return False
            return True

        verdicts = self.judge.wait(judged, max(0.0, deadline - time.time()) + slack + FAST)
        if any(v.final and v.revert for v in verdicts.values()):
            self.step(("health",))
            verdicts = self.judge.verdicts()
        else:
            self.heartbeat()  # the report with the verdicts
        refused = [app for app, rec in self.state.apps.items() if rec.refused is not None]
        unhealthy = [app for app, v in verdicts.items() if v.health is not Health.HEALTHY]
        return not refused and not unhealthy

    def close(self) -> None:
        self.judge.close()

    def units_of_app(self, app: str) -> list[str]:
        """The units of what is installed for `app` (see Executor.units_of_app)."""
        desired = self._server_file.releases.get(app) if self._server_file is not None else None
        return self.executor.units_of_app(app, desired)

    def _unit_requests(self) -> None:
        self._requests_checked = time.monotonic()
        try:
            act_on_requests(self.store, self.server, self.services, self.units_of_app, self.options.hostname,
                            own_app=self.options.self_app)
        except PushError as e:
            log.warning("cannot read unit requests", extra={"event": "unit.request-error", "error": str(e)})

    # -- reporting ------------------------------------------------------------------------------

    def _report(self, error: str | None, planned: Plan | None = None, *, working: bool = False) -> AgentStatus:
        """The report of `planned` (default: a fresh plan of what is installed now)."""
        if planned is None:
            try:
                installed = self.executor.installed()
            except PushError as e:  # dpkg-query itself failed: report that, with nothing installed known
                installed, error = {}, error or str(e)
            planned = self._decide(installed)
        units = {p.app: self.executor.unit_states(p.row) for p in planned if p.row is not None and p.row.ok}
        return report.build(planned, server=self.server, hostname=self.options.hostname, time=timestamps.now_text(),
                            step=self.step_count, generation=self._generation, failures=self.failures.apps,
                            unit_errors=self.failures.units, units=units, error=error, working=working,
                            trust=self.trust.status(self.failures.apps),
                            report_interval=self.options.report_interval)

    def _finish(self, done: AgentStatus, started: float) -> bool:
        self._last_error = done.error
        self.in_sync = done.in_sync
        self.publisher.publish(done)
        self.metrics.steps.labels("in_sync" if done.in_sync else "not_in_sync").inc()
        self.metrics.step_seconds.observe(time.monotonic() - started)
        self.metrics.last_step.set(time.time())
        self.metrics.in_sync.set(1 if done.in_sync else 0)
        self.metrics.failing_apps.set(sum(1 for a in done.apps.values() if a.error))
        return done.in_sync

    def next_retry_in(self) -> float | None:
        """Seconds until a failed release (or the whole step) is due for a retry, if any."""
        return self.failures.next_retry_in()

    def heartbeat_in(self) -> float:
        """Seconds until the report is due again (so the push server sees the agent alive)."""
        return self.publisher.due_in()

    def heartbeat(self) -> None:
        """Publish the report (fresh unit states, same step) without running a step: a long
        poll interval never makes an agent look gone quiet."""
        self.publisher.publish(self._report(self._last_error))
