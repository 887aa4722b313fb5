"""The fleet state: for each server, what it should run, what its agent says it runs, and
what is wrong with that (marks); and each release with the servers that list and run it.

`server_state(...)` is a pure function of one server's inputs (its file, its agent's
report, the catalogue facts it needs, the apps skiapush.conf allows there, and the time):
the fleet view (push.fleetview) calls it for each server whose inputs changed. The classes
here are what every front end shows: the API's response models, the pages' template
context, and `push status --json` straight from the bucket or through a push server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Literal, get_args

from pydantic import Field

from push.model import Model
from push.release import ReleaseInfo
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


class ServerState(Model, frozen=True):
    """One server in skiapush.conf, with every app it may run or lists."""

    server: str
    last_seen: str | None = Field(description="time of the agent's last report (null: never reported)")
    stale: bool | None = Field(description="no report for more than 15 minutes")
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
                 newest: Mapping[str, str], now: datetime) -> ServerState:
    """The state of `server` now.

    `allowed`: the apps skiapush.conf allows there, in its order. `file`: its server file
    (None if unreadable, with `file_error` saying why). `releases`: what the catalogue knows
    of the desired releases (a name missing there is not in the bucket). `newest`: the newest
    release of each app that has any.
    """
    stale = report.is_stale(now) if report is not None else None
    trust = report.trust if report is not None else None
    refused = trust.refused if trust is not None else []
    untrusted_apps = {r.get("app") for r in refused}
    listed = file.apps if file is not None else []
    apps = list(allowed) + [a for a in listed if a not in allowed]
    # Installed apps the file does not mention (left running by pulld): shown, marked unmanaged.
    unmanaged = {a for a, st in (report.apps.items() if report is not None and file is not None else ())
                 if a not in listed and (st.state == "unmanaged" or st.installed)}
    apps += sorted(a for a in unmanaged if a not in apps)
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
        if report is None:
            marks.append("no_report")
        elif app in unmanaged:
            marks.append("unmanaged")
        elif actual != desired:
            marks.append("drift")
        error = None
        if app_report is not None and app_report.state == "failed":
            marks.append("failed")
            error = app_report.error or "failed (the agent gave no reason)"
        if app in untrusted_apps:
            marks.append("untrusted")
        if app_report is not None and app_report.health == "unhealthy":
            marks.append("unhealthy")
        if app_report is not None and app_report.reverted_from:
            marks.append("reverted")
        if PROBLEMS.intersection(marks):
            problems += 1
        states.append(AppState(
            app=app, allowed=app in allowed, desired=desired, desired_note=info.note if info else None,
            actual=actual, state=app_report.state if app_report is not None else None, error=error,
            units=dict(app_report.units) if app_report is not None else {}, latest=latest, marks=marks,
            **_health_of(app_report)))
    file_refused = any("app" not in r for r in refused)  # the agent will not follow its server file
    agent_trouble = report is None or bool(stale) or bool(report.error) or file_refused
    return ServerState(
        server=server,
        last_seen=report.time if report is not None else None,
        stale=stale,
        agent_version=report.agent_version if report is not None else None,
        in_sync=report.in_sync if report is not None else None,
        agent_error=report.error if report is not None else None,
        file_error=file_error,
        generation=file.generation if file is not None else None,
        trust=trust.mode if trust is not None else None,
        untrusted=[f"{r['subject']}: {r['reason']}" for r in refused],
        problems=problems + (1 if agent_trouble or file_error else 0),
        apps=states,
    )


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
