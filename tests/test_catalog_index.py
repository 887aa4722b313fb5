"""The catalogue index: written by push servers, read by every catalogue, on all three stores.

A catalogue that starts from the index reads no release's metadata; it stays right when
releases are uploaded without a journal entry or deleted (within the full re-list); a
damaged index is logged and listed around, never a crash; concurrent writers lose nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from push import catalog as catalog_mod
from push import catalogindex, layout
from push.catalog import Catalog, publish
from push.catalogindex import CatalogIndex, IndexMeta
from push.errors import Conflict, InvalidData
from push.release import Release, ReleaseInfo
from push.store import Store
from waiting import wait_for

H = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
INDEX = layout.catalog_index_key(catalogindex.VERSION)


def info(app: str, minutes: int, **kw: object) -> ReleaseInfo:
    fields: dict[str, object] = {"note": f"note {minutes}", "sha256": f"{minutes:064x}", "size": 100 + minutes,
                                 "services": (f"{app}.service",), **kw}
    return ReleaseInfo(Release(app, "u", "h", T0 + timedelta(minutes=minutes), H), **fields)  # type: ignore[arg-type]


def signed(app: str, minutes: int) -> ReleaseInfo:
    # The keys push.signing adds to a signed release's metadata ride along as extra metadata.
    return info(app, minutes, extra={"signature": "A" * 86 + "==", "keyid": "0123456789abcdef",
                                     "package": app, "version": f"1.{minutes}"})


def without_journal(store: Store, r: ReleaseInfo) -> None:
    """Upload as the original Push did: the object with its metadata, no journal entry."""
    store.put(r.release.key, b"deb", r.to_metadata(), if_absent=True)


def settle(catalog: Catalog) -> Catalog:
    """Wait for the index write a refresh may have started in the background."""
    if catalog.index_writer is not None:
        catalog.index_writer.join(120)
        assert not catalog.index_writer.is_alive()
    return catalog


def fold(store: Store) -> Catalog:
    """A push server's catalogue after loading, once its index write (if one was due) is done."""
    writer = Catalog(store, writes_index=True)
    writer.refresh()
    settle(writer)
    assert store.stat(INDEX).size > 0
    return writer


def age_index(store: Store, hours: float) -> None:
    """Rewrite the index as if its listing were `hours` old."""
    got = store.get(INDEX)
    assert got is not None
    index = CatalogIndex.decode(got[0], INDEX)
    meta = replace(index.meta, listed_ns=index.meta.listed_ns - int(hours * 3600e9))
    store.put(INDEX, catalogindex.encode(meta, [b for app in index.apps() for b in index.blocks(app)]))


class Counting:
    """A store that counts metadata reads (stat) and whole-object reads (get)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.stats: list[str] = []
        self.gets: list[str] = []

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        self.stats.append(key)
        return self.inner.stat(key)

    def get(self, key: str, if_generation_not_match: str | None = None):  # type: ignore[no-untyped-def]
        self.gets.append(key)
        return self.inner.get(key, if_generation_not_match)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


# -- the round trip ---------------------------------------------------------------------------


def test_index_round_trip(store: Store) -> None:
    releases = [info("web", 1), info("web", 3, dirty=True, note='quote " and \\ and é'), signed("web", 2),
                info("db", 5, services=()), signed("db", 4)]
    for r in releases:
        publish(store, r, b"deb")
    store.put("debs/web/web:u@h:2026-01-01T09:00:00Z:" + H + ".deb", b"x", {"note": "no appname"})
    writer = fold(store)
    assert writer.index_writes == 1 and not writer.write_index()  # written once; nothing more is due

    counting = Counting(store)
    reader = Catalog(counting)  # type: ignore[arg-type]
    assert reader.releases() == writer.releases() == sorted(releases, key=lambda r: r.release.time, reverse=True)
    assert counting.gets == [INDEX] and reader.index_reads == 1 and counting.stats == []  # no metadata read
    assert reader.releases("web") == [releases[1], releases[2], releases[0]]
    assert reader.get(releases[2].name) == releases[2] and reader.get(releases[2].name).extra["keyid"]
    assert reader.cached(releases[4].name) == releases[4]
    assert reader.newest("db") == releases[3] and reader.latest("web") == releases[1]
    assert reader.apps() == ["db", "web"] and len(reader) == 5 and reader.count("web") == 3
    assert list(reader.skipped) == [f"debs/web/web:u@h:2026-01-01T09:00:00Z:{H}.deb"]
    assert counting.stats == []


def test_the_index_reads_as_json_lines() -> None:
    r = signed("web", 1)
    [(block, count)] = catalogindex.blocks_of([catalogindex.row_of(r, "g1")])
    data = catalogindex.encode(IndexMeta(journal_ns=7, listed_ns=5), [("web", block, count)])
    header_line, row = gzip.decompress(data).decode().splitlines()  # zcat shows it whole
    header = json.loads(header_line)
    assert (header["format"], header["version"], header["releases"]) == ("push-catalog-index", 1, 1)
    assert (header["journal_ns"], header["listed_ns"], header["blocks"]) == (7, 5, [["web", len(block), 1]])
    name, generation, metadata = json.loads(row)
    assert (name, generation) == (r.name, "g1") and metadata["keyid"] == "0123456789abcdef"
    assert "appname" not in metadata  # the name says it
    assert catalogindex.info_of((name, generation, metadata)) == r


def test_big_apps_are_split_into_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogindex, "BLOCK_RELEASES", 3)
    rows = [catalogindex.row_of(info("web", m), f"g{m}") for m in range(10, 0, -1)]
    data = catalogindex.encode(IndexMeta(1, 1), [("web", d, c) for d, c in catalogindex.blocks_of(rows)])
    index = CatalogIndex.decode(data, "test")
    assert [c for _, _, c in index.blocks("web")] == [3, 3, 3, 1]
    assert [r[0] for r in index.rows("web")] == [r[0] for r in rows]
    assert index.find(info("web", 1).name) == rows[-1]
    assert index.names("web") == {r[0]: r[1] for r in rows}
    assert index.newest("web") == rows[0] and index.find(info("web", 99).name) is None


def test_the_header_names_each_apps_newest_release_so_start_up_inflates_no_block(store: Store) -> None:
    for r in (info("web", 1), signed("web", 3), info("db", 2)):
        publish(store, r, b"deb")
    writer = fold(store)
    publish(store, info("db", 4), b"deb")  # a second write: "web" copied, "db" re-encoded
    writer.refresh()
    assert writer.write_index(force=True)
    got = store.get(INDEX)
    assert got is not None
    index = CatalogIndex.decode(got[0], "test")
    assert index.newest("web") == index.rows("web")[0] and index.newest("db") == index.rows("db")[0]
    fresh = CatalogIndex.decode(got[0], "test")
    assert [fresh.newest(a)[0] for a in ("db", "web")] == [info("db", 4).name, signed("web", 3).name]  # type: ignore[index]
    assert fresh._text.cache_info().misses == 0  # type: ignore[attr-defined]  # nothing inflated
    reader = Catalog(store)
    reader.refresh()
    assert reader.newest("web") == signed("web", 3) and reader.newest("db") == info("db", 4)
    # An index without it (an older Push wrote it) is read from its first block, as before.
    old = catalogindex.encode(IndexMeta(1, 1), list(index.blocks("web")))
    assert CatalogIndex.decode(old, "old").newest("web") == index.rows("web")[0]


# -- staying right: uploads without a journal, deletions -----------------------------------------


def test_additions_without_journal_and_deletions_appear_within_the_relist(store: Store) -> None:
    kept, deleted = info("web", 1), info("web", 2)
    for r in (kept, deleted, info("db", 3)):
        publish(store, r, b"deb")
    writer = fold(store)
    reader = Catalog(store)
    assert len(reader) == 3

    original = info("web", 10)
    without_journal(store, original)  # as the original Push uploads
    store.delete(deleted.release.key)
    journaled = info("db", 11)
    publish(store, journaled, b"deb")

    # The incremental refresh sees only the journal.
    assert [r.name for r in reader.refresh()] == [journaled.name]
    assert reader.get(deleted.name) == deleted and original.name not in [r.name for r in reader.releases()]
    # The full re-list finds the rest, reading only the metadata of the one it did not know.
    counting = Counting(store)
    reader.store = counting  # type: ignore[assignment]
    assert [r.name for r in reader.refresh(full=True)] == [original.name]
    metadata_in_listing = store.lists_metadata and not store.listing_reads_objects
    assert counting.stats == ([] if metadata_in_listing else [original.release.key])
    assert [r.name for r in reader.releases("web")] == [original.name, kept.name]
    assert reader.cached(deleted.name) is None and len(reader) == 4 and reader.count("web") == 2

    # A push server folds the same into the index, so a new reader starts from the truth.
    writer.refresh(full=True)  # the server re-lists, and folds what changed into the index
    settle(writer)
    fresh = Catalog(store)
    assert [r.name for r in fresh.releases()] == [r.name for r in reader.releases()]


def test_the_relist_is_due_within_the_full_interval_of_the_index_listing(store: Store) -> None:
    publish(store, info("web", 1), b"deb")
    fold(store)
    reader = Catalog(store, full_interval=0)
    reader.refresh()
    without_journal(store, info("web", 2))
    assert [r.name for r in reader.refresh()] == [info("web", 2).name]  # due at once: a full re-list


def test_a_deleted_newest_release_is_not_the_newest(store: Store) -> None:
    for m in (1, 2, 3):
        publish(store, info("web", m), b"deb")
    fold(store)
    store.delete(info("web", 3).release.key)
    reader = Catalog(store)
    reader.refresh()
    assert reader.newest("web") == info("web", 3)  # until the re-list
    reader.refresh(full=True)
    assert reader.newest("web") == info("web", 2) and reader.latest("web") == info("web", 2)
    store.delete(info("web", 2).release.key)
    store.delete(info("web", 1).release.key)
    reader.refresh(full=True)
    assert reader.newest("web") is None and reader.apps() == [] and len(reader) == 0


# -- a damaged or stale index -----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header", "newer format"])
def test_a_damaged_index_falls_back_to_listing_and_is_rewritten(store: Store, damage: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    for m in range(5):
        publish(store, info(f"app{m % 2}", m), b"deb")
    fold(store)
    data = store.get(INDEX)[0]  # type: ignore[index]
    bad = {"garbage": b"\x00not gzip at all",
           "truncated": data[: len(data) // 2],
           "header": gzip.compress(b'{"format": "push-catalog-index", "version": 1}\n'),
           "newer format": gzip.compress(b'{"format": "push-catalog-index", "version": 99}\n') + data}[damage]
    store.put(INDEX, bad)

    with caplog.at_level(logging.WARNING, logger="push.catalog"):
        reader = Catalog(store)
        assert len(reader.releases()) == 5  # listed instead
    assert any("catalogue index" in r.getMessage() and "listing debs/" in r.getMessage() for r in caplog.records)

    writer = settle(Catalog(store, writes_index=True))
    writer.refresh()
    settle(writer)  # due at once: the bucket's index is unusable
    assert writer.index_writes == 1
    got = store.get(INDEX)
    assert got is not None and CatalogIndex.decode(got[0], INDEX).releases == 5


def test_a_damaged_block_serves_that_app_from_the_bucket(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    for m in range(6):
        publish(store, info(f"app{m % 2}", m), b"deb")
    fold(store)
    data = bytearray(store.get(INDEX)[0])  # type: ignore[index]
    index = CatalogIndex.decode(bytes(data), "x")
    block = index._blocks["app1"][0]
    data[block.start + 12:block.start + 20] = b"\xff" * 8  # inside app1's deflate stream
    store.put(INDEX, bytes(data))

    with caplog.at_level(logging.ERROR, logger="push.catalog"):
        reader = Catalog(store)
        assert [r.name for r in reader.releases("app0")] == [info("app0", m).name for m in (4, 2, 0)]
        assert [r.name for r in reader.releases("app1")] == [info("app1", m).name for m in (5, 3, 1)]
        assert reader.get(info("app1", 3).name) == info("app1", 3) and len(reader) == 6
    assert any("app1" in r.getMessage() and "instead" in r.getMessage() for r in caplog.records)


def test_a_reader_lists_instead_of_trusting_an_index_no_server_confirmed_for_hours(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    publish(store, info("web", 1), b"deb")
    fold(store)
    without_journal(store, info("web", 2))
    age_index(store, 7)
    with caplog.at_level(logging.WARNING, logger="push.catalog"):
        assert len(Catalog(store).releases("web")) == 2
    assert any("no push server has re-listed" in r.getMessage() for r in caplog.records)
    # A push server still starts from it, and re-lists at its next refresh.
    server = Catalog(store, writes_index=True)
    server.refresh()
    assert len(server.releases("web")) == 1
    assert [r.name for r in server.refresh()] == [info("web", 2).name]
    settle(server)
    assert len(Catalog(store).releases("web")) == 2


# -- writers ------------------------------------------------------------------------------------


def test_a_server_writes_the_index_in_the_background_when_due(store: Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    publish(store, info("web", 1), b"deb")
    server = Catalog(store, writes_index=True)
    server.refresh()  # no index yet: one is written
    assert server.index_writer is not None
    settle(server)
    reader = Catalog(store)
    assert len(reader) == 1 and reader.index_reads == 1 and reader.metadata_reads == 0
    first = store.stat(INDEX).generation

    monkeypatch.setattr(catalog_mod, "FOLD_AFTER_RELEASES", 2)
    publish(store, info("web", 2), b"deb")
    server.refresh()
    settle(server)
    assert store.stat(INDEX).generation == first  # one pending release: not yet worth a rewrite
    monkeypatch.setattr(catalog_mod, "FOLD_INTERVAL", 0.0)
    server.refresh()
    settle(server)
    second = store.stat(INDEX).generation
    assert second != first  # the pending one, folded once it waited FOLD_INTERVAL
    publish(store, info("web", 3), b"deb")
    publish(store, info("web", 4), b"deb")
    server.refresh()
    settle(server)
    assert store.stat(INDEX).generation != second  # two pending: folded at once
    got = store.get(INDEX)
    assert got is not None and CatalogIndex.decode(got[0], INDEX).releases == 4
    assert not server.write_index()  # nothing pending now


def test_two_writers_folding_at_once_lose_no_entry(store: Store) -> None:
    first = info("web", 1)
    publish(store, first, b"deb")
    fold(store)
    a = settle(Catalog(store, writes_index=True))
    b = settle(Catalog(store, writes_index=True))
    a.refresh()
    b.refresh()
    only_a, only_b = info("web", 2), info("db", 3)
    without_journal(store, only_a)
    a.refresh(full=True)  # a finds only_a, and folds it in
    settle(a)
    without_journal(store, only_b)
    assert b.get(only_b.name) == only_b  # b knows only_b, not only_a
    assert b.write_index(force=True)  # its compare-and-swap fails: it folds into a's index
    assert {r.name for r in Catalog(store).releases()} == {first.name, only_a.name, only_b.name}
    assert b.releases("web") == [only_a, first]  # b now holds what a added

    store.delete(first.release.key)
    a.refresh(full=True)  # a sees the deletion and folds it into b's index
    settle(a)
    assert b.write_index(force=True)  # b, which never saw it, does not bring it back
    assert {r.name for r in Catalog(store).releases()} == {only_a.name, only_b.name}


def test_a_writer_that_finds_the_index_damaged_meanwhile_writes_its_whole_view(store: Store) -> None:
    for m in (1, 2):
        publish(store, info("web", m), b"deb")
    fold(store)
    writer = settle(Catalog(store, writes_index=True))
    writer.refresh()
    later = info("web", 3)
    without_journal(store, later)
    writer.get(later.name)
    store.put(INDEX, b"damaged meanwhile")  # the compare-and-swap will fail on this
    assert writer.write_index(force=True)
    assert [r.name for r in Catalog(store).releases()] == [info("web", m).name for m in (3, 2, 1)]


@pytest.mark.slow
def test_concurrent_writers_in_threads_lose_nothing(store: Store) -> None:
    publish(store, info("base", 0), b"deb")
    fold(store)
    writers = [settle(Catalog(store, writes_index=True)) for _ in range(4)]
    for w in writers:
        w.refresh()
        settle(w)
    errors: list[BaseException] = []

    def work(n: int, w: Catalog) -> None:
        try:
            for k in range(5):
                r = info(f"app{n}", k + 1)
                without_journal(store, r)
                w.get(r.name)
                while True:  # as the background writer does, later
                    try:
                        w.write_index(force=True)
                        break
                    except Conflict:
                        continue
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n, w)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    got = store.get(INDEX)
    assert got is not None
    index = CatalogIndex.decode(got[0], INDEX)
    assert {r[0] for app in index.apps() for r in index.rows(app)} == {
        info(f"app{n}", k + 1).name for n in range(4) for k in range(5)} | {info("base", 0).name}


class UploadDuringTheIndexWrite:
    """A store where `during` runs once, just before the next put of the index lands (after the
    writer took its snapshot and encoded it): an upload racing the write."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.during: list[object] = []

    def put(self, key: str, *args: object, **kwargs: object) -> object:
        if key == INDEX:
            while self.during:
                self.during.pop(0)()  # type: ignore[operator]
        return self.inner.put(key, *args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("journal", [True, False], ids=["journaled", "no-journal"])
def test_a_release_uploaded_during_the_index_write_is_not_lost(store: Store, journal: bool) -> None:
    for m in (1, 2):
        publish(store, info("web", m), b"deb")
    racing = UploadDuringTheIndexWrite(store)
    writer = Catalog(racing, writes_index=True)  # type: ignore[arg-type]
    writer.refresh()
    settle(writer)
    during, learned = info("web", 3), info("db", 4)
    uploaded_ns: list[int] = []

    def upload() -> None:
        uploaded_ns.append(time.time_ns())
        if journal:
            publish(store, during, b"deb")
        else:
            without_journal(store, during)
        without_journal(store, learned)
        writer.get(learned.name)  # a request thread of the same server learns one meanwhile

    racing.during.append(upload)
    assert writer.write_index(force=True)
    assert uploaded_ns, "the upload did not race the write"

    got = store.get(INDEX)
    assert got is not None
    written = CatalogIndex.decode(got[0], INDEX)
    assert written.find(during.name) is None  # encoded before the upload
    # The index's positions never pass what it does not hold: a reader reads the journal, and
    # re-lists, from before the upload.
    assert written.meta.listed_ns < uploaded_ns[0] and written.meta.journal_ns < uploaded_ns[0]

    # What the writer learned during the write is still pending, not dropped with its old base.
    assert learned in writer.releases("db")
    reader = Catalog(store, full_interval=0)
    found = {r.name for r in reader.releases()}
    if not journal:
        assert during.name not in found  # no journal entry: the re-list finds it
        reader.refresh()
        found = {r.name for r in reader.releases()}
    assert during.name in found
    # The writer's next re-list and write fold both in.
    writer.refresh(full=True)
    settle(writer)
    writer.write_index(force=True)
    got = store.get(INDEX)
    assert got is not None
    index = CatalogIndex.decode(got[0], INDEX)
    assert {r[0] for app in index.apps() for r in index.rows(app)} == {
        info("web", 1).name, info("web", 2).name, during.name, learned.name}


def test_an_index_of_another_format_version_is_left_alone(store: Store) -> None:
    newer = layout.catalog_index_key(catalogindex.VERSION + 1)
    theirs = gzip.compress(b'{"format": "push-catalog-index", "version": 2, "a field": "v1 never heard of"}\n')
    store.put(newer, theirs)  # a newer Push on the same bucket keeps its own
    publish(store, info("web", 1), b"deb")
    fold(store)
    got = store.get(newer)
    assert got is not None and got[0] == theirs
    counting = Counting(store)
    assert [r.name for r in Catalog(counting).releases()] == [info("web", 1).name]  # type: ignore[arg-type]
    assert counting.gets == [INDEX]


# -- the journal --------------------------------------------------------------------------------


def test_journal_entries_a_day_behind_the_index_are_pruned(store: Store) -> None:
    old, recent = info("web", 1), info("web", 2)
    publish(store, old, b"deb")
    publish(store, recent, b"deb")
    entries = [o.key for o in store.list(layout.CATALOG_LOG)]
    # Make the first entry two days old.
    stamp, name = layout.journal_entry(entries[0])  # type: ignore[misc]
    store.delete(entries[0])
    store.put(layout.journal_key(name, stamp - 2 * catalog_mod.JOURNAL_KEEP_NS), b"")
    fold(store)
    assert [o.key for o in store.list(layout.CATALOG_LOG)] == entries[1:]
    assert len(Catalog(store)) == 2


def test_a_reader_of_the_index_reads_only_the_journal_tail(store: Store) -> None:
    for m in range(3):
        publish(store, info("web", m), b"deb")
    writer = fold(store)
    later = info("web", 10)
    publish(store, later, b"deb")
    counting = Counting(store)
    reader = Catalog(counting)  # type: ignore[arg-type]
    assert reader.releases("web")[0] == later
    assert counting.stats == [later.release.key]  # the one release the index does not hold
    assert writer.refresh() == [later]


def test_an_index_whose_header_and_blocks_disagree_is_refused() -> None:
    with pytest.raises(InvalidData, match="not a push-catalog-index"):
        CatalogIndex.decode(gzip.compress(b'{"format": "other"}\n'), "x")
    [(block, count)] = catalogindex.blocks_of([catalogindex.row_of(info("web", 1), "g")])
    good = catalogindex.encode(IndexMeta(1, 1), [("web", block, count)])
    assert CatalogIndex.decode(good, "x").releases == 1
    with pytest.raises(InvalidData, match="add up to"):
        CatalogIndex.decode(good + b"more", "x")
    miscounted = CatalogIndex.decode(catalogindex.encode(IndexMeta(1, 1), [("web", block, 2)]), "x")
    with pytest.raises(InvalidData, match="holds 1 lines, its header says 2"):  # found when the block is read
        miscounted.rows("web")
    with pytest.raises(InvalidData, match="app name"):
        CatalogIndex.decode(catalogindex.encode(IndexMeta(1, 1), [("../web", block, 1)]), "x")


# -- the push server ----------------------------------------------------------------------------


def test_push_serve_keeps_the_index_for_every_other_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from fleetdata import make_config
    from push.server.app import create_app
    from push.store.local import LocalStore

    store = LocalStore(tmp_path / "bucket")
    for m in range(3):
        publish(store, info("hello", m), b"deb")
    app = create_app(store, make_config(tmp_path), poll_interval=0.05, catalog_interval=0.05)
    with TestClient(app) as client:
        # 200 once the server's first look at the bucket is done (it runs beside the startup).
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout=30, what="/healthz 200")
        deadline = time.monotonic() + 30
        while not list(store.list(layout.CATALOG_INDEX)) and time.monotonic() < deadline:
            time.sleep(0.05)
    counting = Counting(store)
    reader = Catalog(counting)  # type: ignore[arg-type]
    assert [r.name for r in reader.releases("hello")] == [info("hello", m).name for m in (2, 1, 0)]
    assert reader.index_reads == 1 and counting.stats == []  # read from the index the server wrote


def test_push_serve_on_a_damaged_index_serves_the_listing_and_rewrites_it(
        store: Store, tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from fleetdata import TOKENS, make_config
    from push.server.app import create_app

    for m in range(3):
        publish(store, info("hello", m), b"deb")
    fold(store)
    got = store.get(INDEX)
    assert got is not None
    store.put(INDEX, got[0][: len(got[0]) - 40])  # truncated, as by a half-finished copy
    publish(store, info("hello", 3), b"deb")
    app = create_app(store, make_config(tmp_path), poll_interval=0.05, catalog_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="push.catalog"), TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.get("/api/v1/apps/hello/releases", headers={"Authorization": f"Bearer {TOKENS['dash']}"})
        assert answer.status_code == 200
        assert [r["name"] for r in answer.json()] == [info("hello", m).name for m in (3, 2, 1, 0)]
        rewritten = None
        while rewritten is None and time.monotonic() < deadline:
            got = store.get(INDEX)
            assert got is not None
            try:
                rewritten = CatalogIndex.decode(got[0], INDEX)
            except InvalidData:
                time.sleep(0.05)
    assert any("is unusable" in r.getMessage() for r in caplog.records)
    assert rewritten is not None and rewritten.releases == 4


def test_the_generation_moves_with_every_change_the_fleet_view_must_see(store: Store) -> None:
    for m in (1, 2):
        publish(store, info("web", m), b"deb")
    fold(store)
    reader = Catalog(store)
    reader.refresh()
    assert reader.newest("web") == info("web", 2)
    before = reader.generation
    reader.refresh()
    assert reader.generation == before  # nothing changed: the fleet view re-checks nothing
    store.delete(info("web", 2).release.key)
    reader.refresh(full=True)
    assert reader.generation != before and reader.newest("web") == info("web", 1)
    before = reader.generation
    publish(store, info("web", 3), b"deb")
    reader.refresh()
    assert reader.generation != before
