"""The fleet state: for each server, what it should run, what its agent says it runs, and
what is wrong with that (marks); and each release with the servers that list and run it.

`server_state(...)` is a pure function of one server's inputs (its file, its agent's
report, the catalogue facts it needs, the apps skiapush.conf allows there, what a push
server knows of its agent's watch, and the time): the fleet view (push.fleetview) calls it
for each server whose inputs changed, or whose state the clock alone changes (`expires`).

Each app's *progress* says where its change stands (docs/push-server.md#progress): done,
converging (not yet, within its deadline: not a problem), failed (the agent says so) or
stuck (past its deadline, or its agent is stale). `push deploy --wait` follows it. The classes
here are what every front end shows: the API's response models, the pages' template
context, and `push status --json` straight from the bucket or through a push server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from pydantic import Field

from push import timestamps
from push.errors import InvalidRelease
from push.health import HealthCheck
from push.model import Model
from push.release import ReleaseInfo, short
from push.serverfile import ServerFile
from push.status import AgentStatus, AppStatus

Mark = Literal["out_of_date", "dirty", "drift", "failed", "not_allowed", "no_report", "unknown_release",
               "untrusted", "unhealthy", "reverted", "unmanaged"]
MARKS: tuple[str, ...] = get_args(Mark)
# Marks that make an app a problem; out_of_date and dirty are worth seeing, not fixing now.
# An app whose release is progressing (just installed, within its deadline) is not one.
# unmanaged: installed, but the server file does not mention it (left running; only "APP/" removes it).
PROBLEMS = frozenset({"drift", "failed", "not_allowed", "unknown_release", "untrusted", "unhealthy", "reverted",
                      "unmanaged"})

Progress = Literal["done", "converging", "failed", "stuck"]
PROGRESS: tuple[str, ...] = get_args(Progress)
# How long after its server file was written an app may take to be done (the agent's
# pickup: at once with a watch, up to its poll otherwise; the download and dpkg) before it
# is stuck. A release still proving its health gets until its health deadline plus
# HEALTH_MARGIN (the agent judges, reverts and reports in that time).
CONVERGE_GRACE = 300.0
HEALTH_MARGIN = 30.0


@dataclass(frozen=True)
class Watcher:
    """What a push server knows, in memory, of a server's agent that watches it: when the
    agent last came for a watch (`last`), and by when it must be back (`back_by`: the
    long-poll's timeout plus a grace after it started, or the grace after it was answered).
    Its long-poll is its heartbeat (push.server.watch)."""

    last: datetime
    back_by: datetime


class AppState(Model, frozen=True):
    """One app on one server."""

    app: str
    allowed: bool = Field(description="skiapush.conf allows this app on this server")
    desired: str | None = Field(description="release named by server/{server}.json (null: none)")
    desired_note: str | None = Field(default=None, description="the desired release's note")
    actual: str | None = Field(description="release the agent reports installed")
    state: str | None = Field(description="agent's state for the app: ok, pending, installing, failed, removing, "
                                          "unmanaged (installed, not in the server file: left running)")
    error: str | None = Field(description="why it failed, in the agent's words")
    units: dict[str, str] = Field(description="unit -> state (active, inactive, failed, ...), as the agent reports")
    latest: str | None = Field(description="newest release of the app")
    health: str | None = Field(default=None, description="the agent's judgement: healthy, progressing, unhealthy, "
                                                          "unknown (null: no report)")
    health_detail: str | None = Field(default=None, description="why, in words (a failing check's output, the "
                                                                 "unit's last log lines)")
    reverted_from: str | None = Field(default=None, description="a release the agent refused (not healthy in "
                                                                 "time) and reverted")
    health_since: str | None = Field(default=None, description="when the judgement of the installed release "
                                                                "started (UTC)")
    health_deadline: str | None = Field(default=None, description="by when it must be healthy (UTC; null once it "
                                                                   "has been): progressing before it is converging")
    marks: list[Mark] = Field(description="what is worth a look; " + ", ".join(MARKS))
    progress: Progress = Field(
        default="done", description="where the app's change stands: done (the desired release installed and "
                                    "healthy, or nothing installed where nothing is wanted), converging (not yet, "
                                    "within its deadline: not a problem), failed (the agent failed, refused or "
                                    "reverted it, it is unhealthy, not allowed or not in the bucket), stuck (past "
                                    "its deadline, or its agent is stale)")
    progress_reason: str | None = Field(default=None, description="why, in words (null when done)")
    progress_deadline: str | None = Field(default=None, description="by when a converging app must be done (UTC): "
                                                                     "its server file's write time plus a grace, "
                                                                     "or its health deadline plus a margin")


class ServerState(Model, frozen=True):
    """One server in skiapush.conf, with every app it may run or lists."""

    server: str
    last_seen: str | None = Field(description="time of the agent's last report (null: never reported)")
    stale: bool | None = Field(description="the agent looks stopped: its watch of the push server not renewed in "
                                           "time, or no report for three of its report intervals (15 minutes "
                                           "for an agent that does not say its interval); null: no report")
    stale_reason: str | None = Field(default=None, description="why it is stale, in words")
    last_contact: str | None = Field(default=None, description="when the agent was last heard of (UTC): its "
                                                               "report, or its watch of this push server")
    agent_version: str | None
    in_sync: bool | None = Field(description="the agent says every listed release is installed")
    agent_error: str | None = Field(description="an error of the agent not tied to one app")
    file_error: str | None = Field(description="why server/{server}.json cannot be read")
    generation: str | None = Field(description="generation of server/{server}.json")
    trust: str | None = Field(default=None, description="what the agent verifies: verified, off, releases only, "
                                                        "server files only (null: an agent from before signatures)")
    untrusted: list[str] = Field(default_factory=list, description="what the agent refuses now, as "
                                                                   "'subject: reason' (docs/trust.md)")
    problems: int = Field(description="apps with drift, failed, not_allowed, unknown_release, untrusted, "
                                      "unhealthy, reverted or unmanaged, plus one for a stale, silent or failing "
                                      "agent, a refused server file or a bad server file")
    progress: Progress = Field(default="done", description="the server's worst app: failed, then stuck, then "
                                                           "converging, else done")
    progress_reason: str | None = Field(default=None, description="why, in words (null when done)")
    apps: list[AppState]


class FleetFilter(Model, frozen=True):
    """Substrings of server and app names a fleet state was filtered by ("" for all)."""

    server: str = ""
    app: str = ""


class FleetState(Model, frozen=True):
    """Every server in skiapush.conf that passes the filter (GET /api/v1/fleet, `push status`)."""

    generated: str = Field(description="when this answer was made (UTC)")
    filter: FleetFilter
    count: int
    # Last, so the fleet view can splice in the servers' cached JSON (push.fleetview).
    servers: list[ServerState]


def server_state(server: str, *, allowed: Sequence[str], file: ServerFile | None, file_error: str | None,
                 report: AgentStatus | None, releases: Mapping[str, ReleaseInfo],
                 newest: Mapping[str, str], now: datetime, watcher: Watcher | None = None,
                 report_written: datetime | None = None) -> ServerState:
    """The state of `server` now.

    `allowed`: the apps skiapush.conf allows there, in its order. `file`: its server file
    (None if unreadable, with `file_error` saying why). `releases`: what the catalogue knows
    of the desired releases (a name missing there is not in the bucket). `newest`: the newest
    release of each app that has any. `watcher`: what this push server knows of the agent's
    watch (None: it does not watch here). `report_written`: when the bucket says the report
    was last written (a heartbeat not re-read yet still says the agent is alive).
    """
    live = liveness(report, watcher, report_written, now)
    stale = live.stale
    trust = report.trust if report is not None else None
    refused = trust.refused if trust is not None else []
    untrusted_apps = {r.get("app"): r for r in refused}
    listed = file.apps if file is not None else []
    apps = list(allowed) + [a for a in listed if a not in allowed]
    # Installed apps the file does not mention (left running by pulld): shown, marked unmanaged.
    unmanaged = {a for a, st in (report.apps.items() if report is not None and file is not None else ())
                 if a not in listed and (st.state == "unmanaged" or st.installed)}
    apps += sorted(a for a in unmanaged if a not in apps)
    written = file.written if file is not None else None
    states = []
    problems = 0
    for app in apps:
        release = file.release_of(app) if file is not None else None
        desired = release.name if release is not None else None
        app_report = report.apps.get(app) if report is not None else None
        actual = app_report.installed if app_report is not None else None
        latest = newest.get(app)
        info = releases.get(desired) if desired is not None else None
        marks: list[Mark] = []
        if desired is not None:
            if info is None:
                marks.append("unknown_release")
            if latest is not None and desired != latest:
                marks.append("out_of_date")
            if info is not None and info.dirty:
                marks.append("dirty")
        if app not in allowed:
            marks.append("not_allowed")
        error = None
        if app_report is not None and app_report.state == "failed":
            error = app_report.error or "failed (the agent gave no reason)"
        progress, reason, deadline = _progress(
            app, desired=desired, actual=actual, report=app_report, has_report=report is not None,
            reverts=_reverts(info),
            allowed=app in allowed, known=info is not None or desired is None, refused=untrusted_apps.get(app),
            unmanaged=app in unmanaged, written=written, stale_reason=live.reason if stale else None, now=now)
        if report is None:
            marks.append("no_report")
        elif app in unmanaged:
            marks.append("unmanaged")
        elif actual != desired and progress != "converging":
            marks.append("drift")  # converging within its deadline is not a problem
        if error is not None:
            marks.append("failed")
        if app in untrusted_apps:
            marks.append("untrusted")
        if app_report is not None and app_report.health == "unhealthy":
            marks.append("unhealthy")
        if app_report is not None and app_report.reverted_from:
            marks.append("reverted")
        # (An app stuck because its agent is silent or stale is the agent's one problem.)
        if PROBLEMS.intersection(marks) or progress == "failed" or (
                progress == "stuck" and report is not None and not stale):
            problems += 1
        states.append(AppState(
            app=app, allowed=app in allowed, desired=desired, desired_note=info.note if info else None,
            actual=actual, state=app_report.state if app_report is not None else None, error=error,
            units=dict(app_report.units) if app_report is not None else {}, latest=latest, marks=marks,
            progress=progress, progress_reason=reason,
            progress_deadline=timestamps.format_time(deadline) if deadline is not None and progress == "converging"
            else None, **_health_of(app_report)))
    file_refused = any("app" not in r for r in refused)  # the agent will not follow its server file
    agent_trouble = report is None or bool(stale) or bool(report.error) or file_refused
    server_progress, server_reason = _server_progress(states)
    return ServerState(
        server=server,
        last_seen=report.time if report is not None else None,
        stale=stale,
        stale_reason=live.reason if stale else None,
        last_contact=timestamps.format_time(live.last_contact) if live.last_contact is not None else None,
        agent_version=report.agent_version if report is not None else None,
        in_sync=report.in_sync if report is not None else None,
        agent_error=report.error if report is not None else None,
        file_error=file_error,
        generation=file.generation if file is not None else None,
        trust=trust.mode if trust is not None else None,
        untrusted=[f"{r['subject']}: {r['reason']}" for r in refused],
        problems=problems + (1 if agent_trouble or file_error else 0),
        progress=server_progress,
        progress_reason=server_reason,
        apps=states,
    )


@dataclass(frozen=True)
class Liveness:
    """Whether an agent looks alive now, and until when that holds by the clock alone."""

    stale: bool | None          # None: no report, no watch
    reason: str | None          # why it is (or would be) stale, in words
    last_contact: datetime | None
    until: datetime | None      # when `stale` turns true if nothing is heard meanwhile


def liveness(report: AgentStatus | None, watcher: Watcher | None, report_written: datetime | None,
             now: datetime) -> Liveness:
    """The liveness rules (docs/push-server.md#liveness-when-an-agent-is-stale). An agent that
    watches this push server is judged by its watch (its long-poll is its heartbeat: a long
    step never makes it look stopped); otherwise, or when it reported after its last watch
    here, by its reports: stale after three report intervals without one (15 minutes if the
    report does not say its interval)."""
    heard = report.reported_at if report is not None else None
    if report_written is not None and (heard is None or report_written > heard):
        heard = report_written
    last = max((t for t in (heard, watcher.last if watcher is not None else None) if t is not None), default=None)
    # A report written after the watch's last contact here means the agent lives on without
    # this push server (it watches another one behind a load balancer): the report rule. A
    # stopped agent never gives that: its watch here ends (answered, or cut) after its last report.
    if watcher is not None and not (heard is not None and heard > watcher.last):
        late = (now - watcher.back_by).total_seconds()
        silent = (now - watcher.last).total_seconds()
        return Liveness(late > 0, f"its watch of the push server not renewed for {silent:.0f} s", last,
                        watcher.back_by if late <= 0 else None)
    if report is None or heard is None:
        return Liveness(None, None, last, None)
    limit = report.stale_after
    age = (now - heard).total_seconds()
    until = heard + timedelta(seconds=limit)
    return Liveness(age > limit, f"no report for {age:.0f} s (it reports every "
                                 f"{report.report_interval or limit:g} s or more often)"
                    if report.report_interval else f"no report for {age:.0f} s", last,
                    until if age <= limit else None)


def _reverts(info: ReleaseInfo | None) -> bool:
    """Whether its agent reverts the release when it is not healthy in time (its declared
    health says `revert`; true without one)."""
    if info is None:
        return True
    try:
        check = HealthCheck.of_release(info)
    except InvalidRelease:  # the agent refuses a malformed check: it never runs this release
        return True
    return check is None or check.revert


def _progress(app: str, *, desired: str | None, actual: str | None, report: AppStatus | None, has_report: bool,
              reverts: bool, allowed: bool, known: bool, refused: Mapping[str, str] | None, unmanaged: bool,
              written: datetime | None, stale_reason: str | None,
              now: datetime) -> tuple[Progress, str | None, datetime | None]:
    """One app's progress, with its reason and its deadline (while converging)."""
    if not allowed:
        return "failed", f"skiapush.conf does not allow {app} on this server", None
    if not known:
        return "failed", f"{short(desired)} is not in the bucket", None
    if refused is not None:
        return "failed", f"the agent refuses it: {refused.get('message') or refused.get('reason')}", None
    # What the agent says of the release the file names now (a report about an earlier
    # file says nothing of this one: the agent has not looked yet).
    current = report is not None and report.desired == desired
    reverting: datetime | None = None  # unhealthy in its install window: the agent is about to revert it
    if current and report is not None:
        if report.reverted_from is not None and actual != desired:
            reverted = f"{short(report.reverted_from)} was not healthy and was reverted"
            return "failed", report.health_detail or reverted, None
        if report.state == "failed":
            return "failed", report.error or "failed (the agent gave no reason)", None
        if report.health == "unhealthy":
            if reverts and actual == desired and report.health_deadline is not None:
                reverting = timestamps.parse(report.health_deadline) + timedelta(seconds=HEALTH_MARGIN)
            if reverting is None or now > reverting:
                return "failed", report.health_detail or "unhealthy", None
    if unmanaged:
        return "done", None, None  # installed, not in the file: left running (marked unmanaged)
    if desired is None:
        if actual is None and (report is None or report.state != "removing"):
            return "done", None, None
        waiting = f"removing {short(actual)}" if actual is not None else "removing"
    elif reverting is not None and report is not None:
        waiting = (f"{short(desired)} is unhealthy in its install window ({report.health_detail}): "
                   "its agent reverts it unless the release says revert = false")
    elif current and report is not None and actual == desired and report.state == "ok":
        # Healthy, or judged by an agent from before health (its report has no verdict at all).
        if report.health == "healthy" or (report.health == "unknown" and report.health_detail is None):
            return "done", None, None
        waiting = f"{short(desired)} installed, health {report.health}" + (
            f": {report.health_detail}" if report.health_detail else "")
    elif not has_report:
        waiting = "no report from its agent yet"
    elif not current:
        waiting = f"waiting for the agent to pick up {short(desired)}"
    else:
        assert report is not None
        waiting = f"{report.state} {short(desired)}"
    # The deadline: the file's write time plus a grace (an unknown write time is long past),
    # later if the agent is still judging the installed release's health.
    deadline = written + timedelta(seconds=CONVERGE_GRACE) if written is not None else None
    if current and report is not None and report.health in ("progressing", "unhealthy") and report.health_deadline:
        health_by = timestamps.parse(report.health_deadline) + timedelta(seconds=HEALTH_MARGIN)
        deadline = max(deadline, health_by) if deadline is not None else health_by
    if stale_reason is not None:
        return "stuck", f"{waiting}; its agent is stale: {stale_reason}", None
    if deadline is None or now > deadline:
        since = f" {(now - written).total_seconds():.0f} s after the server file named it" if written else ""
        return "stuck", f"not done{since}: {waiting}", None
    return "converging", waiting, deadline


def _server_progress(apps: Sequence[AppState]) -> tuple[Progress, str | None]:
    """The server's worst app, in words."""
    worst: tuple[Progress, ...] = ("failed", "stuck", "converging")
    for progress in worst:
        names = [a for a in apps if a.progress == progress]
        if names:
            first = names[0]
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            return progress, f"{first.app}: {first.progress_reason}{more}"
    return "done", None


def expires(state: ServerState, live: Liveness) -> datetime | None:
    """When the clock alone changes `state` (a converging app's deadline passes, the agent
    turns stale), so a cached state is computed again then; None: never by itself."""
    times = [timestamps.parse(a.progress_deadline) for a in state.apps if a.progress_deadline is not None]
    if live.until is not None:
        times.append(live.until)
    return min(times, default=None)


def _health_of(app: AppStatus | None) -> dict[str, str | None]:
    """An app's health as its agent reported it (push.health; docs/pulld.md#health)."""
    if app is None:
        return {}
    return {"health": app.health, "health_detail": app.health_detail, "reverted_from": app.reverted_from,
            "health_since": app.health_since, "health_deadline": app.health_deadline}


def filter_apps(state: ServerState, app: str) -> ServerState | None:
    """`state` with only the apps whose name contains `app` (None if there are none)."""
    wanted = app.strip().lower()
    apps = [a for a in state.apps if wanted in a.app.lower()]
    if not apps:
        return None
    return state if len(apps) == len(state.apps) else state.model_copy(update={"apps": apps})


# -- releases ----------------------------------------------------------------------------


class ReleaseEntry(Model, frozen=True):
    """One release as `push releases --json` and the API show it: its name's parts and its
    metadata."""

    name: str
    app: str
    user: str
    host: str
    datetime: str = Field(description="build time, UTC, whole seconds (as in the name)")
    hash: str = Field(description="git commit it was built from")
    dirty: bool = Field(description="built from uncommitted or unmerged code")
    note: str
    services: list[str] = Field(description="systemd units the package ships")
    sha256: str | None
    size: int | None
    extra: dict[str, str] = Field(description="further metadata (Debian package and version, signature, ...)")

    @classmethod
    def of(cls, info: ReleaseInfo) -> ReleaseEntry:
        r = info.release
        return cls(name=r.name, app=r.app, user=r.user, host=r.host, datetime=r.timestamp, hash=r.hash,
                   dirty=info.dirty, note=info.note, services=list(info.services), sha256=info.sha256,
                   size=info.size, extra=dict(info.extra))


class ReleaseState(ReleaseEntry, frozen=True):
    """A release with the servers whose file lists it and those whose agent runs it."""

    short_hash: str
    desired_on: list[str] = Field(description="servers whose server file names it")
    running_on: list[str] = Field(description="servers whose agent reports it installed")

    @classmethod
    def where(cls, info: ReleaseInfo, desired_on: Collection[str], running_on: Collection[str]) -> ReleaseState:
        return cls(**ReleaseEntry.of(info).model_dump(), short_hash=info.release.short_hash,
                   desired_on=sorted(desired_on), running_on=sorted(running_on))


class AppSummary(Model, frozen=True):
    """An app: how many releases it has, its newest, and where skiapush.conf allows it."""

    app: str
    releases: int
    latest: str | None
    servers: list[str]
