"""The agent's report, built from a plan: a pure function, no dpkg, no store, no clock read.

`build(...)` turns the plan of the moment (what each app has installed, what the file
wants for it), the failures recorded so far and the units' states into the `AgentStatus`
that `push.agent.publisher` writes to `status/{server}.json`. This is the one place where
the agent constructs the report's classes (`push.status`).
"""

from __future__ import annotations

from collections.abc import Mapping

from push import __version__
from push.agent.failures import Failure
from push.agent.plan import Action, AppPlan, Plan
from push.health import Health
from push.status import AgentStatus, AppStatus, TrustStatus


def build(plan: Plan, *, server: str, hostname: str, time: str, step: int, generation: str | None,
          failures: Mapping[str, Failure], unit_errors: Mapping[str, str],
          units: Mapping[str, Mapping[str, str]], error: str | None = None, working: bool = False,
          trust: TrustStatus | None = None, report_interval: float | None = None) -> AgentStatus:
    """The report of `plan`'s apps, in its order.

    `units` holds, per app whose package is fully installed, unit -> state. `error` is a
    step-level error (store unreachable, bad server file). With `working`, the report is
    the one published before the plan is carried out: its changes show as installing or
    removing. `trust` is what the agent verifies and refused (push.agent.trust).
    """
    apps = {p.app: _app(p, failures.get(p.app), unit_errors.get(p.app), units.get(p.app, {}), working)
            for p in plan}
    in_sync = error is None and plan.has_file and all(st.state == "ok" for st in apps.values())
    return AgentStatus(server=server, agent_version=__version__, time=time, hostname=hostname,
                       server_file_generation=generation, in_sync=in_sync, step=step, apps=apps, error=error,
                       trust=trust, journaled=True, report_interval=report_interval)


def _app(p: AppPlan, failure: Failure | None, unit_error: str | None, units: Mapping[str, str],
         working: bool) -> AppStatus:
    row = p.row
    st = AppStatus(desired=p.desired.name if p.desired else None, installed=p.installed,
                   package=row.package if row else None, version=row.version if row else None,
                   units=dict(sorted(units.items())))
    if working and p.changes:
        st.state = "removing" if p.action is Action.REMOVE else "installing"
    elif failure is not None:
        st.state = "failed"
        st.error, st.error_time, st.attempts, st.next_retry = (
            failure.error, failure.time, failure.attempts, failure.retry_wall)
    elif unit_error is not None:
        st.state = "failed"
        st.error = unit_error
    elif p.action is Action.REMOVE:
        st.state = "removing"
    elif p.desired is not None and p.installed != p.desired.name:
        st.state = "pending"
    if p.placeholder and p.action is Action.LEAVE and failure is None and p.until is None:
        st.state = "ok"  # nothing of the app here, nothing to do
    if p.unmanaged:
        st.state = "unmanaged"  # installed, not in the server file: left running (docs/pulld.md#removal)
    _health(st, p, working)
    return st


def _health(st: AppStatus, p: AppPlan, working: bool) -> None:
    """The app's health beside its state: the verdict on its installed release, or the
    release it refused (reverted), which also makes its state `failed`."""
    v = p.verdict
    if v is not None:
        st.health, st.health_detail, st.health_since, st.health_deadline = str(v.health), v.detail, v.since, v.deadline
    if p.refused is not None:
        r = p.refused
        st.health, st.reverted_from = str(Health.UNHEALTHY), r.release
        st.health_detail = f"{r.release} was not healthy and was reverted to {r.reverted_to} at {r.time}: {r.reason}"
        if v is not None:
            st.health_detail += f"\nnow {r.reverted_to} is {v.health}: {v.detail}"
        if not (working and p.changes):
            st.state = "failed"
            st.error = st.error or f"{r.release} was not healthy: reverted to {r.reverted_to}"
        return
    if working and p.changes:
        st.health, st.health_detail = str(Health.PROGRESSING), f"{p.action}: {p.why}"
        st.health_since = st.health_deadline = None
    elif v is None:
        st.health = str(Health.UNKNOWN)
        st.health_detail = "nothing installed" if p.installed is None else "not judged yet"
