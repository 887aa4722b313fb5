"""The catalogue: every release of every app, newest first, cached and refreshed incrementally.

A cold load lists `debs/` once. After that, new releases are found through a small
journal under `catalog/log/` (one empty object per upload, keyed by upload time), so a
refresh after one new release costs one listing page and one metadata read, whatever the
catalogue size. Releases uploaded by other tools (which write no journal entry) and
deletions are picked up by the periodic full re-list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from push import layout
from push.errors import InvalidInput, NotFound, PushError
from push.names import check_app
from push.release import Release, ReleaseInfo, newest_first_key
from push.store import ObjectInfo, Store

log = logging.getLogger(__name__)

_DEB_TYPE = "application/vnd.debian.binary-package"
# Journal entries are read back this far behind the newest one seen, so an uploader whose
# clock lags a little is still found by the incremental refresh.
JOURNAL_SKEW_NS = 120 * 10**9


def publish(store: Store, info: ReleaseInfo, data: bytes | BinaryIO | Path, *, adopt: bool = False) -> ObjectInfo:
    """Upload a release create-only (two uploads never overwrite each other), then journal it.

    `data` may be the package's path; with `adopt` the store may take the file itself
    (see Store.put_file), and the caller must not use it afterwards.
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
    """Every release in a store. Thread-safe; call `refresh()` to pick up changes."""

    def __init__(self, store: Store, full_interval: float = 300.0) -> None:
        self.store = store
        self.full_interval = full_interval
        self._lock = threading.Lock()
        self._by_name: dict[str, ReleaseInfo] = {}
        self._by_app: dict[str, list[ReleaseInfo]] = {}
        self._generations: dict[str, str] = {}
        self._all: list[ReleaseInfo] | None = None
        self._last_full = 0.0
        self._journal_cursor_ns = 0
        self._loaded = False
        # Changes whenever the cache does (a new release, a full re-list, one found by get):
        # the fleet view re-checks its servers against the catalogue only then.
        self.generation = 0
        # Counters, for the benchmark and /metrics.
        self.metadata_reads = 0
        self.list_pages = 0
        self.skipped: dict[str, str] = {}

    # -- loading ----------------------------------------------------------------------

    def refresh(self, full: bool = False) -> list[ReleaseInfo]:
        """Bring the cache up to date; returns the releases that are new since last time."""
        with self._lock:
            if full or not self._loaded or time.monotonic() - self._last_full > self.full_interval:
                return self._full_refresh()
            return self._journal_refresh()

    def _skip(self, key: str, why: str) -> None:
        """Count an object that is no release (logged once per reason)."""
        if self.skipped.get(key) != why:
            log.warning("skipping %s: %s", key, why)
        self.skipped[key] = why

    def _read_info(self, obj: ObjectInfo) -> ReleaseInfo | None:
        if obj.damaged is not None:
            self._skip(obj.key, obj.damaged)
            return None
        metadata = obj.metadata
        if not self.store.lists_metadata:
            try:
                obj = self.store.stat(obj.key)
            except NotFound:
                return None
            except PushError as e:  # one unreadable object: skipped and counted, the rest reads on
                self._skip(obj.key, str(e))
                return None
            self.metadata_reads += 1
            metadata = obj.metadata
        try:
            info = ReleaseInfo.from_metadata(obj.key, metadata)
        except InvalidInput as e:
            # The original ignored objects without release metadata; we do too, but say so.
            self._skip(obj.key, str(e))
            return None
        self.skipped.pop(obj.key, None)
        return info

    def _full_refresh(self) -> list[ReleaseInfo]:
        start_ns = time.time_ns()
        seen: dict[str, ReleaseInfo] = {}
        generations: dict[str, str] = {}
        new: list[ReleaseInfo] = []
        listed: set[str] = set()
        token: str | None = None
        while True:
            page = self.store.list_page(layout.DEBS, token)
            self.list_pages += 1
            for obj in page.items:
                listed.add(obj.key)
                name = layout.release_name_of(obj.key)
                if name is None:
                    continue
                known = self._by_name.get(name)
                if known is not None and self._generations.get(name) == obj.generation:
                    info: ReleaseInfo | None = known
                else:
                    info = self._read_info(obj)
                    if info is not None and known is None:
                        new.append(info)
                if info is not None:
                    seen[name] = info
                    generations[name] = obj.generation
            if page.next_token is None:
                break
            token = page.next_token
        self._by_name = seen
        self._generations = generations
        self.skipped = {k: why for k, why in self.skipped.items() if k in listed}
        self._reindex()
        self._loaded = True
        self._last_full = time.monotonic()
        self._journal_cursor_ns = max(self._journal_cursor_ns, start_ns)
        return new

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
                if name in self._by_name:
                    continue
                key = layout.release_key(name)
                try:
                    deb = self.store.stat(key)
                except NotFound:
                    continue
                except PushError as e:  # a damaged object: skipped and counted
                    self._skip(key, str(e))
                    continue
                self.metadata_reads += 1
                try:
                    info = ReleaseInfo.from_metadata(deb.key, deb.metadata)
                except InvalidInput as e:
                    self._skip(deb.key, str(e))
                    continue
                self._by_name[name] = info
                self._generations[name] = deb.generation
                self._insert(info)
                new.append(info)
            if page.next_token is None:
                break
            token = page.next_token
        return new

    def _reindex(self) -> None:
        by_app: dict[str, list[ReleaseInfo]] = {}
        for info in self._by_name.values():
            by_app.setdefault(info.app, []).append(info)
        for infos in by_app.values():
            infos.sort(key=newest_first_key, reverse=True)
        self._by_app = by_app
        self._all = None
        self.generation += 1

    def _insert(self, info: ReleaseInfo) -> None:
        # New releases are nearly always the newest, so this stops at the first element.
        infos = self._by_app.setdefault(info.app, [])
        key = newest_first_key(info)
        i = 0
        while i < len(infos) and newest_first_key(infos[i]) > key:
            i += 1
        infos.insert(i, info)
        self._all = None
        self.generation += 1

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.refresh()

    # -- reading ----------------------------------------------------------------------

    def apps(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._by_app)

    def releases(self, app: str | None = None) -> list[ReleaseInfo]:
        """Releases of `app` (or of every app), newest first."""
        self._ensure_loaded()
        if app is not None:
            check_app(app)
            return list(self._by_app.get(app, ()))
        if self._all is None:
            everything: Iterable[ReleaseInfo] = self._by_name.values()
            self._all = sorted(everything, key=newest_first_key, reverse=True)
        return list(self._all)

    def latest(self, app: str) -> ReleaseInfo:
        releases = self.releases(app)
        if not releases:
            raise NotFound(f"no releases of app {app!r}")
        return releases[0]

    def newest(self, app: str) -> ReleaseInfo | None:
        """The newest release of `app` the cache holds (no copy, no store call: the fleet
        view asks this for every app on every poll)."""
        infos = self._by_app.get(app)
        return infos[0] if infos else None

    def cached(self, name: str) -> ReleaseInfo | None:
        """The release called `name` if the cache holds it (no store call, unlike `get`)."""
        return self._by_name.get(name)

    def get(self, name: str) -> ReleaseInfo:
        """The release called `name`; looks in the store if the cache does not know it."""
        self._ensure_loaded()
        info = self._by_name.get(name)
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
            if name not in self._by_name:
                self._by_name[name] = info
                self._generations[name] = obj.generation
                self._insert(info)
        return info

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._by_name)
