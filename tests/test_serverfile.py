"""server/{name}.json: the original format, placeholders, compare-and-swap."""

import json

import pytest

from push import serverfile
from push.errors import Conflict, InvalidServerFile, PushError
from push.release import Release
from push.store.local import LocalStore

H = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"
A1 = f"app/app:u@h:2026-01-01T00:00:00Z:{H}.deb"
A2 = f"app/app:u@h:2026-01-02T00:00:00Z:{H}.deb"
B1 = f"web/web:u@h:2026-01-01T00:00:00Z:{H}.deb"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "bucket")


def put_raw(store, server, value):
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    store.put(f"server/{server}.json", data)


def test_missing_file_reads_empty(store):
    sf = serverfile.read(store, "s1")
    assert sf.entries == () and sf.generation is None and sf.releases == {}


def test_reads_original_file_with_placeholders(store):
    put_raw(store, "skia-push", [A1, "web/", "logserver/"])
    sf = serverfile.read(store, "skia-push")
    assert sf.apps == ["app", "web", "logserver"]
    assert sf.releases == {"app": Release.parse(A1)}
    assert sf.release_of("web") is None


@pytest.mark.parametrize("raw", [b"{}", b"not json", b'"x"', b"[1]", json.dumps(["garbage"]).encode(),
                                 json.dumps([A1, A2]).encode(), json.dumps(["../x/"]).encode()])
def test_malformed_files_are_named_errors(store, raw):
    put_raw(store, "s1", raw)
    with pytest.raises(InvalidServerFile) as e:
        serverfile.read(store, "s1")
    assert "server/s1.json" in str(e.value)


def test_write_keeps_format_and_order(store):
    put_raw(store, "s1", [A1, "web/"])
    sf = serverfile.read(store, "s1")
    new = serverfile.write(store, sf.with_release(Release.parse(A2)).with_release(Release.parse(B1)))
    assert json.loads(store.get("server/s1.json")[0]) == [A2, B1]
    assert new.generation != sf.generation
    assert serverfile.read(store, "s1").with_placeholder("app").entries == ("app/", B1)


def test_concurrent_edit_loses_with_conflict_and_nothing_is_lost(store):
    first = serverfile.read(store, "s1")
    second = serverfile.read(store, "s1")
    serverfile.write(store, first.with_release(Release.parse(A1)))
    with pytest.raises(Conflict):
        serverfile.write(store, second.with_release(Release.parse(B1)))
    assert serverfile.read(store, "s1").entries == (A1,)
    # The loser retries on fresh data; both edits survive.
    before, after = serverfile.update(store, "s1", lambda sf: sf.with_release(Release.parse(B1)))
    assert after.entries == (A1, B1)


def test_conditional_read_downloads_nothing_when_unchanged(store):
    put_raw(store, "s1", [A1])
    sf = serverfile.read(store, "s1")
    assert serverfile.read(store, "s1", if_generation_not_match=sf.generation) is None
    put_raw(store, "s1", [A2])
    assert serverfile.read(store, "s1", if_generation_not_match=sf.generation).entries == (A2,)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "a\nb"])
def test_bad_server_names(store, name):
    with pytest.raises(PushError):
        serverfile.read(store, name)

