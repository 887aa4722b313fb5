"""The fleet view: the fleet as the bucket shows it, kept as immutable snapshots.

A `Snapshot` holds what one look at the bucket found (server files, agent reports, unit
request keys), each server's state computed from it (push.fleetstate) with its JSON text,
and each server's watch revision. It never changes once built. `FleetView` builds them and
swaps each new one in whole, so a reader takes `view.snapshot` once and reads a consistent
fleet without a lock. The push server keeps one view for its lifetime; `push status`
straight to the bucket builds one and reads it once.

Snapshots are built in one place (`FleetView._advance`), one at a time under one lock, each
from the one before, after one of four looks at the bucket:
- `refresh()`, the bucket poll: lists the change journal's tail (push.changes) and re-reads
  only the servers it names: one listing page when nothing changed, whatever the fleet's
  size;
- every `full_interval` seconds instead, the full re-list, the safety net for writers that
  write no journal (the original tools, older agents, heartbeats): lists server/, status/
  and requests/ and reads only the objects whose generation changed (the report of an agent
  that journals its reports, `AgentStatus.journaled`, only once the copy is older than
  `report_reread`);
- `refresh_server(server)`, called after this process wrote to that server: re-reads its
  file and its request keys, so a read that starts after the write returned sees it;
  calls from several threads at once (a fleet-wide deploy) share one look and one
  snapshot (`refresh_servers`), so a fleet-wide write does not copy the fleet per server;
- `refresh_catalog()`: new releases in the catalogue, the same objects.
Being serialized, a poll that listed the bucket before a local write cannot swap in a
snapshot older than the one that write made: the write's look waits for the poll and
starts from its result.

Unchanged servers cost nothing: a server's state, JSON text and rendered fragments are
carried over to the next snapshot while what they were computed from is the same (its
file's and report's generations, its stale flag, the newest release of each of its apps,
the catalogue's facts about its desired releases, the apps skiapush.conf allows there).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from push import changes, layout, serverfile, status, timestamps
from push.catalog import Catalog
from push.config import Config
from push.errors import CorruptObject, InvalidData, NotFound, PushError
from push.fleetstate import (
    AppSummary,
    FleetFilter,
    FleetState,
    ReleaseState,
    ServerState,
    Watcher,
    expires,
    filter_apps,
    liveness,
    server_state,
)
from push.names import check_server
from push.release import ReleaseInfo
from push.serverfile import ServerFile
from push.status import AgentStatus
from push.store import ObjectInfo, Store

log = logging.getLogger(__name__)

# The full re-list's interval: how late a change by a writer that writes no journal is seen.
FULL_INTERVAL = 60.0
# A report whose writer journals its changes is re-read at a full re-list only when the copy
# is older than this (its heartbeats say nothing new but its time; well inside the 15
# minutes after which a report is stale).
REPORT_REREAD = 600.0


def watch_rev(generation: str | None, request_keys: Iterable[str]) -> str:
    """The watch revision of a server: same bucket state, same rev, on every push server."""
    text = f"{generation or '-'}|{','.join(sorted(request_keys))}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


NO_REV = watch_rev(None, ())


class Sources(Protocol):
    """Where a fleet view reads from (a push.fleet.Context is one)."""

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> Config: ...

    @property
    def catalog(self) -> Catalog: ...


@dataclass(frozen=True, eq=False)
class ServerView:
    """One server in a snapshot: its state, what it was computed from (`inputs`: its file's
    and report's generations, stale flag, allowed apps; `facts`: the catalogue's newest
    release of each app and its record of each desired release), its JSON text, and pages
    rendered from it (filled in by the web front end, carried over with it)."""

    state: ServerState
    inputs: tuple[object, ...]
    facts: tuple[object, ...]
    json: bytes
    fragments: dict[str, str] = field(default_factory=dict)
    # When the clock alone changes the state (a deadline passes, the agent turns stale).
    expires: datetime | None = None
    watcher: Watcher | None = None      # what the push server knew of the agent's watch

    @classmethod
    def of(cls, state: ServerState, inputs: tuple[object, ...] = (), facts: tuple[object, ...] = (),
           expires: datetime | None = None, watcher: Watcher | None = None) -> ServerView:
        return cls(state, inputs, facts, state.to_bytes(), expires=expires, watcher=watcher)

    def current(self, now: datetime, watcher: Watcher | None) -> bool:
        """Whether the clock and the agent's watch leave this view as it is."""
        return (self.expires is None or now < self.expires) and self.watcher == watcher


@dataclass(frozen=True, eq=False)
class Seen:
    """What the bucket held at one look: every server's file (or why it cannot be read),
    report and unit-request keys, with the generations they were read at."""

    files: Mapping[str, ServerFile]
    file_errors: Mapping[str, tuple[str, str]]         # server -> (generation, why)
    reports: Mapping[str, tuple[str, AgentStatus]]     # server -> (generation, report)
    requests: Mapping[str, tuple[str, ...]]            # server -> its request keys, sorted
    # Objects that cannot be read, by key: (generation, why). Each is skipped on its own;
    # everything else is read as if it were not there ("problems in the bucket").
    problems: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # When the bucket says a report newer than the one read was written: a heartbeat not
    # re-read (REPORT_REREAD) still says its agent is alive.
    report_times: Mapping[str, datetime] = field(default_factory=dict)


EMPTY = Seen({}, {}, {}, {})


# One build: (the snapshot before, the one built, the servers its look re-read; None: all).
_Step = tuple["Snapshot | None", "Snapshot", "frozenset[str] | None"]


@dataclass(eq=False)
class _Batch:
    """Servers written by this process, re-read by one look (FleetView.refresh_servers).
    Its servers grow under the view's `_pending_lock` until a builder takes it; the
    builder sets `changed` (or `error`) under the builder's lock, where its callers read it."""

    servers: set[str] = field(default_factory=set)
    changed: frozenset[str] | None = None
    error: PushError | None = None


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The fleet at one moment: never changed once built (see the module docstring)."""

    taken: datetime
    config: Config
    catalog_generation: int             # the catalogue's generation its states were checked against
    seen: Seen
    servers: Mapping[str, ServerView]   # every server in skiapush.conf, in its order
    revs: Mapping[str, str]

    def rev(self, server: str) -> str:
        return self.revs.get(server, NO_REV)

    @property
    def empty(self) -> bool:
        """The look found no server file, agent report or unit request at all: an empty (or
        wrong) bucket, worth a warning."""
        seen = self.seen
        return not (seen.files or seen.file_errors or seen.reports or seen.requests or seen.problems)

    def report(self, server: str) -> AgentStatus | None:
        got = self.seen.reports.get(server)
        return got[1] if got else None

    def state(self, server: str) -> ServerState | None:
        view = self.servers.get(server)
        return view.state if view is not None else None

    def select(self, server: str | None = None, app: str | None = None) -> list[ServerView]:
        """The servers whose name contains `server`, each with the apps whose name contains
        `app` (a server with none left is left out)."""
        wanted = (server or "").strip().lower()
        out = []
        for name, view in self.servers.items():
            if wanted and wanted not in name.lower():
                continue
            if app:
                state = filter_apps(view.state, app)
                if state is None:
                    continue
                if state is not view.state:
                    view = ServerView.of(state)
            out.append(view)
        return out

    @functools.cached_property
    def _all_json(self) -> bytes:
        return b",".join(v.json for v in self.servers.values())

    def fleet_json(self, server: str | None = None, app: str | None = None) -> bytes:
        """The FleetState as JSON text, joined from each server's cached text: what
        GET /api/v1/fleet answers (tests/test_fleetview.py holds it to the model's own)."""
        views = self.select(server, app)
        servers = self._all_json if not server and not app else b",".join(v.json for v in views)
        head = FleetState(generated=timestamps.now_text(), filter=FleetFilter(server=server or "", app=app or ""),
                          count=len(views), servers=[]).to_bytes()
        assert head.endswith(b'"servers":[]}')
        return head[:-2] + servers + b"]}"

    def fleet_state(self, server: str | None = None, app: str | None = None) -> FleetState:
        views = self.select(server, app)
        return FleetState(generated=timestamps.now_text(), filter=FleetFilter(server=server or "", app=app or ""),
                          count=len(views), servers=[v.state for v in views])

    @functools.cached_property
    def release_servers(self) -> Mapping[str, tuple[list[str], list[str]]]:
        """release name -> (servers whose file lists it, servers whose agent reports it installed)."""
        out: dict[str, tuple[list[str], list[str]]] = {}
        for server, sf in self.seen.files.items():
            for name in sf.entries:
                if not name.endswith("/"):  # a placeholder "app/" names no release
                    out.setdefault(name, ([], []))[0].append(server)
        for server, (_, report) in self.seen.reports.items():
            for app_status in report.apps.values():
                if app_status.installed:
                    out.setdefault(app_status.installed, ([], []))[1].append(server)
        return out

    def releases(self, infos: Iterable[ReleaseInfo]) -> list[ReleaseState]:
        """Each release with the servers that list it and run it."""
        where = self.release_servers
        return [ReleaseState.where(info, *where.get(info.name, ((), ()))) for info in infos]


class FleetView:
    """Builds snapshots of the fleet and hands out the current one. Thread-safe."""

    def __init__(self, sources: Sources, *, full_interval: float = FULL_INTERVAL,
                 report_reread: float = REPORT_REREAD) -> None:
        self.sources = sources
        self.full_interval = full_interval
        self.report_reread = report_reread
        self._lock = threading.Lock()      # one builder at a time
        # The servers written by this process waiting for their look (refresh_servers).
        self._pending_lock = threading.Lock()
        self._pending = _Batch()
        self._first = threading.Lock()     # one first load, however many readers wait for it
        self._snapshot: Snapshot | None = None
        self._journal = changes.Journal(sources.store)
        self._last_full = float("-inf")    # time.monotonic() of the last full re-list
        self._report_read_at: dict[str, float] = {}   # server -> when its report was last read
        # What the push server knows of each agent that watches it (push.server.watch): set
        # from the event loop, read by the builder (a whole value per key, swapped at once).
        self._watchers: dict[str, Watcher] = {}
        self._watch_lock = threading.Lock()
        self._rewatched: set[str] = set()  # servers whose watcher was set since the last build
        # (when, server): when a view the builder made stops being current by the clock
        # alone; a heap, read and written by the builder only.
        self._expiries: list[tuple[datetime, str]] = []
        # Told of each new snapshot, with the servers the look re-read (None: a full look): the
        # rollout driver judges its waves from the view and steps on news (push.rollout.driver).
        self.on_news: Callable[[frozenset[str] | None], None] | None = None
        # For /metrics and the benchmarks.
        self.refreshes = 0
        self.builds = 0                    # snapshots built (a batch of local writes is one)
        self.batched_writes = 0            # servers re-read by refresh_servers, over all batches
        self.full_refreshes = 0
        self.object_reads = 0
        self.last_refresh: float | None = None
        self.last_refresh_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot (the bucket is read first if it never was)."""
        snapshot = self._snapshot
        if snapshot is None:
            self.ensure_loaded()
            snapshot = self._snapshot
            assert snapshot is not None
        return snapshot

    def ensure_loaded(self) -> None:
        if self._snapshot is None:
            with self._first:
                if self._snapshot is None:
                    self.refresh(include_catalog=True)

    # -- the looks at the bucket ----------------------------------------------------------

    def refresh(self, include_catalog: bool = True, full: bool = False) -> set[str]:
        """Poll the bucket (and the catalogue): the journal's tail, or every `full_interval`
        (and with `full`) the full re-list; returns the servers whose watch revision
        changed. If the bucket cannot be listed, the snapshot is rebuilt from what was last
        seen (so `stale` moves on with the clock) and the error raised."""
        if include_catalog:
            self._refresh_catalog()
        start = time.monotonic()
        try:
            if full or self._snapshot is None or start - self._last_full >= self.full_interval:
                changed = self._advance(self._look_at_everything)
                self._last_full = start
                self.full_refreshes += 1
                with contextlib.suppress(PushError):  # old entries go at the next full re-list
                    changes.prune(self.sources.store)
                return changed
            return self._advance(self._look_at_journal)
        finally:
            self.refreshes += 1
            self.last_refresh = time.time()
            self.last_refresh_seconds = time.monotonic() - start

    def watched(self, server: str, watcher: Watcher) -> None:
        """An agent came for a watch (or was answered): its liveness, seen at the next build."""
        self._watchers[server] = watcher
        with self._watch_lock:
            self._rewatched.add(server)

    def watcher(self, server: str) -> Watcher | None:
        return self._watchers.get(server)

    def refresh_server(self, server: str) -> set[str]:
        """Re-read one server's file and unit requests (after a write by this process);
        returns the servers whose watch revision changed (those of the whole batch it went
        in, see `refresh_servers`)."""
        return self.refresh_servers((server,))

    def refresh_servers(self, servers: Iterable[str]) -> set[str]:
        """Re-read these servers' files and unit requests (after writes by this process);
        returns the servers whose watch revision changed, of the whole batch.

        Calls from several threads at once (a fleet-wide deploy's writers, each after its
        own write) are batched: while one snapshot is being built, the servers of every
        call that arrives go into the next batch, and that batch is one look and one
        snapshot for all of them. Building a snapshot copies the fleet's maps, so one
        build per server made a fleet-wide deploy quadratic (23 ms a write at 10,000
        servers). Each call still returns only after a look that started after it came,
        so a read that starts after it returns sees its write."""
        wanted = frozenset(servers)
        for server in wanted:
            check_server(server)
        self.ensure_loaded()  # (a first load that listed before the write is followed by this look)
        with self._pending_lock:
            batch = self._pending
            batch.servers |= wanted
        step: _Step | None = None
        with self._lock:
            if batch.changed is None and batch.error is None:  # not built by another caller yet
                with self._pending_lock:
                    self._pending = _Batch()  # who comes from now on waits for the next look
                only = frozenset(batch.servers)
                try:
                    step = self._advance_locked(lambda seen: (self._look_at_servers(seen, only), only))
                    batch.changed = frozenset(_changed(step))
                except PushError as e:
                    batch.error = e
                self.batched_writes += len(only)
        if step is not None:  # this call built the batch's snapshot
            self._announce(step)
        if batch.error is not None:
            raise batch.error
        assert batch.changed is not None
        return set(batch.changed)

    def refresh_catalog(self) -> bool:
        """The catalogue's incremental refresh; True if there are new releases."""
        new = self._refresh_catalog()
        if new and self._snapshot is not None:
            self._advance(lambda seen: (seen, None))
        return bool(new)

    def _refresh_catalog(self) -> list[ReleaseInfo]:
        catalog = self.sources.catalog
        start = time.monotonic()
        new = catalog.refresh()
        elapsed = time.monotonic() - start
        if elapsed > 5:
            # A catalogue that takes long to list is fully re-listed less often (new
            # releases still come at once through its journal).
            catalog.full_interval = max(catalog.full_interval, 20 * elapsed)
        return new

    # -- building ---------------------------------------------------------------------------

    def _advance(self, look: Callable[[Seen], tuple[Seen, frozenset[str] | None]]) -> set[str]:
        """Look at the bucket, build the next snapshot from the last, swap it in; returns the
        servers whose watch revision changed. The one place snapshots are built.

        The look answers what it found and which servers it re-read (None: all of them).
        Only those are re-checked (a local write, or a journal entry, costs the same whatever
        the fleet's size); every other server is carried over as the last snapshot had it,
        and the next full re-list re-checks them all."""
        with self._lock:
            step = self._advance_locked(look)
        self._announce(step)
        return _changed(step)

    def _advance_locked(self, look: Callable[[Seen], tuple[Seen, frozenset[str] | None]]) -> _Step:
        """`_advance` with the builder's lock held: (previous snapshot, new one, servers re-read)."""
        prev = self._snapshot
        prev_seen = prev.seen if prev is not None else EMPTY
        only: frozenset[str] | None = None
        try:
            seen, only = look(prev_seen)
        except PushError:
            if prev is not None:
                self._snapshot = self._build(prev, prev_seen, only)
            raise
        new = self._build(prev, seen, only)
        self._snapshot = new
        self.builds += 1
        return prev, new, only

    def _announce(self, step: _Step) -> None:
        """Tell `on_news` of a new snapshot (outside the builder's lock)."""
        prev, new, only = step
        if new is not prev and self.on_news is not None:
            self.on_news(only)

    def _build(self, prev: Snapshot | None, seen: Seen, only: frozenset[str] | None) -> Snapshot:
        now = timestamps.now()
        config = self.sources.config
        generation = self.sources.catalog.generation  # read before any lookup: a change meanwhile shows next time
        catalog_changed = prev is None or generation != prev.catalog_generation
        old = prev.servers if prev is not None else {}
        with self._watch_lock:
            rewatched, self._rewatched = self._rewatched, set()
        partial = not (only is None or prev is None or config is not prev.config)
        if not partial:
            servers: dict[str, ServerView] = {}
            check = config.servers
            self._expiries = []
        else:
            assert only is not None and prev is not None
            servers = dict(old)
            # The servers the look re-read, and those the clock or a watch changed: the
            # views whose time has come (a heap of their expiry times) and the servers whose
            # agent came for a watch since the last build. Asking every view whether it is
            # still current made each local write cost O(fleet).
            due = set(rewatched)
            while self._expiries and self._expiries[0][0] <= now:
                due.add(heapq.heappop(self._expiries)[1])
            check = {s: config.servers[s] for s in only | due if s in config.servers}
            generation = prev.catalog_generation  # the others were checked against that one
            catalog_changed = False
        for name, allowed in check.items():
            was = old.get(name)
            view = servers[name] = self._view(name, allowed, seen, was, now, catalog_changed)
            if view.expires is not None and (view is not was or not partial):
                heapq.heappush(self._expiries, (view.expires, name))
        revs = {} if only is None or prev is None else dict(prev.revs)
        for server in (seen.files.keys() | seen.requests.keys() | seen.file_errors.keys()
                       if only is None or prev is None else only):
            sf = seen.files.get(server)
            err = seen.file_errors.get(server)
            if sf is None and err is None and server not in seen.requests:
                revs.pop(server, None)
                continue
            revs[server] = watch_rev(sf.generation if sf is not None else err[0] if err is not None else None,
                                     seen.requests.get(server, ()))
        # (With `partial`, only the servers re-read or re-checked can differ from `prev`.)
        same_revs = (len(revs) == len(prev.revs) and all(revs.get(s) == prev.revs.get(s) for s in only)
                     if partial and prev is not None and only is not None else prev is not None and revs == prev.revs)
        if (prev is not None and _same(seen, prev.seen, only) and same_revs and config is prev.config
                and generation == prev.catalog_generation and servers.keys() == old.keys()
                and all(old.get(s) is servers[s] for s in (check if partial else servers))):
            return prev  # nothing changed: keep what was computed from it (joined JSON, release map)
        return Snapshot(taken=now, config=config, catalog_generation=generation, seen=seen, servers=servers,
                        revs=revs)

    def _view(self, name: str, allowed: tuple[str, ...], seen: Seen, old: ServerView | None,
              now: datetime, catalog_changed: bool) -> ServerView:
        """The server's view: `old` again if what it was computed from is unchanged, else
        computed afresh by fleetstate.server_state."""
        catalog = self.sources.catalog
        file = seen.files.get(name)
        file_error = seen.file_errors.get(name)
        report = seen.reports.get(name)
        watcher = self._watchers.get(name)
        report_written = seen.report_times.get(name)
        inputs = (file.generation if file is not None else None, file_error, report[0] if report else None,
                  report_written, allowed)
        if old is not None and old.inputs == inputs and not catalog_changed and old.current(now, watcher):
            return old
        apps = allowed + tuple(a for a in (file.apps if file is not None else ()) if a not in allowed)
        newest = tuple(catalog.newest(a) for a in apps)
        # The release names the file lists (its entries, placeholders "app/" left out).
        desired = tuple(e for e in file.entries if not e.endswith("/")) if file is not None else ()
        facts = (newest, tuple(catalog.cached(d) for d in desired))
        if old is not None and old.inputs == inputs and old.facts == facts and old.current(now, watcher):
            return old
        infos: dict[str, ReleaseInfo] = {}
        for d in desired:
            # Not in the bucket (or not readable now): the state marks it unknown.
            with contextlib.suppress(PushError):
                infos[d] = catalog.get(d)
        state = server_state(name, allowed=allowed, file=file, file_error=file_error[1] if file_error else None,
                             report=report[1] if report else None, releases=infos,
                             newest={i.app: i.name for i in newest if i is not None}, now=now, watcher=watcher,
                             report_written=report_written)
        live = liveness(report[1] if report else None, watcher, report_written, now)
        return ServerView.of(state, inputs, facts, expires(state, live), watcher)

    # -- looking at the bucket ------------------------------------------------------------------

    def _look_at_everything(self, prev: Seen) -> tuple[Seen, None]:
        """List server/, status/ and requests/; read only the objects whose generation changed
        (a report whose agent journals its changes only when the copy is old: see REPORT_REREAD)."""
        store = self.sources.store
        problems: dict[str, tuple[str, str]] = {}

        def damaged(info: ObjectInfo) -> bool:
            if info.damaged is not None:
                problems[info.key] = (info.generation, info.damaged)
            return info.damaged is not None

        self._journal.covered_until(time.time_ns())  # every write journaled before now is listed below
        now = time.monotonic()
        file_gens = {server: i.generation for i in store.list(layout.SERVER)
                     if (server := layout.server_of_file_key(i.key)) is not None}
        report_infos = {server: i for i in store.list(layout.STATUS)
                        if (server := layout.server_of_status_key(i.key)) is not None and not damaged(i)}
        report_gens = {server: i.generation for server, i in report_infos.items()}
        requests: dict[str, list[str]] = {}
        for info in store.list(layout.REQUESTS):
            request = layout.request_of_key(info.key)
            if request is not None and not damaged(info):
                requests.setdefault(request[0], []).append(info.key)

        files: dict[str, ServerFile] = {}
        file_errors: dict[str, tuple[str, str]] = {}
        for server, gen in file_gens.items():
            old = prev.files.get(server)
            if old is not None and old.generation == gen:
                files[server] = old
                continue
            err = prev.file_errors.get(server)
            if err is not None and err[0] == gen:
                file_errors[server] = err
                continue
            try:
                check_server(server)
                sf = serverfile.read(store, server)
                self.object_reads += 1
            except NotFound:
                continue
            except PushError as e:
                log.warning("cannot read %s: %s", layout.server_file_key(server), e)
                file_errors[server] = (gen, str(e))
                continue
            if sf is not None and sf.generation is not None:
                files[server] = sf

        reports: dict[str, tuple[str, AgentStatus]] = {}
        report_times: dict[str, datetime] = {}
        for server, gen in report_gens.items():
            old_report = prev.reports.get(server)
            if old_report is not None and (old_report[0] == gen or (
                    old_report[1].journaled and now - self._report_read_at.get(server, 0.0) < self.report_reread)):
                reports[server] = old_report
                written = report_infos[server].updated
                if old_report[0] != gen and written is not None:
                    report_times[server] = written  # a heartbeat not re-read: its agent is alive
                continue
            key = layout.status_key(server)
            bad = prev.problems.get(key)
            if bad is not None and bad[0] == gen:
                problems[key] = bad
                continue
            with contextlib.suppress(NotFound):  # gone meanwhile
                got_report = self._read_report(server, None, problems, gen)
                if got_report is not None:
                    reports[server] = got_report
        for server, (gen, why) in file_errors.items():
            problems[layout.server_file_key(server)] = (gen, why)
        return Seen(files, file_errors, reports, {s: tuple(sorted(k)) for s, k in requests.items()}, problems,
                    report_times), None

    def _read_report(self, server: str, generation: str | None, problems: dict[str, tuple[str, str]],
                     listed_generation: str = "") -> tuple[str, AgentStatus] | None:
        """The server's report unless still at `generation`; None if unchanged, not a report
        or not readable now (shown as no report); NotFound if there is none. A report that is
        no report (damaged, malformed) is put in `problems` with its generation; a readable
        one takes its key out."""
        key = layout.status_key(server)
        got = None
        try:
            got = self.sources.store.get(key, if_generation_not_match=generation)
            if got is None:
                return None
            self.object_reads += 1
            self._report_read_at[server] = time.monotonic()
            read = got[1].generation, status.parse(got[0], key)
        except NotFound:
            problems.pop(key, None)
            raise
        except (InvalidData, CorruptObject) as e:  # not a report: shown as no report, and as a problem
            log.warning("cannot read %s: %s", key, e)
            problems[key] = (got[1].generation if got is not None else listed_generation, str(e))
            return None
        except PushError:  # not readable now: shown as no report until the next poll
            return None
        problems.pop(key, None)
        return read

    def _look_at_journal(self, prev: Seen) -> tuple[Seen, frozenset[str]]:
        """The journal's tail; re-read only what its entries name."""
        entries = self._journal.read()
        if not entries:
            return prev, frozenset()
        files, file_errors = dict(prev.files), dict(prev.file_errors)
        reports, requests = dict(prev.reports), dict(prev.requests)
        problems = dict(prev.problems)
        for kind, server in dict.fromkeys(entries):
            if kind == changes.SERVER:
                self._reread_file(server, files, file_errors)
            elif kind == changes.STATUS:
                old = reports.get(server)
                try:
                    got = self._read_report(server, old[0] if old is not None else None, problems)
                except NotFound:
                    reports.pop(server, None)
                    continue
                if got is not None:
                    reports[server] = got
            elif kind == changes.REQUESTS:
                self._relist_requests(server, requests)
        servers = {s for k, s in entries if k == changes.SERVER}
        return (Seen(files, file_errors, reports, requests, _file_problems(problems, file_errors, servers),
                     prev.report_times), frozenset(s for _, s in entries))

    def _reread_file(self, server: str, files: dict[str, ServerFile],
                     file_errors: dict[str, tuple[str, str]]) -> None:
        """Re-read one server's file if its generation changed (a bad file is recorded with its generation)."""
        old = files.get(server)
        try:
            sf = serverfile.read(self.sources.store, server, if_generation_not_match=old.generation if old else None)
        except (InvalidData, CorruptObject) as e:  # one bad file: recorded, every other read goes on
            log.warning("cannot read %s: %s", layout.server_file_key(server), e)
            try:
                gen = self.sources.store.stat(layout.server_file_key(server)).generation
            except CorruptObject:  # its header too: no generation to tell a rewrite by
                gen = ""
            except PushError:
                return
            files.pop(server, None)
            file_errors[server] = (gen, str(e))
            return
        if sf is not None:
            self.object_reads += 1
            files.pop(server, None)
            file_errors.pop(server, None)
            if sf.generation is not None:
                files[server] = sf

    def _relist_requests(self, server: str, requests: dict[str, tuple[str, ...]]) -> None:
        keys = tuple(sorted(i.key for i in self.sources.store.list(layout.requests_prefix(server))
                            if layout.request_of_key(i.key) is not None))
        if keys:
            requests[server] = keys
        else:
            requests.pop(server, None)

    def _look_at_servers(self, prev: Seen, servers: frozenset[str]) -> Seen:
        """Re-read these servers' files (each if its generation changed) and list their unit
        requests: the maps are copied once for all of them."""
        files, file_errors, requests = dict(prev.files), dict(prev.file_errors), dict(prev.requests)
        for server in servers:
            self._reread_file(server, files, file_errors)
            self._relist_requests(server, requests)
        return Seen(files, file_errors, prev.reports, requests, _file_problems(prev.problems, file_errors, servers),
                    prev.report_times)

    # -- reading (each call reads one snapshot) --------------------------------------------------

    def problems(self) -> dict[str, str]:
        """Every object in the bucket that cannot be read, key -> why: server files, agent
        reports and unit requests (from the last look), releases (the catalogue's skipped)
        and history keys (when the sources keep a history). Each was skipped on its own."""
        out = {key: why for key, (_, why) in self.snapshot.seen.problems.items()}
        out.update(self.sources.catalog.skipped)
        history = getattr(self.sources, "history", None)
        if history is not None:
            out.update(history.skipped)
        return dict(sorted(out.items()))

    def rev(self, server: str) -> str:
        snapshot = self._snapshot
        return snapshot.rev(server) if snapshot is not None else NO_REV

    def report(self, server: str) -> AgentStatus | None:
        return self.snapshot.report(server)

    def state(self, server: str | None = None, app: str | None = None) -> FleetState:
        """The fleet state (filtered by substrings of server and app names)."""
        return self.snapshot.fleet_state(server, app)

    def state_json(self, server: str | None = None, app: str | None = None) -> bytes:
        """The fleet state as JSON text (GET /api/v1/fleet)."""
        return self.snapshot.fleet_json(server, app)

    def releases(self, app: str) -> list[ReleaseState]:
        """Every release of `app`, newest first, with the servers that list and run it."""
        snapshot = self.snapshot
        return snapshot.releases(self.sources.catalog.releases(app))

    def apps(self) -> list[AppSummary]:
        """Every app with releases or in skiapush.conf: its count of releases, newest, servers."""
        snapshot = self.snapshot
        catalog, config = self.sources.catalog, snapshot.config
        names = sorted(set(catalog.apps()) | {a for apps in config.servers.values() for a in apps})
        out = []
        for app in names:
            newest = catalog.newest(app)
            out.append(AppSummary(app=app, releases=len(catalog.releases(app)),
                                  latest=newest.name if newest else None,
                                  servers=[s for s, allowed in config.servers.items() if app in allowed]))
        return out


def _changed(step: _Step) -> set[str]:
    """The servers whose watch revision a build changed."""
    prev, new, only = step
    if prev is None:
        return set(new.revs)
    # Only the servers the look re-read can have a new revision (_build carries the
    # others' over): comparing every server made each write of a fleet-wide deploy
    # cost O(fleet), 14 of 36 CPU-seconds of a 3,000-server deploy-all.
    changed = new.revs.keys() | prev.revs.keys() if only is None else only
    return {s for s in changed if new.rev(s) != prev.rev(s)}


def _file_problems(problems: Mapping[str, tuple[str, str]], file_errors: Mapping[str, tuple[str, str]],
                   servers: Iterable[str]) -> dict[str, tuple[str, str]]:
    """`problems` with the server files of `servers` as `file_errors` now says (after a re-read)."""
    out = dict(problems)
    for server in servers:
        key = layout.server_file_key(server)
        if server in file_errors:
            out[key] = file_errors[server]
        else:
            out.pop(key, None)
    return out


def _same(a: Seen, b: Seen, only: frozenset[str] | None = None) -> bool:
    """Whether two looks found the very same objects (not merely equal ones). With `only`,
    the look changed nothing but those servers' entries (it carried the others over), so
    only theirs are compared: a local write or a journal entry costs the same whatever the
    fleet's size (comparing every server made a fleet-wide deploy quadratic)."""
    if a is b:
        return True
    pairs: tuple[tuple[Mapping[str, object], Mapping[str, object]], ...] = (
        (a.files, b.files), (a.file_errors, b.file_errors), (a.reports, b.reports), (a.requests, b.requests))
    if a.problems != b.problems:  # few, and keyed by object: compared whole
        return False
    if only is not None:
        return all(len(x) == len(y) and all(x.get(s) is y.get(s) or x.get(s) == y.get(s) for s in only)
                   for x, y in pairs)
    return all(x.keys() == y.keys() and all(v is y[k] or v == y[k] for k, v in x.items()) for x, y in pairs)
