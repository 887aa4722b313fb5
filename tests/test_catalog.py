"""The catalogue: newest first, incremental refresh costs O(1) metadata reads."""

from datetime import datetime, timedelta, timezone

import pytest

from push.catalog import Catalog, publish
from push.errors import Conflict, NotFound
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore

H = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(app, minutes, note="n"):
    return ReleaseInfo(Release(app, "u", "h", T0 + timedelta(minutes=minutes), H), note=note, sha256="0" * 64, size=3)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "bucket")


class CountingStore:
    """Wraps a store and counts stat/open calls (object reads)."""

    def __init__(self, inner, lists_metadata):
        self.inner, self.lists_metadata, self.reads = inner, lists_metadata, 0
        self.url = inner.url

    def stat(self, key):
        self.reads += 1
        return self.inner.stat(key)

    def list_page(self, *a, **kw):
        page = self.inner.list_page(*a, **kw)
        if not self.lists_metadata:  # behave like S3: listings carry no metadata
            from dataclasses import replace

            page = type(page)([replace(i, metadata={}) for i in page.items], page.next_token)
        return page

    def __getattr__(self, name):  # everything else (put, get, list_keys, ...) as the store does it
        return getattr(self.inner, name)


def test_newest_first_per_app_and_overall(store):
    for app, m in [("a", 1), ("a", 3), ("b", 2), ("a", 2)]:
        publish(store, info(app, m), b"deb")
    cat = Catalog(store)
    assert [r.release.time.minute for r in cat.releases("a")] == [3, 2, 1]
    assert [(r.app, r.release.time.minute) for r in cat.releases()] == [("a", 3), ("b", 2), ("a", 2), ("a", 1)]
    assert cat.latest("a").release.time.minute == 3
    assert cat.apps() == ["a", "b"]
    with pytest.raises(NotFound):
        cat.latest("zzz")


def test_objects_without_release_metadata_are_skipped(store):
    publish(store, info("a", 1), b"deb")
    store.put("debs/a/" + info("a", 2).release.name.split("/")[1], b"x", {"note": "no appname"})
    store.put("debs/README", b"x")
    cat = Catalog(store)
    assert len(cat.releases("a")) == 1
    assert any("appname" in why for why in cat.skipped.values())


def test_publish_is_create_only(store):
    publish(store, info("a", 1, note="first"), b"one")
    with pytest.raises(Conflict):
        publish(store, info("a", 1, note="second"), b"two")
    assert Catalog(store).releases("a")[0].note == "first"


@pytest.mark.slow  # fills each store with 300 releases
@pytest.mark.parametrize("lists_metadata", [True, False])
def test_refresh_after_one_new_release_is_constant_cost(store, lists_metadata):
    for m in range(300):
        publish(store, info(f"app{m % 7}", m), b"deb")
    counting = CountingStore(store, lists_metadata)
    cat = Catalog(counting)
    cat.refresh()
    assert len(cat) == 300
    cold_reads = counting.reads
    assert cold_reads == (0 if lists_metadata else 300)
    pages_before = cat.list_pages
    publish(store, info("app1", 1000), b"deb")
    counting.reads = 0
    new = cat.refresh()
    assert [n.release.time for n in new] == [T0 + timedelta(minutes=1000)]
    assert counting.reads == 1
    assert cat.list_pages - pages_before == 1
    assert cat.releases("app1")[0].release.time == T0 + timedelta(minutes=1000)
    counting.reads = 0
    assert cat.refresh() == [] and counting.reads == 0


def test_full_refresh_finds_releases_uploaded_without_journal(store):
    cat = Catalog(store, full_interval=0)
    assert cat.releases() == []
    r = info("a", 5)
    store.put(r.release.key, b"deb", r.to_metadata())  # as the original uploader did
    cat.refresh()
    assert [x.name for x in cat.releases("a")] == [r.name]
    store.delete(r.release.key)
    cat.refresh()
    assert cat.releases("a") == []


def test_get_by_name(store):
    r = info("a", 1)
    publish(store, r, b"deb")
    cat = Catalog(store)
    assert cat.get(r.name).note == "n"
    with pytest.raises(NotFound):
        cat.get(info("a", 2).name)


def test_generation_changes_with_the_cache_and_only_then(store):
    publish(store, info("web", 1), b"deb")
    cat = Catalog(store)
    cat.refresh()
    first = cat.generation
    assert cat.refresh() == [] and cat.generation == first  # nothing new: the same generation
    assert cat.newest("web").name == info("web", 1).name and cat.cached(info("web", 1).name) is not None
    publish(store, info("web", 2), b"deb")
    assert len(cat.refresh()) == 1 and cat.generation > first
    assert cat.newest("web").name == info("web", 2).name and cat.newest("nothing") is None
    # A release found by get() (uploaded without a journal entry) changes it too.
    store.put(info("web", 3).release.key, b"deb", info("web", 3).to_metadata())
    before = cat.generation
    assert cat.cached(info("web", 3).name) is None
    cat.get(info("web", 3).name)
    assert cat.generation > before and cat.cached(info("web", 3).name) is not None
