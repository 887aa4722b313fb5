"""The fleet: what every server should run and does run, and the operations that change it.

Both front ends call this module: the push server (`push serve`) and the CLI when it goes
straight to the bucket. Every operation enforces skiapush.conf, writes the server file by
compare-and-swap, signs it when the context has a deploy key (push.serversigning),
records the change in the history and fires the triggers, so the two front ends cannot
disagree. `FleetView` is the read side: a cache of server files, agent
reports and unit requests, refreshed from cheap listings, that computes the fleet state.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from push import layout, serverfile, serversigning, status, timestamps, unitrequests
from push.catalog import Catalog
from push.config import Config
from push.errors import Conflict, InvalidRequest, NotFound, PushError, StoreUnavailable
from push.history import History, Record, new_record
from push.names import check_app, check_server, check_unit
from push.release import Release, ReleaseInfo, app_of
from push.serverfile import ServerFile
from push.signing import SigningKey
from push.status import AgentStatus
from push.store import Store
from push.triggers import Triggers
from push.units import is_template

log = logging.getLogger(__name__)


class _Any:
    def __repr__(self) -> str:
        return "ANY"


# `expected_from=ANY` (the default) means "whatever is deployed now"; None means "nothing".
ANY: Any = _Any()


def short(name: str | None) -> str:
    """A release name as people read it: app, time and short hash."""
    if not name:
        return "(nothing)"
    try:
        r = Release.parse(name)
    except PushError:
        return name
    return f"{r.app} {r.time:%Y-%m-%d %H:%M} {r.short_hash}"


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

    def to_json(self) -> dict[str, object]:
        return {
            "server": self.server, "app": self.app, "expected": self.expected, "current": self.current,
            "last_change": self.last_change.to_json() if self.last_change else None,
        }


@dataclass
class Change:
    """The outcome of one operation on one server."""

    server: str
    app: str
    action: str
    from_: str | None
    to: str | None
    changed: bool
    record: Record | None = None
    request: unitrequests.UnitRequest | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "server": self.server, "app": self.app, "action": self.action, "from": self.from_,
            "to": self.to, "changed": self.changed,
            "history": self.record.to_json() if self.record else None,
        }
        if self.request is not None:
            data["request"] = self.request.to_json()
        return data


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


def _fire(ctx: Context, server: str, what: str) -> None:
    if ctx.triggers is not None:
        ctx.triggers.changed(server, what)


def _set_release(ctx: Context, who: str, server: str, app: str, target: ReleaseInfo | None,
                 action: str, expected_from: Any, note: str) -> Change:
    """The one write path for deploy, rollback and remove: CAS on the server file."""

    def change(sf: ServerFile) -> ServerFile:
        current = _current(sf, app)
        if expected_from is not ANY and current != expected_from:
            raise _Mismatch(current)
        if target is None:
            return sf.without_app(app)
        return sf.with_release(target.release)

    try:
        before, after = serverfile.update(ctx.store, server, change)
    except _Mismatch as m:
        raise ChangedMeanwhile.of(server, app, expected_from, m.current,
                               ctx.history.last_change(server, app)) from None
    from_, to = _current(before, app), _current(after, app)
    if before.entries == after.entries:
        return Change(server, app, action, from_, to, changed=False)
    unsigned = _sign(ctx, after)  # before the trigger: a woken agent finds the statement
    record = new_record(who, server, app, action, from_=from_, to=to, note=note, via=ctx.via)
    try:
        _record(ctx, record)
    finally:
        _fire(ctx, server, to or f"{app}/")
    log.info("%s: %s %s on %s: %s -> %s", who, action, app, server, from_, to)
    if unsigned is not None:
        raise unsigned
    return Change(server, app, action, from_, to, changed=True, record=record)


def deploy(ctx: Context, who: str, server: str, app: str, release: str | None = None, *,
           latest: bool = False, expected_from: Any = ANY, note: str = "") -> Change:
    """Make `server` run `release` (or the newest release of `app` with latest=True).

    Refused (NotFound / NotAllowed) unless skiapush.conf allows `app` on `server`, whatever
    the caller asked. With `expected_from`, refused with ChangedMeanwhile if the app's entry
    is no longer that release (None: not deployed), so no edit is ever silently lost.
    """
    check_server(server)
    check_app(app)
    ctx.config.check_allowed(server, app)
    if latest == (release is not None):
        raise InvalidRequest("give either a release or latest, not both" if latest
                             else "no release given (or use latest)")
    if latest:
        ctx.catalog.refresh()
        info = ctx.catalog.latest(app)
    else:
        assert release is not None
        if app_of(release) != app:
            raise InvalidRequest(f"release {release!r} is not a release of {app!r}")
        info = ctx.catalog.get(release)
    return _set_release(ctx, who, server, app, info, "deploy", expected_from, note)


def rollback_target(ctx: Context, server: str, app: str) -> tuple[str | None, str, Record | None]:
    """(current, target, basis): what a rollback of `app` on `server` would do now."""
    current = _current(serverfile.read(ctx.store, server) or ServerFile(server), app)
    target, basis = ctx.history.previous_release(server, app, current)
    if target is None:
        raise NotFound(f"{short(current)} is the first release of {app} on {server} in the history: "
                       f"nothing to roll back to")
    if target == current:
        raise NotFound(f"{app} on {server} already runs {short(current)}, the release before the last change")
    return current, target, basis


def rollback(ctx: Context, who: str, server: str, app: str, *, expected_from: Any = ANY,
             expected_to: Any = ANY, note: str = "") -> Change:
    """Return `app` on `server` to the release it ran before the current one, by the history."""
    check_server(server)
    check_app(app)
    ctx.config.check_allowed(server, app)
    current, target, _ = rollback_target(ctx, server, app)
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
    no longer allows, so they can be cleaned up."""
    check_app(app)
    ctx.config.require_server(server)
    return _set_release(ctx, who, server, app, None, "remove", expected_from, note)


@dataclass
class Outcome:
    """One server's part of a fleet-wide deploy: a change or the error that stopped it."""

    server: str
    change: Change | None = None
    error: PushError | None = None

    def to_json(self) -> dict[str, object]:
        if self.error is not None:
            data: dict[str, object] = {"server": self.server, "ok": False, "error": str(self.error),
                                       "type": type(self.error).__name__}
            if isinstance(self.error, ChangedMeanwhile):
                data["conflict"] = self.error.to_json()
            return data
        assert self.change is not None
        return {"server": self.server, "ok": True, **self.change.to_json()}


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


def deploy_everywhere(ctx: Context, who: str, app: str, release: str, *,
                      expected: dict[str, str | None] | None = None, note: str = "") -> list[Outcome]:
    """Deploy `release` to every server that runs `app`, each by its own compare-and-swap.

    With `expected` (server -> release the user saw), exactly those servers are changed,
    each only if it still runs what the user saw. One server's failure stops no other.
    """
    check_app(app)
    servers = list(expected) if expected is not None else servers_running(ctx, app)
    outcomes = []
    for server in servers:
        try:
            frm = expected[server] if expected is not None else ANY
            outcomes.append(Outcome(server, deploy(ctx, who, server, app, release, expected_from=frm, note=note)))
        except PushError as e:
            outcomes.append(Outcome(server, error=e))
    return outcomes


def units_of(ctx: Context, server: str, report: AgentStatus | None = None) -> dict[str, str]:
    """unit -> app, for the apps skiapush.conf allows on `server`: the units named by the
    desired releases' metadata (templates left out: nothing to act on), and those the
    agent reports."""
    sf = serverfile.read(ctx.store, server) or ServerFile(server)
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
    return Change(server, app, f"unit-{action}", None, None, changed=True, record=record, request=request)


# -- the read side ----------------------------------------------------------------------


MARKS = ("out_of_date", "dirty", "drift", "failed", "not_allowed", "no_report", "unknown_release", "untrusted")


@dataclass
class ServerState:
    """One server's computed state; its JSON text is kept so unchanged servers cost nothing."""

    server: str
    data: dict[str, Any]
    key: tuple[Any, ...]
    _json: bytes | None = None
    fragments: dict[str, str] = field(default_factory=dict)  # rendered views, by the front end

    @property
    def json_bytes(self) -> bytes:
        if self._json is None:
            self._json = json.dumps(self.data, separators=(",", ":")).encode()
        return self._json


def watch_rev(generation: str | None, request_keys: Iterable[str]) -> str:
    """The watch revision of a server: same bucket state, same rev, on every push server."""
    text = f"{generation or '-'}|{','.join(sorted(request_keys))}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class FleetView:
    """The fleet as the bucket says it is, cached. Thread-safe.

    `refresh()` lists `server/`, `status/` and `requests/` (a few pages for thousands of
    servers) and reads only the objects whose generation changed, plus the catalogue's
    incremental refresh. It returns the servers whose watch revision changed.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._write_seq = 0
        self._touched: dict[str, int] = {}
        self._files: dict[str, ServerFile] = {}
        self._file_errors: dict[str, tuple[str, str]] = {}  # server -> (generation, error)
        self._reports: dict[str, tuple[str, AgentStatus]] = {}
        self._requests: dict[str, tuple[str, ...]] = {}
        self._revs: dict[str, str] = {}
        self._states: dict[str, ServerState] = {}
        self._latest: dict[str, str] = {}
        self._latest_size = -1
        self._release_map: tuple[int, dict[str, tuple[list[str], list[str]]]] | None = None
        self.version = 0
        self.loaded = False
        self.refreshes = 0
        self.object_reads = 0
        self.last_refresh: float | None = None
        self.last_refresh_seconds = 0.0

    @property
    def config(self) -> Config:
        return self.ctx.config

    # -- refreshing -----------------------------------------------------------------------

    def refresh(self, include_catalog: bool = True) -> set[str]:
        with self._refresh_lock:
            return self._refresh(include_catalog)

    def refresh_catalog(self) -> bool:
        """The catalogue's incremental refresh; True if there are new releases."""
        new = self._catalog_refresh()
        self._note_new_releases(new)
        return bool(new)

    def _catalog_refresh(self) -> list[ReleaseInfo]:
        catalog = self.ctx.catalog
        start = time.monotonic()
        new = catalog.refresh()
        elapsed = time.monotonic() - start
        if elapsed > 5:
            # A catalogue that takes long to list is fully re-listed less often (new
            # releases still come at once through its journal).
            catalog.full_interval = max(catalog.full_interval, 20 * elapsed)
        return new

    def _refresh(self, include_catalog: bool) -> set[str]:
        start = time.monotonic()
        with self._lock:
            started_at = self._write_seq
        store = self.ctx.store
        files = {server: i.generation for i in store.list(layout.SERVER)
                 if (server := layout.server_of_file_key(i.key)) is not None}
        reports = {server: i.generation for i in store.list(layout.STATUS)
                   if (server := layout.server_of_status_key(i.key)) is not None}
        requests: dict[str, list[str]] = {}
        for info in store.list(layout.REQUESTS):
            request = layout.request_of_key(info.key)
            if request is not None:
                requests.setdefault(request[0], []).append(info.key)
        new_releases = self._catalog_refresh() if include_catalog else []

        new_files: dict[str, ServerFile] = {}
        new_errors: dict[str, tuple[str, str]] = {}
        for server, gen in files.items():
            old = self._files.get(server)
            if old is not None and old.generation == gen:
                new_files[server] = old
                continue
            err = self._file_errors.get(server)
            if err is not None and err[0] == gen:
                new_errors[server] = err
                continue
            try:
                check_server(server)
                sf = serverfile.read(store, server)
                self.object_reads += 1
            except NotFound:
                continue
            except PushError as e:
                new_errors[server] = (gen, str(e))
                continue
            if sf is not None and sf.generation is not None:
                new_files[server] = sf

        new_reports: dict[str, tuple[str, AgentStatus]] = {}
        for server, gen in reports.items():
            old_report = self._reports.get(server)
            if old_report is not None and old_report[0] == gen:
                new_reports[server] = old_report
                continue
            try:
                key = layout.status_key(server)
                got = store.get(key)
                self.object_reads += 1
                assert got is not None
                new_reports[server] = (got[1].generation, status.parse(got[0], key))
            except PushError:  # gone meanwhile, not a report, or not readable now: shown as no report
                continue

        with self._lock:
            # A server re-read by refresh_server while we listed is newer than our listing.
            for server, seq in self._touched.items():
                if seq > started_at:
                    if server in self._files:
                        new_files[server] = self._files[server]
                    else:
                        new_files.pop(server, None)
                    if server in self._requests:
                        requests[server] = list(self._requests[server])
                    else:
                        requests.pop(server, None)
            self._touched = {s: q for s, q in self._touched.items() if q > started_at}
            changed_data = (new_files.keys() != self._files.keys()
                            or any(self._files[s] is not f for s, f in new_files.items())
                            or new_reports.keys() != self._reports.keys()
                            or any(self._reports[s] is not r for s, r in new_reports.items())
                            or new_errors != self._file_errors)
            self._files, self._reports, self._file_errors = new_files, new_reports, new_errors
            self._requests = {s: tuple(sorted(k)) for s, k in requests.items()}
            changed_revs = self._recompute_revs()
            if changed_data or changed_revs:
                self.version += 1
            self.loaded = True
        self._note_new_releases(new_releases)
        with self._lock:
            self.refreshes += 1
        self.last_refresh = time.time()
        self.last_refresh_seconds = time.monotonic() - start
        return changed_revs

    def refresh_server(self, server: str) -> set[str]:
        """Re-read one server's file and requests (after a write by this process)."""
        store = self.ctx.store
        with self._lock:
            old = self._files.get(server)
        sf = serverfile.read(store, server, if_generation_not_match=old.generation if old else None)
        keys = tuple(sorted(i.key for i in store.list(layout.requests_prefix(server))))
        with self._lock:
            self._write_seq += 1
            self._touched[server] = self._write_seq
            if sf is not None:
                if sf.generation is None:
                    self._files.pop(server, None)
                else:
                    self._files[server] = sf
                self._file_errors.pop(server, None)
            if keys:
                self._requests[server] = keys
            else:
                self._requests.pop(server, None)
            self.version += 1
            return self._recompute_revs()

    def _recompute_revs(self) -> set[str]:
        revs = {}
        for server in set(self._files) | set(self._requests) | set(self._file_errors) | set(self._revs):
            sf = self._files.get(server)
            gen = sf.generation if sf is not None else (self._file_errors.get(server, (None,))[0])
            revs[server] = watch_rev(gen, self._requests.get(server, ()))
        changed = {s for s, r in revs.items() if self._revs.get(s) != r}
        self._revs = revs
        return changed

    def ensure_loaded(self) -> None:
        if not self.loaded:
            with self._refresh_lock:
                if not self.loaded:
                    self._refresh(True)

    def rev(self, server: str) -> str:
        with self._lock:
            rev = self._revs.get(server)
        return rev if rev is not None else watch_rev(None, ())

    # -- reading ---------------------------------------------------------------------------

    def report(self, server: str) -> AgentStatus | None:
        self.ensure_loaded()
        with self._lock:
            got = self._reports.get(server)
        return got[1] if got else None

    def request_keys(self, server: str) -> tuple[str, ...]:
        with self._lock:
            return self._requests.get(server, ())

    def _latest_by_app(self) -> dict[str, str]:
        """app -> its newest release name; recomputed only when the catalogue changed in a
        way the refreshes did not report (a release gone, one found by Catalog.get)."""
        catalog = self.ctx.catalog
        size = len(catalog)
        with self._lock:
            if self._latest_size == size:
                return self._latest
        out = {}
        for app in catalog.apps():
            releases = catalog.releases(app)
            if releases:
                out[app] = releases[0].name
        with self._lock:
            self._latest, self._latest_size = out, size
        return out

    def _note_new_releases(self, new: list[ReleaseInfo]) -> None:
        """Fold newly found releases into the newest-per-app map, instead of recomputing it."""
        if not new:
            return
        with self._lock:
            if self._latest_size < 0:
                return
            latest = dict(self._latest)
            for info in new:
                current = latest.get(info.app)
                if current is None or (info.release.time, info.name) > (_parse_release(current).time, current):
                    latest[info.app] = info.name
            self._latest, self._latest_size = latest, self._latest_size + len(new)
            self.version += 1

    def _server_state(self, server: str, now: datetime, newest_of: dict[str, str]) -> ServerState:
        config = self.config
        with self._lock:
            sf = self._files.get(server)
            report_entry = self._reports.get(server)
            file_error = self._file_errors.get(server)
        report = report_entry[1] if report_entry else None
        stale = report.is_stale(now) if report is not None else None
        catalog = self.ctx.catalog
        allowed = config.apps_for(server)
        listed = [a for a in (sf.apps if sf is not None else []) if a not in allowed]
        apps = list(allowed) + listed
        latest = [newest_of.get(app) for app in apps]
        key = (sf.generation if sf else None, report_entry[0] if report_entry else None, stale,
               file_error, tuple(latest), allowed)
        cached = self._states.get(server)
        if cached is not None and cached.key == key:
            return cached

        app_states = []
        problems = 0
        trust = report.trust if report is not None else None
        # What the agent refused to trust (docs/trust.md): the reason is in the error, the mark says which.
        untrusted_apps = {r.get("app") for r in trust.refused} if trust is not None else set()
        for app, newest in zip(apps, latest, strict=True):
            release = sf.release_of(app) if sf is not None else None
            desired = release.name if release is not None else None
            marks = []
            app_report = report.apps.get(app) if report is not None else None
            actual = app_report.installed if app_report is not None else None
            info = None
            if desired is not None:
                try:
                    info = catalog.get(desired)
                except PushError:
                    marks.append("unknown_release")
                if newest is not None and desired != newest:
                    marks.append("out_of_date")
                if info is not None and info.dirty:
                    marks.append("dirty")
            if app not in allowed:
                marks.append("not_allowed")
            if report is None:
                marks.append("no_report")
            elif actual != desired:
                marks.append("drift")
            error = None
            if app_report is not None and app_report.state == "failed":
                marks.append("failed")
                error = app_report.error or "failed (the agent gave no reason)"
            if app in untrusted_apps:
                marks.append("untrusted")
            if any(m in marks for m in ("drift", "failed", "not_allowed", "unknown_release")):
                problems += 1
            app_states.append({
                "app": app,
                "allowed": app in allowed,
                "desired": desired,
                "desired_note": info.note if info else None,
                "actual": actual,
                "state": app_report.state if app_report is not None else None,
                "error": error,
                "units": dict(app_report.units) if app_report is not None else {},
                "latest": newest,
                "marks": marks,
            })
        data = {
            "server": server,
            "last_seen": report.time if report is not None else None,
            "stale": stale,
            "agent_version": report.agent_version if report is not None else None,
            "in_sync": report.in_sync if report is not None else None,
            "agent_error": report.error if report is not None else None,
            "file_error": file_error[1] if file_error else None,
            "trust": trust.mode if trust is not None else None,
            "untrusted": [f"{r['subject']}: {r['reason']}" for r in trust.refused] if trust is not None else [],
            "generation": sf.generation if sf else None,
            "problems": problems + (1 if stale or file_error or report is None or (report and report.error) else 0),
            "apps": app_states,
        }
        state = ServerState(server, data, key)
        self._states[server] = state
        return state

    def server_states(self, server: str | None = None, app: str | None = None,
                      now: datetime | None = None) -> list[ServerState]:
        """Every server in skiapush.conf (filtered by substring of server and app name)."""
        self.ensure_loaded()
        now = now or timestamps.now()
        out = []
        s_filter = (server or "").strip().lower()
        a_filter = (app or "").strip().lower()
        newest_of = self._latest_by_app()
        for name in self.config.servers:
            if s_filter and s_filter not in name.lower():
                continue
            state = self._server_state(name, now, newest_of)
            if a_filter:
                apps = [a for a in state.data["apps"] if a_filter in a["app"].lower()]
                if not apps:
                    continue
                if len(apps) != len(state.data["apps"]):
                    state = ServerState(name, {**state.data, "apps": apps}, (*state.key, a_filter))
            out.append(state)
        return out

    def state_json(self, server: str | None = None, app: str | None = None) -> bytes:
        """The fleet state as JSON text (what GET /api/v1/fleet and `push status --json` give)."""
        states = self.server_states(server, app)
        head = json.dumps({"generated": timestamps.now_text(), "filter": {"server": server or "", "app": app or ""},
                           "count": len(states)}, separators=(",", ":"))
        return (head[:-1] + ',"servers":[').encode() + b",".join(s.json_bytes for s in states) + b"]}"

    def state(self, server: str | None = None, app: str | None = None) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_json(server, app))
        return state

    def release_servers(self) -> dict[str, tuple[list[str], list[str]]]:
        """release name -> (servers whose file lists it, servers whose agent reports it installed)."""
        self.ensure_loaded()
        with self._lock:
            if self._release_map is not None and self._release_map[0] == self.version:
                return self._release_map[1]
            files, reports, version = dict(self._files), dict(self._reports), self.version
        out: dict[str, tuple[list[str], list[str]]] = {}
        for server, sf in files.items():
            for release in sf.releases.values():
                out.setdefault(release.name, ([], []))[0].append(server)
        for server, (_, report) in reports.items():
            for app_status in report.apps.values():
                if app_status.installed:
                    out.setdefault(app_status.installed, ([], []))[1].append(server)
        with self._lock:
            self._release_map = (version, out)
        return out

    def releases(self, app: str) -> list[dict[str, Any]]:
        """Every release of `app`, newest first, with the servers that list and run it."""
        where = self.release_servers()
        out = []
        for info in self.ctx.catalog.releases(app):
            desired_on, running_on = where.get(info.name, ([], []))
            out.append({**info.to_json(), "short_hash": info.release.short_hash,
                        "desired_on": sorted(desired_on), "running_on": sorted(running_on)})
        return out


@functools.lru_cache(maxsize=4096)
def _parse_release(name: str) -> Release:
    return Release.parse(name)



def direct_context(store: Store, config: Config, via: str, deploy_key: SigningKey | None = None) -> Context:
    """A context for the CLI going straight to the bucket: GCE triggers are sent in-line."""
    return Context.open(store, config, triggers=Triggers(config), via=via, deploy_key=deploy_key)

