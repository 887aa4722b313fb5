"""Changing the fleet: deploy, roll back, remove, deploy everywhere, and unit requests.

Both front ends call these operations: the push server (`push serve`) and the CLI when it
goes straight to the bucket. Every operation enforces skiapush.conf, writes the server
file by compare-and-swap, signs it when the context has a deploy key (push.serversigning),
records the change in the history and fires the triggers, so the
two front ends cannot disagree; each answers with the same typed result (`Change`,
`FleetDeploy`, `RollbackTarget`), which the API returns and the CLI prints. Reading the
fleet is push.fleetview (the snapshots) and push.fleetstate (one server's state).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from push import lookup, serverfile, serversigning, status, unitrequests
from push.catalog import Catalog
from push.config import Config
from push.errors import Conflict, InvalidData, InvalidRequest, NotFound, PushError, StoreUnavailable
from push.history import History, Record, new_record
from push.layout import server_file_key
from push.model import Model
from push.names import check_note, check_server, check_unit
from push.notify import DISABLED, Notifier, change_fields
from push.release import ReleaseInfo, short
from push.rollout import model as rollouts
from push.serverfile import ServerFile
from push.signing import SigningKey
from push.status import AgentStatus
from push.store import Store
from push.triggers import Triggers
from push.unitrequests import UnitRequest
from push.units import is_template

log = logging.getLogger(__name__)


class _Any:
    def __repr__(self) -> str:
        return "ANY"


# `expected_from=ANY` (the default) means "whatever is deployed now"; None means "nothing".
ANY: Any = _Any()


class ChangedMeanwhile(Conflict):
    """The app's entry is no longer what the user saw: nothing was written."""

    def __init__(self, message: str, *, server: str | None = None, app: str | None = None,
                 expected: str | None = None, current: str | None = None,
                 last_change: Record | None = None) -> None:
        super().__init__(message)
        self.server, self.app = server, app
        self.expected, self.current, self.last_change = expected, current, last_change

    @classmethod
    def of(cls, server: str, app: str, expected: str | None, current: str | None,
           last_change: Record | None, what: str = "release") -> ChangedMeanwhile:
        by = ""
        if last_change is not None:
            by = f" (changed by {last_change.who} at {last_change.time[:19].replace('T', ' ')} UTC)"
        if what == "release":
            message = (f"{app} on {server} changed meanwhile: you saw {short(expected)}, "
                       f"it is now {short(current)}{by}; nothing was changed, look again and retry")
        else:
            message = (f"the rollback target of {app} on {server} changed meanwhile: you confirmed "
                       f"{short(expected)}, it is now {short(current)}{by}; nothing was changed, look again and retry")
        return cls(message, server=server, app=app, expected=expected, current=current, last_change=last_change)

    def detail(self) -> ConflictDetail:
        return ConflictDetail(server=self.server, app=self.app, expected=self.expected, current=self.current,
                              last_change=self.last_change)


class ServerFileMissing(Conflict):
    """The server has no server file, but the history or its agent shows it had one: a
    deleted file, or a wrong or empty bucket. Creating a file that names only one app would
    hide the others, so nothing is written (docs/push-server.md#removal)."""

    def __init__(self, message: str, *, key: str, server: str, app: str, found: list[str],
                 last_change: Record | None) -> None:
        super().__init__(message, key=key)
        self.server, self.app, self.found, self.last_change = server, app, found, last_change

    def detail(self) -> ConflictDetail:
        return ConflictDetail(server=self.server, app=self.app, expected=None, current=None,
                              last_change=self.last_change)


class ConflictDetail(Model, frozen=True):
    """What a ChangedMeanwhile found: the release the user saw, what is there now, and the
    last change that put it there."""

    server: str | None
    app: str | None
    expected: str | None = Field(description="the release you saw (null: none)")
    current: str | None = Field(description="the release there now")
    last_change: Record | None


class Change(Model, frozen=True):
    """The outcome of one operation on one server (what `push deploy --json` prints and the
    API answers)."""

    server: str
    app: str
    action: str = Field(description="deploy, rollback, remove, unit-start, unit-stop or unit-restart")
    from_: str | None = Field(alias="from", description="the release before (null: none)")
    to: str | None = Field(description="the release after (null: none)")
    changed: bool = Field(description="false when there was nothing to change (and nothing was recorded)")
    record: Record | None = Field(default=None, alias="history", description="the history record written")
    request: UnitRequest | None = Field(default=None, description="the unit request written, for unit actions")


class Refusal(Model, frozen=True):
    """Why something was refused, as the push server answers any error: its one line, its
    class in push.errors (the CLI rebuilds the same class from it), and for a
    ChangedMeanwhile what changed."""

    error: str
    type: str
    conflict: ConflictDetail | None = None

    @classmethod
    def of(cls, error: PushError) -> Refusal:
        detail = error.detail() if isinstance(error, ChangedMeanwhile | ServerFileMissing) else None
        return cls(error=str(error), type=type(error).__name__, conflict=detail)


@dataclass
class Context:
    """What every operation needs: the bucket, the config, the catalogue, the history,
    the triggers, and which front end is acting (recorded as `via`)."""

    store: Store
    config: Config
    catalog: Catalog
    history: History
    triggers: Triggers | None = None
    via: str = ""
    deploy_key: SigningKey | None = None   # signs every server file written (docs/trust.md)
    # Told of every change written (webhooks, docs/notifications.md); the front end closes it.
    notifier: Notifier = DISABLED

    @classmethod
    def open(cls, store: Store, config: Config, *, catalog: Catalog | None = None,
             triggers: Triggers | None = None, via: str = "", deploy_key: SigningKey | None = None) -> Context:
        # `catalog or ...` would load it: a Catalog's len() reads the whole bucket.
        return cls(store, config, catalog if catalog is not None else Catalog(store), History(store), triggers, via,
                   deploy_key)


class _Mismatch(Exception):
    def __init__(self, current: str | None) -> None:
        self.current = current


def _current(sf: ServerFile, app: str) -> str | None:
    r = sf.release_of(app)
    return r.name if r is not None else None


def _record(ctx: Context, record: Record) -> Record:
    """Write a history record; the change itself already happened, so retry before giving up."""
    for attempt in range(3):
        try:
            return ctx.history.write(record)
        except Conflict:  # the same id twice: impossible in practice, but never overwrite
            raise
        except PushError as e:
            if attempt == 2:
                raise StoreUnavailable(f"the change was made, but its history record could not be written: {e}") from e
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _fire(ctx: Context, server: str, what: str) -> None:
    if ctx.triggers is not None:
        ctx.triggers.changed(server, what)


def check_may_create(ctx: Context, server: str, app: str) -> None:
    """Refuse to create `server`'s file when the server had one: its history names changes,
    or its agent reports apps installed. A new file would mention only `app`; on a wrong or
    emptied bucket that is a silent fork of the fleet (ServerFileMissing names what was found)."""
    found: list[str] = []
    last = next(iter(ctx.history.records(server, limit=1)), None)
    if last is not None:
        found.append(f"its history (last: {last.action} {last.app} by {last.who} at {last.time[:19]}Z)")
    try:
        report = status.read(ctx.store, server)
    except PushError:
        report = None
    running = sorted(a for a, st in report.apps.items() if st.installed or st.package) if report else []
    if running:
        found.append(f"its agent's report of {', '.join(running)} installed")
    if found:
        key = server_file_key(server)
        raise ServerFileMissing(
            f"{key} is missing in {ctx.store.url}, but {server} had one: found {' and '.join(found)}. "
            f"Nothing was written: check the store (--store / PUSH_STORE: a wrong or empty bucket?) "
            f"or restore the file", key=key, server=server, app=app, found=found, last_change=last)


def _sign(ctx: Context, after: ServerFile) -> PushError | None:
    """Sign the server file just written (with the deploy key, if any); the error, if signing failed."""
    if ctx.deploy_key is None:
        return None
    assert after.generation is not None
    try:
        serversigning.sign_written(ctx.store, after.server, after.to_bytes(), after.generation, ctx.deploy_key)
    except PushError as e:  # the change stands; until signed, agents that verify keep what they run
        return StoreUnavailable(f"the change was made, but its statement could not be written ({e}): agents that "
                                f"verify will not follow it until `push resign {after.server}` signs it")
    return None


def _set_release(ctx: Context, who: str, server: str, app: str, target: ReleaseInfo | None,
                 action: str, expected_from: Any, note: str, rollout: str | None = None) -> Change:
    """The one write path for deploy, rollback and remove, plain or by a rollout: CAS on the
    server file. A removal writes the placeholder "APP/"; an entry is never dropped. A plain
    change of a server in an active rollout of the app is refused (RolloutActive)."""
    if rollout is None:
        rollouts.check_not_in_rollout(ctx.store, server, app)

    def change(sf: ServerFile) -> ServerFile:
        current = _current(sf, app)
        if expected_from is not ANY and current != expected_from:
            raise _Mismatch(current)
        after = sf.with_placeholder(app) if target is None else sf.with_release(target.release)
        if sf.generation is None and after.entries != sf.entries:
            check_may_create(ctx, server, app)
        return after

    try:
        before, after = serverfile.update(ctx.store, server, change)
    except _Mismatch as m:
        raise ChangedMeanwhile.of(server, app, expected_from, m.current,
                               ctx.history.last_change(server, app)) from None
    from_, to = _current(before, app), _current(after, app)
    if before.entries == after.entries:
        return Change(server=server, app=app, action=action, from_=from_, to=to, changed=False)
    unsigned = _sign(ctx, after)  # before the trigger: a woken agent finds the statement
    record = new_record(who, server, app, action, from_=from_, to=to, note=note, via=ctx.via, rollout=rollout)
    try:
        _record(ctx, record)
    finally:
        _fire(ctx, server, to or f"{app}/")
    ctx.notifier.emit(action, change_fields(record))  # written and recorded: never before
    log.info("%s: %s %s on %s: %s -> %s", who, action, app, server, from_, to)
    if unsigned is not None:
        raise unsigned
    return Change(server=server, app=app, action=action, from_=from_, to=to, changed=True, record=record)


def deploy(ctx: Context, who: str, server: str, app: str, release: str | None = None, *,
           latest: bool = False, expected_from: Any = ANY, note: str = "") -> Change:
    """Make `server` run `release` (or the newest release of `app` with latest=True).

    `release` is any name push.lookup takes (full name, hash prefix, latest, previous).
    Refused (UnknownApp / NotFound / NotAllowed) unless skiapush.conf allows `app` on
    `server`, whatever the caller asked. With `expected_from`, refused with ChangedMeanwhile
    if the app's entry is no longer that release (None: not deployed), so no edit is ever
    silently lost.
    """
    check_server(server)
    require_app(ctx, app)
    check_note(note)
    ctx.config.check_allowed(server, app)
    if latest == (release is not None):
        raise InvalidRequest("give either a release or latest, not both" if latest
                             else "no release given (or use latest)")
    info = lookup.release(ctx.catalog, app, lookup.LATEST if latest else str(release),
                          previous=lambda: rollback_target(ctx, server, app).to)
    return _set_release(ctx, who, server, app, info, "deploy", _expected_name(ctx, app, expected_from), note)


def rollout_change(ctx: Context, who: str, server: str, app: str, to: str | None, action: str,
                   expected_from: str | None, rollout: str) -> Change:
    """A rollout's write of one server: `to` (None: the placeholder) only if the app's entry
    is still `expected_from`, with the same checks, signing, history (naming the rollout)
    and triggers as a plain deploy. ChangedMeanwhile if someone else changed it."""
    check_server(server)
    if to is not None or action != "remove":
        ctx.config.check_allowed(server, app)
    info = ctx.catalog.get(to) if to is not None else None
    return _set_release(ctx, who, server, app, info, action, expected_from,
                        f"rollout {rollout}", rollout=rollout)


def _expected_name(ctx: Context, app: str, expected_from: Any) -> Any:
    """What the caller expects there, by its full name: a short name (a hash prefix,
    latest) is resolved; a full name is compared as it is (its release may be gone)."""
    if isinstance(expected_from, str) and "/" not in expected_from:
        return lookup.release(ctx.catalog, app, expected_from).name
    return expected_from


def _present_on(ctx: Context, server: str, app: str) -> bool:
    """Whether `server`'s file names `app` or its agent reports it installed."""
    try:
        sf = serverfile.read(ctx.store, server)
        if sf is not None and app in sf.apps:
            return True
        report = status.read(ctx.store, server)
    except PushError:
        return False
    st = report.apps.get(app) if report is not None else None
    return st is not None and bool(st.installed or st.package or st.state == "unmanaged")


def require_app(ctx: Context, app: str) -> str:
    """`app` if Push knows it; UnknownApp with near names otherwise (push.lookup)."""
    return lookup.require_app(ctx.catalog, ctx.config, app)


class RollbackTarget(Model, frozen=True):
    """What a rollback of an app on a server would do now, and the history record that says so."""

    server: str
    app: str
    from_: str | None = Field(alias="from", description="the release there now")
    to: str = Field(description="the release it ran before, by the history")
    basis: Record | None = Field(description="the change the target comes from")


def rollback_target(ctx: Context, server: str, app: str) -> RollbackTarget:
    """What a rollback of `app` on `server` would do now (NotFound if the history cannot say)."""
    current = _current(serverfile.read(ctx.store, server) or ServerFile(server), app)
    target, basis = ctx.history.previous_release(server, app, current)
    if target is None:
        raise NotFound(f"{short(current)} is the first release of {app} on {server} in the history: "
                       f"nothing to roll back to")
    if target == current:
        raise NotFound(f"{app} on {server} already runs {short(current)}, the release before the last change")
    return RollbackTarget(server=server, app=app, from_=current, to=target, basis=basis)


def rollback(ctx: Context, who: str, server: str, app: str, *, expected_from: Any = ANY,
             expected_to: Any = ANY, note: str = "") -> Change:
    """Return `app` on `server` to the release it ran before the current one, by the history."""
    check_server(server)
    require_app(ctx, app)
    check_note(note)
    ctx.config.check_allowed(server, app)
    rollouts.check_not_in_rollout(ctx.store, server, app)  # before the target: that refusal says more
    plan = rollback_target(ctx, server, app)
    current, target = plan.from_, plan.to
    if expected_from is not ANY and expected_from != current:
        raise ChangedMeanwhile.of(server, app, expected_from, current, ctx.history.last_change(server, app))
    if expected_to is not ANY and expected_to != target:
        raise ChangedMeanwhile.of(server, app, expected_to, target, ctx.history.last_change(server, app),
                               what="target")
    info = ctx.catalog.get(target)
    # Expect exactly what the target was computed from: a change in between is a conflict.
    return _set_release(ctx, who, server, app, info, "rollback", current, note)


def remove(ctx: Context, who: str, server: str, app: str, *, expected_from: Any = ANY,
           note: str = "") -> Change:
    """Take `app` off `server` (pulld then removes its package). Works for apps the config
    no longer allows, so they can be cleaned up, and for apps Push no longer knows (no release
    left, in no appNames) that the server's file names or its agent reports installed, so an
    unmanaged app can always be taken off."""
    try:
        require_app(ctx, app)
    except lookup.UnknownApp:
        ctx.config.require_server(server)
        if not _present_on(ctx, server, app):
            raise
    check_note(note)
    ctx.config.require_server(server)
    return _set_release(ctx, who, server, app, None, "remove", _expected_name(ctx, app, expected_from), note)


class Deployed(Change, frozen=True):
    """A server a fleet-wide deploy went through on (or found already there: changed false)."""

    ok: Literal[True] = True


class Refused(Refusal, frozen=True):
    """A server a fleet-wide deploy did not change, and why."""

    server: str
    ok: Literal[False] = False
    status: int | None = Field(default=None, description="the HTTP status of the error (set by the push server)")


# One server's part of a fleet-wide deploy.
Outcome = Annotated[Deployed | Refused, Field(discriminator="ok")]


# Servers a fleet-wide deploy writes at once. Writing one is a few round trips to the
# bucket (read, compare-and-swap, statement, history, journal), mostly spent waiting on the
# store (an fsync, a request), so threads overlap the waits. On the local store on disk, 16
# was fastest of 4 to 32 (32 slower); where nothing waits (tmpfs) the count hardly matters
# (docs/benchmarks.md, fleet scale, second round).
DEPLOY_PARALLELISM = 16


class FleetDeploy(Model, frozen=True):
    """A fleet-wide deploy: one outcome per server, each its own compare-and-swap."""

    app: str
    release: str
    outcomes: list[Outcome]
    ok: bool = Field(description="every server went through")


def servers_running(ctx: Context, app: str) -> list[str]:
    """Servers whose config allows `app` and whose server file lists it."""
    out = []
    for server, apps in ctx.config.servers.items():
        if app not in apps:
            continue
        sf = serverfile.read(ctx.store, server)
        if sf is not None and app in sf.apps:
            out.append(server)
    return out


class EverywherePlan(Model, frozen=True):
    """What a fleet-wide deploy would change now: the release a name resolves to, and each
    server that runs the app with the release it runs (the guard shows these and sends them
    back as `expected`, so exactly those servers change, each only if unchanged)."""

    app: str
    release: str = Field(description="the release's full name")
    servers: dict[str, str | None] = Field(description="server -> the release it runs now (null: none)")


def plan_everywhere(ctx: Context, app: str, release: str) -> EverywherePlan:
    """The servers a deploy of `release` (any name but `previous`) to every server that
    runs `app` would change, and what each runs now."""
    require_app(ctx, app)
    name = lookup.release(ctx.catalog, app, release).name
    current = {server: _current(serverfile.read(ctx.store, server) or ServerFile(server), app)
               for server in servers_running(ctx, app)}
    return EverywherePlan(app=app, release=name, servers=current)


def deploy_everywhere(ctx: Context, who: str, app: str, release: str, *,
                      expected: dict[str, str | None] | None = None, note: str = "") -> FleetDeploy:
    """Deploy `release` to every server that runs `app`, each by its own compare-and-swap.

    With `expected` (server -> release the user saw), exactly those servers are changed,
    each only if it still runs what the user saw. One server's failure stops no other.
    `release` is any name push.lookup takes but `previous` (which differs per server).
    """
    require_app(ctx, app)
    check_note(note)
    release = lookup.release(ctx.catalog, app, release).name
    servers = list(expected) if expected is not None else servers_running(ctx, app)

    def one(server: str) -> Deployed | Refused:
        try:
            frm = expected[server] if expected is not None else ANY
            change = deploy(ctx, who, server, app, release, expected_from=frm, note=note)
            return Deployed(**dict(change))
        except PushError as e:
            return Refused(server=server, **dict(Refusal.of(e)))

    # Each server is its own compare-and-swap, so they are written side by side; the
    # outcomes keep the servers' order.
    with ThreadPoolExecutor(max_workers=max(1, min(DEPLOY_PARALLELISM, len(servers))),
                            thread_name_prefix="deploy-all") as pool:
        outcomes = list(pool.map(one, servers))
    return FleetDeploy(app=app, release=release, outcomes=outcomes, ok=all(o.ok for o in outcomes))


def units_of(ctx: Context, server: str, report: AgentStatus | None = None) -> dict[str, str]:
    """unit -> app, for the apps skiapush.conf allows on `server`: the units named by the
    desired releases' metadata (templates left out: nothing to act on), and those the
    agent reports (only those, when the server file cannot be read)."""
    try:
        sf = serverfile.read(ctx.store, server) or ServerFile(server)
    except InvalidData:
        sf = ServerFile(server)
    units: dict[str, str] = {}
    for app in ctx.config.apps_for(server):
        release = sf.release_of(app)
        if release is not None:
            try:
                for unit in ctx.catalog.get(release.name).services:
                    if not is_template(unit):
                        units[unit] = app
            except NotFound:
                pass
        if report is not None and app in report.apps:
            for unit in report.apps[app].units:
                units.setdefault(unit, app)
    return units


def unit_action(ctx: Context, who: str, server: str, unit: str, action: str, *,
                report: AgentStatus | None = None, note: str = "") -> Change:
    """Ask the server's agent to start, stop or restart `unit` (see docs/unit-requests.md)."""
    check_unit(unit)
    check_note(note)
    unitrequests.check_action(action)
    ctx.config.require_server(server)
    if report is None:
        report = status.read(ctx.store, server)
    app = units_of(ctx, server, report).get(unit)
    if app is None:
        raise NotFound(f"{unit} is not a unit of any app that {ctx.config.source} allows on {server}")
    ctx.config.check_allowed(server, app)
    record = new_record(who, server, app, f"unit-{action}", note=note, result="requested", unit=unit, via=ctx.via)
    request = unitrequests.create(ctx.store, server, app, unit, action, who, history_id=record.id)
    try:
        _record(ctx, record)
    finally:
        _fire(ctx, server, f"{action} {unit}")
    return Change(server=server, app=app, action=f"unit-{action}", from_=None, to=None, changed=True,
                  record=record, request=request)


def direct_context(store: Store, config: Config, via: str, deploy_key: SigningKey | None = None) -> Context:
    """A context for the CLI going straight to the bucket: GCE triggers are sent in-line."""
    return Context.open(store, config, triggers=Triggers(config), via=via, deploy_key=deploy_key)

