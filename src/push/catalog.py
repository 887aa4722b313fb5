"""The catalogue: every release of every app, newest first, cached and refreshed incrementally.

Used by the push server, `push releases` and every CLI command that names a release. What it
knows comes from three places in the bucket, cheapest first:

- the index, `catalog/index/v1.jsonl.gz` (format in push.catalogindex): every release's
  metadata in one compressed object. A catalogue starts from it and inflates one app's block
  only when that app is asked for, so a million releases load in about a second;
- the journal, `catalog/log/`: one empty object per upload, keyed by upload time. The
  entries after the index's (or the last refresh's) position are listed, and the metadata
  of each release not yet known is read: one listing page and one read per new release;
- a full re-list of `debs/` every `full_interval`, which finds releases uploaded by tools
  that write no journal entry (the original's) and deletions. It only lists (the local
  store without opening its objects) and reads metadata only for releases it does not know.

With no usable index (none yet, damaged, or one no push server has confirmed for hours)
the catalogue lists `debs/` as before and reads every release's metadata. Push servers
(`writes_index=True`) fold what they learn into the index, in a background thread, by
compare-and-swap: a writer that loses the race re-reads the index and applies its own
additions and deletions to it, so no writer drops what another added. docs/architecture.md
("The catalogue") gives the rules and their reasons.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from push import layout
from push.catalogindex import VERSION, CatalogIndex, IndexMeta, Row, blocks_of, encode, info_of, row_of
from push.errors import Conflict, InvalidData, InvalidInput, NotFound, PushError
from push.names import check_app
from push.release import Release, ReleaseInfo, app_of, newest_first_key
from push.store import ObjectInfo, Store
from push.timestamps import now_text

log = logging.getLogger(__name__)

_DEB_TYPE = "application/vnd.debian.binary-package"
_INDEX_TYPE = "application/gzip"
# Journal entries are read back this far behind the newest one seen, so an uploader whose
# clock lags a little is still found by the incremental refresh.
JOURNAL_SKEW_NS = 120 * 10**9
# A writer folds what it learned into the index once this many releases are pending, or
# once the oldest pending change is FOLD_INTERVAL old: a cold start then reads at most about
# this many journal entries one by one (one HEAD each on S3).
FOLD_AFTER_RELEASES = 100
FOLD_INTERVAL = 300.0
# A writer rewrites the index after a full re-list at least this often even when nothing
# changed, so that its listing time says a push server is still checking it.
INDEX_MAX_AGE_NS = 3600 * 10**9
# A catalogue that writes no index (`push releases`) ignores an index whose listing is older
# than this: no push server has re-listed the bucket for hours, so releases uploaded without
# a journal entry, and deletions, may be missing from it.
INDEX_STALE_NS = 6 * 3600 * 10**9
# Journal entries older than this behind a written index are deleted (a reader needs only
# the entries after the index it read; the rest is kept a day for people debugging).
JOURNAL_KEEP_NS = 24 * 3600 * 10**9
_PRUNE_PER_WRITE = 1000
_WRITE_ATTEMPTS = 5
_WRITE_BACKOFF = 60.0
# An app with more releases beyond the index than this is sorted whole to find its newest.
_NEWEST_SCAN = 64


def publish(store: Store, info: ReleaseInfo, data: bytes | BinaryIO | Path, *, adopt: bool = False) -> ObjectInfo:
    """Upload a release create-only (two uploads never overwrite each other), then journal it.

    `data` may be the package's path; with `adopt` the store may take the file itself
    (see Store.put_file), and the caller must not use it afterwards. The index is not
    touched: push servers fold the journal entry into it.
    """
    if isinstance(data, Path):
        obj = store.put_file(info.release.key, data, info.to_metadata(), if_absent=True,
                             content_type=_DEB_TYPE, adopt=adopt)
    else:
        obj = store.put(info.release.key, data, info.to_metadata(), if_absent=True, content_type=_DEB_TYPE)
    try:
        store.put(layout.journal_key(info.name, time.time_ns()), b"", if_absent=True)
    except PushError:  # the next full re-list finds the release anyway
        log.warning("could not journal %s; it appears after the next full refresh", info.name)
    return obj


class Catalog:
    """Every release in a store. Thread-safe; call `refresh()` to pick up changes.

    The state is the index it started from (read lazily) plus what it learned since:
    releases the index lacks (`_added`) and index releases since deleted (`_gone`). Readers
    take `_lock` briefly; `_refresh_lock` keeps refreshes and index writes one at a time.
    """

    def __init__(self, store: Store, full_interval: float = 300.0, *, writes_index: bool = False) -> None:
        self.store = store
        self.full_interval = full_interval
        self.writes_index = writes_index
        self.writer = f"{socket.gethostname()} pid {os.getpid()}"
        self._refresh_lock = threading.Lock()
        self._lock = threading.RLock()
        self._index_key = layout.catalog_index_key(VERSION)
        self._index: CatalogIndex | None = None
        # The generation of the index object in the bucket that ours is, or that we read and
        # could not use; None when there was none.
        self._index_generation: str | None = None
        self._added: dict[str, ReleaseInfo] = {}
        self._added_gen: dict[str, str] = {}
        self._added_by_app: dict[str, set[str]] = {}
        self._replacing: set[str] = set()      # added names that also are in the index
        self._gone: dict[str, str] = {}        # index name -> its generation there
        self._gone_by_app: dict[str, int] = {}
        self._shadowed: set[str] = set()       # apps whose index blocks are damaged
        self._decoded: dict[str, ReleaseInfo] = {}
        self._by_app: dict[str, list[ReleaseInfo]] = {}
        self._newest: dict[str, ReleaseInfo | None] = {}
        self._apps: list[str] | None = None
        self._all: list[ReleaseInfo] | None = None
        self._pending_since: float | None = None  # monotonic time of the oldest unfolded change
        self._last_full = 0.0
        self._listed_ns = 0                    # when the listing our state reflects began
        self._journal_cursor_ns = 0
        self._loaded = False
        self._skipped_gen: dict[str, str] = {}
        self._next_write = 0.0
        self.index_writer: threading.Thread | None = None
        # Changes whenever what the catalogue holds may have (a release found or deleted, an
        # app's damaged block read from the bucket, another writer's index merged in): the
        # fleet view re-checks its servers against the catalogue only then.
        self.generation = 0
        # Counters, for the benchmark and /metrics.
        self.metadata_reads = 0
        self.list_pages = 0
        self.index_reads = 0
        self.index_writes = 0
        self.skipped: dict[str, str] = {}

    # -- loading ----------------------------------------------------------------------

    def refresh(self, full: bool = False) -> list[ReleaseInfo]:
        """Bring the cache up to date; returns the releases that are new since last time
        (after a load from the index: those of the journal's tail, not the index's own)."""
        with self._refresh_lock:
            if not self._loaded:
                new = self._load()
            elif full or time.monotonic() - self._last_full > self.full_interval:
                new = self._relist()
            else:
                new = self._journal_refresh()
        self._schedule_index_write()
        return new

    def _noted(self, key: str, why: str) -> str:
        """`why` an object is no release, logged with its key once per reason (the caller
        counts it in `skipped`)."""
        if self.skipped.get(key) != why:
            log.warning("skipping %s: %s", key, why)
        return why

    def _load(self) -> list[ReleaseInfo]:
        index = self._read_index()
        if index is None:
            return self._full_listing()
        with self._lock:
            self._install(index, self._index_generation)
            self.skipped = {k: why for k, (_, why) in index.meta.skipped.items()}
            self._skipped_gen = {k: gen for k, (gen, _) in index.meta.skipped.items()}
            self._journal_cursor_ns = index.meta.journal_ns
            self._listed_ns = index.meta.listed_ns
            # The index's listing counts as ours: the next full re-list is due when it would
            # have been had we made it.
            self._last_full = time.monotonic() - max(0.0, (time.time_ns() - index.meta.listed_ns) / 1e9)
            self._loaded = True
        return self._journal_refresh()

    def _read_index(self) -> CatalogIndex | None:
        """The bucket's index if this catalogue can use it; None (and why, logged) if not."""
        try:
            got = self.store.get(self._index_key)
        except NotFound:
            self._index_generation = None
            return None
        assert got is not None
        data, obj = got
        self.index_reads += 1
        self._index_generation = obj.generation
        where = f"{self.store.url} {self._index_key}"
        try:
            index = CatalogIndex.decode(data, where)
        except InvalidData as e:
            log.warning("%s; listing %s instead", e, layout.DEBS)
            return None
        age = time.time_ns() - index.meta.listed_ns
        if not self.writes_index and age > INDEX_STALE_NS:
            log.warning("catalogue index %s reflects a listing of %.1f hours ago (no push server has "
                        "re-listed the bucket since); listing %s instead", where, age / 3.6e12, layout.DEBS)
            return None
        return index

    def _install(self, index: CatalogIndex, generation: str | None) -> None:
        """Make `index` the base, with nothing learned beyond it (call with `_lock` held)."""
        self._index, self._index_generation = index, generation
        self._added, self._added_gen, self._added_by_app = {}, {}, {}
        self._replacing, self._gone, self._gone_by_app, self._shadowed = set(), {}, {}, set()
        self._decoded, self._by_app, self._newest = {}, {}, {}
        self._apps = self._all = None
        self._pending_since = None
        self.generation += 1

    def _full_listing(self) -> list[ReleaseInfo]:
        """Load by listing debs/ and reading every release's metadata (no usable index)."""
        start_ns = time.time_ns()
        found: dict[str, tuple[ReleaseInfo, str]] = {}
        skipped: dict[str, tuple[str, str]] = {}
        token: str | None = None
        while True:
            page = self.store.list_page(layout.DEBS, token)
            self.list_pages += 1
            for obj in page.items:
                if layout.release_name_of(obj.key) is None:
                    continue
                got = self._read_info(obj)
                if got is None:
                    continue
                what, generation = got
                if isinstance(what, ReleaseInfo):
                    found[what.name] = (what, generation)
                else:
                    skipped[obj.key] = (generation, what)
            if page.next_token is None:
                break
            token = page.next_token
        by_app: dict[str, list[ReleaseInfo]] = {}
        for info, _ in found.values():
            by_app.setdefault(info.app, []).append(info)
        for infos in by_app.values():
            infos.sort(key=newest_first_key, reverse=True)
        with self._lock:
            self._index = None
            self._added = {name: info for name, (info, _) in found.items()}
            self._added_gen = {name: gen for name, (_, gen) in found.items()}
            self._added_by_app = {app: {i.name for i in infos} for app, infos in by_app.items()}
            self._by_app = by_app
            self._newest = {app: infos[0] for app, infos in by_app.items()}
            self._apps = self._all = None
            self.skipped = {k: why for k, (_, why) in skipped.items()}
            self._skipped_gen = {k: gen for k, (gen, _) in skipped.items()}
            self._pending_since = time.monotonic()
            self._listed_ns = start_ns
            self._last_full = time.monotonic()
            self._journal_cursor_ns = max(self._journal_cursor_ns, start_ns)
            self._loaded = True
            self.generation += 1
        return [info for info, _ in found.values()]

    def _read_info(self, obj: ObjectInfo, metadata_listed: bool = True) -> tuple[ReleaseInfo | str, str] | None:
        """(release, generation) of a listed object, or (why it is not a release, generation);
        None if it is gone."""
        if obj.damaged is not None:  # a listing that could not open it (a local file's header)
            return self._noted(obj.key, obj.damaged), obj.generation
        metadata = obj.metadata
        if not (self.store.lists_metadata and metadata_listed):
            try:
                obj = self.store.stat(obj.key)
            except NotFound:
                return None
            except PushError as e:  # one unreadable object: skipped and counted, the rest reads on
                return self._noted(obj.key, str(e)), obj.generation
            self.metadata_reads += 1
            metadata = obj.metadata
        try:
            return ReleaseInfo.from_metadata(obj.key, metadata), obj.generation
        except InvalidInput as e:
            # The original ignored objects without release metadata; we do too, but say so.
            return self._noted(obj.key, str(e)), obj.generation

    def _listing(self) -> Iterator[tuple[str, str, dict[str, str] | None]]:
        """(key, generation, metadata) of every object under debs/, in key order. Where a
        listing would open every object to know them (the local store), keys only: generation
        "" and metadata None; metadata None too where listings do not carry it (S3)."""
        if self.store.listing_reads_objects:
            for key in self.store.list_keys(layout.DEBS):
                yield key, "", None
            return
        token: str | None = None
        while True:
            page = self.store.list_page(layout.DEBS, token)
            self.list_pages += 1
            for obj in page.items:
                yield obj.key, obj.generation, obj.metadata if self.store.lists_metadata else None
            if page.next_token is None:
                return
            token = page.next_token

    def _relist(self) -> list[ReleaseInfo]:
        """The full re-list: additions and deletions, app by app (a listing gives each app's
        keys together), reading the metadata of unknown releases only."""
        start_ns = time.time_ns()
        with self._lock:
            relist = _Relist(self._index, dict(self._gone), set(self._shadowed), dict(self._added_gen),
                             {app: set(names) for app, names in self._added_by_app.items()},
                             dict(self._skipped_gen), dict(self.skipped))
        seen: set[str] = set()
        for app, objects in itertools.groupby(self._listing(), key=lambda o: _app_of_key(o[0])):
            if app is None:
                continue
            seen.add(app)
            listed = {name: o for o in objects if (name := layout.release_name_of(o[0])) is not None}
            self._relist_app(relist, app, listed)
        for app in (set(relist.index.apps()) if relist.index else set()) | set(relist.added_by_app):
            if app not in seen:
                self._relist_app(relist, app, {})

        new: list[ReleaseInfo] = []
        with self._lock:
            for name in relist.removed:
                if name in self._added and self._added_gen.get(name) == relist.added_gen.get(name):
                    self._drop_added(name)
            for name, gen in relist.gone_now.items():
                self._mark_gone(name, gen)
            for info, gen in relist.found:
                if info.name not in self._added and not self._in_index(info.name):
                    new.append(info)
                self._add(info, gen)
            self.skipped = {k: why for k, (_, why) in relist.skipped_now.items()}
            self._skipped_gen = {k: gen for k, (gen, _) in relist.skipped_now.items()}
            if relist.removed or relist.gone_now or relist.found:
                self._pending_since = self._pending_since or time.monotonic()
            self._listed_ns = start_ns
            self._last_full = time.monotonic()
            self._journal_cursor_ns = max(self._journal_cursor_ns, start_ns)
        if relist.removed or relist.gone_now:
            log.info("catalogue: %d release(s) deleted from the bucket", len(relist.removed) + len(relist.gone_now))
        return new

    def _relist_app(self, relist: _Relist, app: str, listed: dict[str, tuple[str, str, dict[str, str] | None]]) -> None:
        """Compare what the listing holds of `app` with what the catalogue knows of it."""
        known: dict[str, str] = {}
        if relist.index is not None and app not in relist.shadowed:
            try:
                known = {n: g for n, g in relist.index.names(app).items() if n not in relist.gone}
            except InvalidData as e:
                self._damaged(app, e, repair=False)  # the listing below reads every release of it
                relist.shadowed.add(app)
        base = dict(known)
        for name in relist.added_by_app.get(app, ()):
            known[name] = relist.added_gen[name]
        for name in known.keys() - listed.keys():
            if name in relist.added_gen:
                relist.removed.append(name)
            else:
                relist.gone_now[name] = base[name]
        unknown = listed.keys() - known.keys()
        changed = [n for n in listed.keys() & known.keys() if listed[n][1] and listed[n][1] != known[n]]
        for name in [*unknown, *changed]:
            key, generation, metadata = listed[name]
            if key in relist.skipped_gen and (not generation or generation == relist.skipped_gen[key]):
                relist.skipped_now[key] = (relist.skipped_gen[key], relist.skipped_why.get(key, ""))
                continue
            got = self._read_info(ObjectInfo(key, generation, 0, metadata or {}), metadata is not None)
            if got is None:
                continue
            what, read_generation = got
            if isinstance(what, ReleaseInfo):
                relist.found.append((what, read_generation))
            else:
                relist.skipped_now[key] = (read_generation, what)

    def _journal_refresh(self) -> list[ReleaseInfo]:
        start_after = layout.journal_start_after(self._journal_cursor_ns - JOURNAL_SKEW_NS)
        new: list[ReleaseInfo] = []
        token: str | None = None
        while True:
            page = self.store.list_page(layout.CATALOG_LOG, token, start_after=start_after)
            self.list_pages += 1
            for obj in page.items:
                parsed = layout.journal_entry(obj.key)
                if parsed is None:
                    continue
                stamp, name = parsed
                self._journal_cursor_ns = max(self._journal_cursor_ns, stamp)
                if self._lookup(name) is not None:
                    continue
                try:
                    key = layout.release_key(name)
                except InvalidInput:  # a journal entry naming no possible key
                    continue
                try:
                    deb = self.store.stat(key)
                except NotFound:
                    continue
                except PushError as e:  # a damaged object: skipped and counted
                    self.skipped[key] = self._noted(key, str(e))
                    continue
                self.metadata_reads += 1
                try:
                    info = ReleaseInfo.from_metadata(deb.key, deb.metadata)
                except InvalidInput as e:
                    self.skipped[deb.key] = self._noted(deb.key, str(e))
                    continue
                with self._lock:
                    self._add(info, deb.generation)
                    self._pending_since = self._pending_since or time.monotonic()
                new.append(info)
            if page.next_token is None:
                break
            token = page.next_token
        return new

    # -- the state: changes (call with `_lock` held) ----------------------------------

    def _in_index(self, name: str) -> bool:
        """Whether the index holds `name` as a live release (not deleted, app not shadowed)."""
        index = self._index
        if index is None or name in self._gone or app_of(name) in self._shadowed:
            return False
        try:
            return index.find(name) is not None
        except InvalidData as e:
            self._damaged(app_of(name), e, repair=False)
            return False

    def _add(self, info: ReleaseInfo, generation: str) -> None:
        name, app = info.name, info.app
        if name in self._gone:
            del self._gone[name]
            self._gone_by_app[app] -= 1
            self._replacing.add(name)
        elif name not in self._added and self._in_index(name):
            self._replacing.add(name)
        self._added[name] = info
        self._added_gen[name] = generation
        self._added_by_app.setdefault(app, set()).add(name)
        self._decoded.pop(name, None)
        infos = self._by_app.get(app)
        if infos is not None:
            # New releases are nearly always the newest, so this stops at the first element.
            infos[:] = [i for i in infos if i.name != name]
            key = newest_first_key(info)
            i = 0
            while i < len(infos) and newest_first_key(infos[i]) > key:
                i += 1
            infos.insert(i, info)
        if app in self._newest:
            current = self._newest[app]
            if current is None or newest_first_key(info) >= newest_first_key(current):
                self._newest[app] = info
            elif current.name == name:
                del self._newest[app]
        self._apps = self._all = None
        self.generation += 1

    def _drop_added(self, name: str) -> None:
        app = app_of(name)
        del self._added[name]
        del self._added_gen[name]
        self._added_by_app[app].discard(name)
        if not self._added_by_app[app]:
            del self._added_by_app[app]
        if name in self._replacing:
            self._replacing.discard(name)
            index = self._index
            row = index.find(name) if index is not None else None
            if row is not None:
                self._mark_gone(name, row[1])
        self._forget(app)

    def _mark_gone(self, name: str, generation: str) -> None:
        if name in self._added:
            self._drop_added(name)
        if name in self._gone or app_of(name) in self._shadowed:
            return
        self._gone[name] = generation
        self._gone_by_app[app_of(name)] = self._gone_by_app.get(app_of(name), 0) + 1
        self._decoded.pop(name, None)
        self._forget(app_of(name))

    def _forget(self, app: str) -> None:
        self._by_app.pop(app, None)
        self._newest.pop(app, None)
        self._apps = self._all = None
        self.generation += 1

    def _damaged(self, app: str, error: InvalidData, *, repair: bool = True) -> None:
        """A block of the index cannot be read: serve `app` from a listing of its releases
        instead (with `repair`), and have the next index write rewrite it."""
        with self._lock:
            if app in self._shadowed:
                return
            log.error("%s; reading the releases of %s from %s instead", error, app, self.store.url)
            self._shadowed.add(app)
            for name in [n for n in self._gone if app_of(n) == app]:
                del self._gone[name]
            self._gone_by_app.pop(app, None)
            self._replacing = {n for n in self._replacing if app_of(n) != app}
            self._decoded = {n: i for n, i in self._decoded.items() if i.app != app}
            self._forget(app)
            self._pending_since = self._pending_since or time.monotonic()
        if not repair:
            return
        for obj in self.store.list(f"{layout.DEBS}{app}/"):
            if layout.release_name_of(obj.key) is None:
                continue
            got = self._read_info(obj)
            if got is not None and isinstance(got[0], ReleaseInfo):
                with self._lock:
                    if got[0].name not in self._added:
                        self._add(got[0], got[1])

    # -- the state: reading -----------------------------------------------------------

    def _lookup(self, name: str) -> ReleaseInfo | None:
        """The release called `name` if the catalogue knows it, without asking the store
        (an index block is inflated if need be)."""
        with self._lock:
            info = self._added.get(name) or self._decoded.get(name)
            if info is not None:
                return info
            index = self._index
            app = app_of(name)
            if index is None or name in self._gone or app in self._shadowed:
                return None
        try:
            row = index.find(name)
            info = info_of(row) if row is not None else None
        except (InvalidData, InvalidInput) as e:
            self._damaged(app, _as_damage(e, index))
            with self._lock:
                return self._added.get(name)
        if info is None:
            return None
        with self._lock:
            if self._index is not index or name in self._gone or app in self._shadowed:
                return self._added.get(name)
            return self._decoded.setdefault(name, info)

    def _app_list(self, app: str) -> list[ReleaseInfo]:
        """Every release of `app`, newest first (the cached list itself: do not change it)."""
        with self._lock:
            infos = self._by_app.get(app)
            if infos is not None:
                return infos
            index = self._index
            if index is None or app in self._shadowed or index.count(app) == 0:
                index = None
        rows: list[Row] = []
        if index is not None:
            try:
                rows = index.rows(app)
            except InvalidData as e:
                self._damaged(app, e)
                return self._app_list(app)
        with self._lock:
            if self._index is not index and index is not None:  # a new index was installed meanwhile
                return self._app_list(app)
            infos = []
            damage: InvalidInput | None = None
            for row in rows:
                name = row[0]
                if name in self._gone or name in self._added:
                    continue
                info = self._decoded.get(name)
                if info is None:
                    try:
                        info = info_of(row)
                    except InvalidInput as e:
                        damage = e
                        break
                    self._decoded[name] = info
                infos.append(info)
            if damage is None:
                infos.extend(self._added[n] for n in self._added_by_app.get(app, ()))
                infos.sort(key=newest_first_key, reverse=True)
                self._by_app[app] = infos
                self._newest[app] = infos[0] if infos else None
                return infos
        assert index is not None
        self._damaged(app, _as_damage(damage, index))
        return self._app_list(app)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.refresh()

    # -- reading ----------------------------------------------------------------------

    def apps(self) -> list[str]:
        self._ensure_loaded()
        with self._lock:
            if self._apps is None:
                apps = set(self._added_by_app)
                if self._index is not None:
                    apps.update(a for a in self._index.apps()
                                if a not in self._shadowed and self._index.count(a) > self._gone_by_app.get(a, 0))
                self._apps = sorted(apps)
            return list(self._apps)

    def releases(self, app: str | None = None) -> list[ReleaseInfo]:
        """Releases of `app` (or of every app), newest first."""
        self._ensure_loaded()
        if app is not None:
            check_app(app)
            return list(self._app_list(app))
        with self._lock:
            everything = self._all
        if everything is None:
            everything = [info for a in self.apps() for info in self._app_list(a)]
            everything.sort(key=newest_first_key, reverse=True)
            with self._lock:
                self._all = everything
        return list(everything)

    def latest(self, app: str) -> ReleaseInfo:
        self._ensure_loaded()
        check_app(app)
        info = self.newest(app)
        if info is None:
            raise NotFound(f"no releases of app {app!r}")
        return info

    def newest(self, app: str) -> ReleaseInfo | None:
        """The newest release of `app`, None if it has none; no store call (the fleet view asks
        this of every app). From the index it reads one release, not the app's whole block."""
        with self._lock:
            if app in self._newest:
                return self._newest[app]
            if app in self._by_app:
                infos = self._by_app[app]
                return infos[0] if infos else None
            index = self._index
            if index is None or app in self._shadowed or index.count(app) == 0:
                index = None
            added = [self._added[n] for n in self._added_by_app.get(app, ())]
            if index is None and len(added) <= _NEWEST_SCAN:
                newest = max(added, key=newest_first_key, default=None)
                self._newest[app] = newest
                return newest
        if index is None or len(added) > _NEWEST_SCAN:
            infos = self._app_list(app)
            return infos[0] if infos else None
        try:
            row = index.newest(app)
            first = info_of(row) if row is not None else None
        except (InvalidData, InvalidInput) as e:
            self._damaged(app, _as_damage(e, index))
            return self.newest(app)
        with self._lock:
            if self._index is not index or first is None or first.name in self._gone:
                # A new index meanwhile, or the index's newest was deleted: sort the app.
                infos = self._app_list(app)
                return infos[0] if infos else None
            first = self._added.get(first.name) or self._decoded.setdefault(first.name, first)
            newest = max([*added, first], key=newest_first_key)
            self._newest[app] = newest
            return newest

    def cached(self, name: str) -> ReleaseInfo | None:
        """The release called `name` if the catalogue knows it (no store call, unlike `get`)."""
        return self._lookup(name)

    def get(self, name: str) -> ReleaseInfo:
        """The release called `name`; looks in the store if the cache does not know it."""
        self._ensure_loaded()
        info = self._lookup(name)
        if info is not None:
            return info
        release = Release.parse(name)
        try:
            obj = self.store.stat(release.key)
        except NotFound:
            raise NotFound(f"no release {name!r} in {self.store.url}") from None
        self.metadata_reads += 1
        info = ReleaseInfo.from_metadata(obj.key, obj.metadata)
        with self._lock:
            known = self._added.get(name)
            if known is not None:
                return known
            self._add(info, obj.generation)
            self._pending_since = self._pending_since or time.monotonic()
        return info

    def count(self, app: str) -> int:
        """How many releases `app` has."""
        self._ensure_loaded()
        with self._lock:
            infos = self._by_app.get(app)
            if infos is not None:
                return len(infos)
            n = len(self._added_by_app.get(app, ()))
            if self._index is not None and app not in self._shadowed:
                n += self._index.count(app) - self._gone_by_app.get(app, 0)
                n -= sum(1 for name in self._added_by_app.get(app, ()) if name in self._replacing)
            return n

    def __len__(self) -> int:
        self._ensure_loaded()
        with self._lock:
            n = len(self._added) - len(self._replacing) - len(self._gone)
            if self._index is not None:
                n += self._index.releases - sum(self._index.count(a) for a in self._shadowed)
            return n

    # -- the index: writing -----------------------------------------------------------

    def _index_due(self) -> bool:
        """Whether this writer should fold what it knows into the index now."""
        with self._lock:
            if not self.writes_index or not self._loaded:
                return False
            index = self._index
            if index is None:
                return True
            pending = len(self._added) + len(self._gone) + len(self._shadowed)
            if pending >= FOLD_AFTER_RELEASES:
                return True
            if pending and self._pending_since is not None and time.monotonic() - self._pending_since >= FOLD_INTERVAL:
                return True
            relisted = self._listed_ns > index.meta.listed_ns
            return relisted and (pending > 0 or time.time_ns() - index.meta.listed_ns > INDEX_MAX_AGE_NS)

    def _schedule_index_write(self) -> None:
        if not self.writes_index or time.monotonic() < self._next_write or not self._index_due():
            return
        with self._lock:
            if self.index_writer is not None and self.index_writer.is_alive():
                return
            self.index_writer = threading.Thread(target=self._write_in_background, name="push-catalog-index",
                                                 daemon=True)
            self.index_writer.start()

    def _write_in_background(self) -> None:
        try:
            self.write_index()
        except PushError as e:
            self._next_write = time.monotonic() + _WRITE_BACKOFF
            log.warning("could not write the catalogue index (trying again in %.0f s): %s", _WRITE_BACKOFF, e)
        except Exception:
            self._next_write = time.monotonic() + _WRITE_BACKOFF
            log.exception("could not write the catalogue index")

    def write_index(self, force: bool = False) -> bool:
        """Fold what this catalogue knows into the bucket's index, by compare-and-swap; True if
        written. Not due (see `_index_due`) and not `force`: nothing is done. A writer that
        finds the index changed re-reads it and applies its own changes to that, so an entry
        another writer added is never dropped."""
        self._ensure_loaded()
        with self._refresh_lock:
            if not force and not self._index_due():
                return False
            with self._lock:
                base, base_generation = self._index, self._index_generation
                added = dict(self._added)
                added_gen = dict(self._added_gen)
                gone = dict(self._gone)
                shadowed = set(self._shadowed)
                meta = IndexMeta(journal_ns=self._journal_cursor_ns, listed_ns=self._listed_ns,
                                 written=now_text(), writer=self.writer,
                                 skipped={k: (self._skipped_gen.get(k, ""), why) for k, why in self.skipped.items()})
            merged = False
            data = self._encode(base, meta, added, added_gen, gone, shadowed)
            for _ in range(_WRITE_ATTEMPTS):
                try:
                    if base_generation is None:
                        obj = self.store.put(self._index_key, data, if_absent=True, content_type=_INDEX_TYPE)
                    else:
                        obj = self.store.put(self._index_key, data, if_generation_match=base_generation,
                                             content_type=_INDEX_TYPE)
                    break
                except Conflict:
                    # Someone else wrote it: build ours on theirs. If theirs cannot be read (or
                    # is gone), ours replaces it whole.
                    theirs, base_generation = self._reread_index()
                    if theirs is not None:
                        base, merged = theirs, True
                        meta = IndexMeta(journal_ns=max(meta.journal_ns, base.meta.journal_ns),
                                         listed_ns=max(meta.listed_ns, base.meta.listed_ns), written=meta.written,
                                         writer=meta.writer, skipped={**base.meta.skipped, **meta.skipped})
                        data = self._encode(base, meta, added, added_gen, gone, shadowed)
            else:
                raise Conflict(f"{self._index_key} kept changing: {_WRITE_ATTEMPTS} writes lost the race",
                               key=self._index_key)
            written = CatalogIndex.decode(data, f"{self.store.url} {self._index_key}")
            self.index_writes += 1
            self._installed_written(written, obj.generation, added, gone, shadowed, merged)
            log.info("catalogue index written: %d releases, %.1f MB%s", written.releases, len(data) / 1e6,
                     " (merged with another writer's)" if merged else "")
            previous_journal_ns = min(meta.journal_ns, base.meta.journal_ns) if base is not None else meta.journal_ns
        self._prune_journal(min(previous_journal_ns, meta.journal_ns - JOURNAL_KEEP_NS) - JOURNAL_SKEW_NS)
        return True

    def _reread_index(self) -> tuple[CatalogIndex | None, str | None]:
        """The bucket's index now (None if absent or unreadable) and its generation."""
        try:
            got = self.store.get(self._index_key)
        except NotFound:
            return None, None
        assert got is not None
        self.index_reads += 1
        try:
            return CatalogIndex.decode(got[0], f"{self.store.url} {self._index_key}"), got[1].generation
        except InvalidData as e:
            log.warning("%s; writing a new one over it", e)
            return None, got[1].generation

    def _encode(self, base: CatalogIndex | None, meta: IndexMeta, added: dict[str, ReleaseInfo],
                added_gen: dict[str, str], gone: dict[str, str], shadowed: set[str]) -> bytes:
        """The index: `base` with `added` and without `gone` (where `base` still holds the
        generation we saw deleted); apps nothing changed are copied, still compressed."""
        by_app: dict[str, list[str]] = {}
        for name in added:
            by_app.setdefault(app_of(name), []).append(name)
        changed = set(by_app) | {app_of(n) for n in gone} | shadowed
        apps = sorted(set(base.apps() if base is not None else ()) | set(by_app))
        blocks: list[tuple[str, bytes | memoryview, int]] = []
        newest: dict[str, Row] = {}  # each app's first row, repeated in the header
        for app in apps:
            if base is not None and app not in changed:
                with contextlib.suppress(InvalidData):  # a damaged block is copied as it is, as before
                    first = base.newest(app)
                    if first is not None:
                        newest[app] = first
                blocks.extend(base.blocks(app))
                continue
            rows: list[tuple[ReleaseInfo, Row]] = []
            if base is not None and app not in shadowed:
                for row in self._readable_rows(base, app):
                    name = row[0]
                    if name in added or gone.get(name) == row[1]:
                        continue
                    try:
                        rows.append((self._decoded.get(name) or info_of(row), row))
                    except InvalidInput:
                        continue
            rows.extend((added[n], row_of(added[n], added_gen[n])) for n in by_app.get(app, ()))
            if not rows:
                continue
            rows.sort(key=lambda r: newest_first_key(r[0]), reverse=True)
            blocks.extend((app, data, count) for data, count in blocks_of([r for _, r in rows]))
            newest[app] = rows[0][1]
        return encode(meta, blocks, newest)

    def _readable_rows(self, base: CatalogIndex, app: str) -> list[Row]:
        try:
            return base.rows(app)
        except InvalidData as e:
            log.warning("%s; rewriting %s from what this catalogue knows", e, app)
            return []

    def _installed_written(self, written: CatalogIndex, generation: str, added: dict[str, ReleaseInfo],
                           gone: dict[str, str], shadowed: set[str], merged: bool) -> None:
        """Make the index just written our base, keeping what was learned while writing."""
        with self._lock:
            later_added = {n: (i, self._added_gen[n]) for n, i in self._added.items() if added.get(n) is not i}
            # Added before the write, dropped (deleted) during it: the new index holds them.
            later_gone = {n: self._added_gen.get(n, "") for n in added
                          if n not in self._added and n not in self._gone}
            later_gone.update({n: g for n, g in self._gone.items() if n not in gone})
            later_shadowed = self._shadowed - shadowed
            decoded = {} if merged else {**self._decoded, **{n: i for n, i in added.items() if self._added.get(n) is i}}
            by_app, newest = ({}, {}) if merged else (self._by_app, self._newest)
            self._install(written, generation)
            self._decoded, self._by_app, self._newest = decoded, by_app, newest
            for info, gen in later_added.values():
                self._add(info, gen)
            for name, gen in later_gone.items():
                row = written.find(name)
                if row is not None:
                    self._mark_gone(name, row[1] or gen)
            for app in later_shadowed:
                self._shadowed.add(app)
                self._forget(app)
            if later_added or later_gone or later_shadowed:
                self._pending_since = time.monotonic()

    def _prune_journal(self, before_ns: int) -> None:
        """Delete journal entries stamped before `before_ns` (folded into the index long ago)."""
        if before_ns <= 0:
            return
        deleted = 0
        try:
            for obj in self.store.list(layout.CATALOG_LOG):
                entry = layout.journal_entry(obj.key)
                if entry is None:
                    continue
                if entry[0] >= before_ns or deleted >= _PRUNE_PER_WRITE:
                    break
                with contextlib.suppress(NotFound):
                    self.store.delete(obj.key)
                deleted += 1
        except PushError as e:
            log.warning("could not prune the catalogue journal: %s", e)
        if deleted:
            log.info("catalogue journal: %d entries folded into the index over a day ago deleted", deleted)


def _as_damage(error: PushError, index: CatalogIndex) -> InvalidData:
    if isinstance(error, InvalidData):
        return error
    return InvalidData(f"catalogue index {index.source} holds a bad release: {error}", key=index.source)


@dataclass
class _Relist:
    """One full re-list: what the catalogue knew when it began, and what it finds."""

    index: CatalogIndex | None
    gone: dict[str, str]
    shadowed: set[str]
    added_gen: dict[str, str]
    added_by_app: dict[str, set[str]]
    skipped_gen: dict[str, str]
    skipped_why: dict[str, str]
    found: list[tuple[ReleaseInfo, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)       # added releases no longer listed
    gone_now: dict[str, str] = field(default_factory=dict)  # index releases no longer listed
    skipped_now: dict[str, tuple[str, str]] = field(default_factory=dict)


def _app_of_key(key: str) -> str | None:
    """The app of a key debs/{app}/..., None for a key right under debs/."""
    app, slash, _ = key[len(layout.DEBS):].partition("/")
    return app if slash else None
