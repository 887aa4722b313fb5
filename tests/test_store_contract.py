"""The one contract every store keeps, run against the local directory, GCS and S3.

The cloud stores run against fake-gcs-server and moto on 127.0.0.1. Where an emulator does
not enforce something the real service does, the test is marked as an expected failure
for that store with the reason, so it turns red the day the emulator catches up.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from push.errors import Conflict, CorruptObject, InvalidKey, NotFound, PushError, StoreUnavailable
from push.store import Store, open_store

MiB = 1024 * 1024


def scheme(store: Store) -> str:
    return store.url.split("://", 1)[0]


def emulator_gap(request: pytest.FixtureRequest, store: Store, schemes: set[str], reason: str) -> None:
    if scheme(store) in schemes:
        request.applymarker(pytest.mark.xfail(strict=True, raises=(AssertionError, pytest.fail.Exception),
                                              reason=reason))


class PatternStream(io.RawIOBase):
    """`size` deterministic pseudo-random bytes, produced as read: not seekable, never whole
    in memory, and handing out short reads, as a pipe would."""

    def __init__(self, size: int, seed: bytes = b"push", max_read: int = 3 * MiB + 17) -> None:
        self._left = size
        self._seed = seed
        self._counter = 0
        self._pending = b""
        self._max_read = max_read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left == 0:
            return b""
        want = self._max_read if size is None or size < 0 else min(size, self._max_read)
        want = min(want, self._left)
        while len(self._pending) < want:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest() * 1024
            self._pending += block
            self._counter += 1
        out, self._pending = self._pending[:want], self._pending[want:]
        self._left -= len(out)
        return out

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def stream_digest(size: int, seed: bytes = b"push") -> str:
    h = hashlib.sha256()
    s = PatternStream(size, seed)
    while chunk := s.read(MiB):
        h.update(chunk)
    return h.hexdigest()


def read_all(store: Store, key: str) -> bytes:
    with store.open(key) as r:
        return r.read()


# -- basic reads and writes --------------------------------------------------------------


def test_put_get_roundtrip_with_metadata(store: Store) -> None:
    meta = {"appname": "hello", "hash": "0" * 40, "note": "für Müller — ✓", "services": "a.service b.service"}
    put = store.put("debs/hello/hello.deb", b"contents", meta, content_type="application/vnd.debian.binary-package")
    assert put.key == "debs/hello/hello.deb"
    assert put.size == len(b"contents")
    assert put.generation
    assert put.metadata == meta

    got = store.get("debs/hello/hello.deb")
    assert got is not None
    data, info = got
    assert data == b"contents"
    assert info.generation == put.generation
    assert info.metadata == meta
    assert info.size == 8


def test_stat(store: Store) -> None:
    put = store.put("server/a.json", b'["x"]', {"k": "v"})
    info = store.stat("server/a.json")
    assert (info.key, info.generation, info.size, info.metadata) == ("server/a.json", put.generation, 5, {"k": "v"})
    assert isinstance(info.updated, datetime) and info.updated.tzinfo is not None


def test_empty_object(store: Store) -> None:
    store.put("empty", b"")
    assert store.stat("empty").size == 0
    assert store.get("empty")[0] == b""  # type: ignore[index]
    with store.open("empty") as r:
        assert r.read() == b""
        assert list(r) == []


def test_missing_keys_raise_not_found(store: Store) -> None:
    store.put("present", b"x")
    with pytest.raises(NotFound):
        store.get("absent")
    with pytest.raises(NotFound):
        store.get("absent", if_generation_not_match="123")
    with pytest.raises(NotFound):
        store.stat("absent")
    with pytest.raises(NotFound):
        store.open("absent")
    with pytest.raises(NotFound):
        store.delete("absent")
    with pytest.raises(NotFound):
        store.delete("present/child")


# -- conditional writes ------------------------------------------------------------------


def test_if_absent_creates_only_once(store: Store) -> None:
    first = store.put("lock", b"first", {"owner": "a"}, if_absent=True)
    with pytest.raises(Conflict):
        store.put("lock", b"second", {"owner": "b"}, if_absent=True)
    data, info = store.get("lock")  # type: ignore[misc]
    assert data == b"first"
    assert info.generation == first.generation
    assert info.metadata == {"owner": "a"}


def test_cas_with_current_generation_succeeds(store: Store) -> None:
    v1 = store.put("server/s.json", b'["a"]')
    v2 = store.put("server/s.json", b'["b"]', if_generation_match=v1.generation)
    assert v2.generation != v1.generation
    data, info = store.get("server/s.json")  # type: ignore[misc]
    assert (data, info.generation) == (b'["b"]', v2.generation)


def test_cas_with_stale_generation_conflicts(store: Store) -> None:
    mine = store.put("server/s.json", b'["a"]')
    theirs = store.put("server/s.json", b'["theirs"]')  # another writer gets in first
    with pytest.raises(Conflict):
        store.put("server/s.json", b'["mine"]', if_generation_match=mine.generation)
    data, info = store.get("server/s.json")  # type: ignore[misc]
    assert (data, info.generation) == (b'["theirs"]', theirs.generation)


def test_cas_on_missing_key_conflicts(store: Store) -> None:
    gen = store.put("k", b"1").generation
    store.delete("k")
    with pytest.raises(Conflict):
        store.put("k", b"2", if_generation_match=gen)
    with pytest.raises(NotFound):
        store.stat("k")


def test_get_unchanged_returns_none(store: Store) -> None:
    v1 = store.put("server/s.json", b"one")
    assert store.get("server/s.json", if_generation_not_match=v1.generation) is None
    v2 = store.put("server/s.json", b"two")
    data, info = store.get("server/s.json", if_generation_not_match=v1.generation)  # type: ignore[misc]
    assert (data, info.generation) == (b"two", v2.generation)


CLOUD = [pytest.param("gcs", id="gcs", marks=pytest.mark.gcs),
         pytest.param("s3", id="s3", marks=[pytest.mark.s3, pytest.mark.slow])]


@pytest.mark.parametrize("store_url", CLOUD, indirect=True)
def test_get_unchanged_downloads_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch the wire: an unchanged object's contents are never sent."""
    v1 = store.put("server/s.json", b"x" * 4096)
    bodies: list[str] = []
    if scheme(store) == "gs":
        session = store._client._http  # type: ignore[attr-defined]
        request = session.request

        def spy(method: str, url: str, *args: object, **kwargs: object) -> object:
            response = request(method, url, *args, **kwargs)
            if "alt=media" in url and response.status_code < 300:
                bodies.append(url)
            return response

        monkeypatch.setattr(session, "request", spy)
    else:
        def record(http_response: object, parsed: dict, **_: object) -> None:
            if parsed.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
                bodies.append("GetObject 200")

        store._s3.meta.events.register("after-call.s3.GetObject", record)  # type: ignore[attr-defined]
    assert store.get("server/s.json", if_generation_not_match=v1.generation) is None
    assert bodies == []
    store.put("server/s.json", b"changed")
    assert store.get("server/s.json", if_generation_not_match=v1.generation) is not None
    assert len(bodies) == 1  # the spy does see a real download


# -- streaming -----------------------------------------------------------------------------


def test_streaming_put_and_read_20mib(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 20 * MiB
    uploads: list[str] = []
    if scheme(store) == "gs":
        session = store._client._http  # type: ignore[attr-defined]
        request = session.request

        def spy(method: str, url: str, *args: object, **kwargs: object) -> object:
            if "uploadType=" in url:
                uploads.append(url.split("uploadType=")[1].split("&")[0])
            return request(method, url, *args, **kwargs)

        monkeypatch.setattr(session, "request", spy)

    info = store.put("debs/big/big.deb", PatternStream(size), {"sha256": "x"})
    assert info.size == size
    if scheme(store) == "s3":
        assert info.generation.endswith("-3")  # a multipart ETag: three 8 MiB parts
    if scheme(store) == "gs":
        assert set(uploads) == {"resumable"}

    h = hashlib.sha256()
    chunks = 0
    with store.open("debs/big/big.deb") as r:
        assert r.info.size == size
        assert r.info.generation == info.generation
        assert r.info.metadata == {"sha256": "x"}
        while chunk := r.read(MiB + 3):
            assert len(chunk) <= MiB + 3
            h.update(chunk)
            chunks += 1
    assert chunks == -(-size // (MiB + 3))
    assert h.hexdigest() == stream_digest(size)


def test_stream_of_one_chunk_or_less(store: Store) -> None:
    store.put("small", PatternStream(1000, max_read=7))
    assert hashlib.sha256(read_all(store, "small")).hexdigest() == stream_digest(1000)


def test_put_file_adopted_or_uploaded_reads_back_whole(store: Store, tmp_path: Path) -> None:
    """put_file(adopt=True): the local store takes the file, the buckets upload it; either way the
    object is the file's bytes with its metadata, created only once."""
    data = PatternStream(3 * MiB + 5).read(-1) + PatternStream(3 * MiB + 5, max_read=4 * MiB).read(-1)
    built = (store.adoption_dir() or tmp_path) / "built.deb"
    built.write_bytes(data)
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "note": "adopted ✓"}
    info = store.put_file("debs/a/a.deb", built, meta, if_absent=True, adopt=True)
    assert (info.size, info.metadata) == (len(data), meta)
    with store.open("debs/a/a.deb") as r:
        assert (r.info.size, r.info.metadata, r.info.generation) == (len(data), meta, info.generation)
        assert hashlib.sha256(r.read()).hexdigest() == meta["sha256"]

    again = tmp_path / "again.deb"
    again.write_bytes(b"second")
    with pytest.raises(Conflict):
        store.put_file("debs/a/a.deb", again, {"note": "second"}, if_absent=True, adopt=True)
    assert store.stat("debs/a/a.deb").metadata == meta


def test_put_file_without_adopt_leaves_the_file(store: Store, tmp_path: Path) -> None:
    built = (store.adoption_dir() or tmp_path) / "kept.deb"
    built.write_bytes(b"kept" * 1000)
    store.put_file("debs/k/k.deb", built, {"k": "v"})
    assert built.read_bytes() == b"kept" * 1000
    assert read_all(store, "debs/k/k.deb") == b"kept" * 1000


def test_streamed_put_if_absent_conflicts(store: Store, request: pytest.FixtureRequest) -> None:
    emulator_gap(request, store, {"gs"}, "fake-gcs-server 1.54 ignores ifGenerationMatch on resumable uploads")
    existing = store.put("debs/a/a.deb", b"original")
    with pytest.raises(Conflict):
        store.put("debs/a/a.deb", PatternStream(8 * MiB + 1), if_absent=True)
    assert store.get("debs/a/a.deb") == (b"original", store.stat("debs/a/a.deb"))
    assert store.stat("debs/a/a.deb").generation == existing.generation
    assert_no_pending_uploads(store)


def test_streamed_put_with_stale_generation_conflicts(store: Store, request: pytest.FixtureRequest) -> None:
    emulator_gap(request, store, {"gs"}, "fake-gcs-server 1.54 ignores ifGenerationMatch on resumable uploads")
    emulator_gap(request, store, {"s3"}, "moto ignores If-Match on CompleteMultipartUpload")
    stale = store.put("debs/a/a.deb", b"v1")
    store.put("debs/a/a.deb", b"v2")
    with pytest.raises(Conflict):
        store.put("debs/a/a.deb", PatternStream(8 * MiB + 1), if_generation_match=stale.generation)
    assert read_all(store, "debs/a/a.deb") == b"v2"
    assert_no_pending_uploads(store)


def test_streamed_put_with_current_generation(store: Store) -> None:
    current = store.put("debs/a/a.deb", b"v1")
    new = store.put("debs/a/a.deb", PatternStream(8 * MiB + 1), if_generation_match=current.generation)
    assert new.generation != current.generation
    assert store.stat("debs/a/a.deb").size == 8 * MiB + 1


def assert_no_pending_uploads(store: Store) -> None:
    """On S3, a refused multipart upload must leave no parts behind."""
    if scheme(store) == "s3":
        s3 = store._s3  # type: ignore[attr-defined]
        assert s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []  # type: ignore[attr-defined]


def test_reader_never_mixes_generations(store: Store) -> None:
    """A read started before an overwrite yields the old contents whole, or Conflict."""
    store.put("f", PatternStream(9 * MiB, b"old"))
    reader = store.open("f")
    store.put("f", PatternStream(9 * MiB, b"new"))
    try:
        with reader:
            data = reader.read()
    except Conflict:
        return
    assert hashlib.sha256(data).hexdigest() == stream_digest(9 * MiB, b"old")


# -- listing --------------------------------------------------------------------------------


def test_paged_listing(store: Store) -> None:
    keys = [f"debs/app/app-{i:02d}.deb" for i in range(25)]
    for k in reversed(keys):
        store.put(k, k.encode(), {"n": k[-6:-4]})
    for sibling in ("debs/app2/x.deb", "debs/apps", "debs/ap", "server/app.json"):
        store.put(sibling, b"sibling")

    pages = []
    token = None
    while True:
        page = store.list_page("debs/app/", token, page_size=10)
        pages.append([i.key for i in page.items])
        token = page.next_token
        if token is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [k for p in pages for k in p] == keys

    items = list(store.list("debs/app/", page_size=10))
    assert [i.key for i in items] == keys
    assert all(i.size == len(i.key) and i.generation for i in items)
    if store.lists_metadata:
        assert [i.metadata for i in items] == [{"n": k[-6:-4]} for k in keys]
    else:
        assert all(i.metadata == {} for i in items)

    assert [i.key for i in store.list("debs/app/", page_size=10, start_after="debs/app/app-09.deb")] == keys[10:]
    assert [i.key for i in store.list("debs/app/", page_size=3, start_after="debs/app/app-09")] == keys[9:]
    assert [i.key for i in store.list("debs/app")] == [*keys, "debs/app2/x.deb", "debs/apps"]
    assert [i.key for i in store.list("debs/")][:1] == ["debs/ap"]
    assert list(store.list("nothing/")) == []
    assert len(list(store.list(""))) == 29


def test_list_keys_gives_the_keys_of_list(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"debs/app/app-{i:02d}.deb" for i in range(12)]
    for k in [*keys, "debs/app2/x.deb", "debs/apps", "server/app.json"]:
        store.put(k, b"x", {"n": "1"})
    for prefix, after in (("debs/app/", None), ("debs/app", None), ("debs/", "debs/app/app-05.deb"), ("", None)):
        assert list(store.list_keys(prefix, after)) == [i.key for i in store.list(prefix, start_after=after)]
    if store.listing_reads_objects:
        # The point of list_keys: where a listing opens every object, list_keys opens none.
        monkeypatch.setattr(store, "stat", lambda key: pytest.fail(f"list_keys read {key}"))
        assert list(store.list_keys("debs/app/")) == keys


# -- deletes ----------------------------------------------------------------------------------


def test_delete(store: Store) -> None:
    v1 = store.put("k", b"1")
    store.delete("k", if_generation_match=v1.generation)
    with pytest.raises(NotFound):
        store.stat("k")
    store.put("k", b"2")
    store.delete("k")
    with pytest.raises(NotFound):
        store.get("k")


def test_delete_with_stale_generation_conflicts(store: Store, request: pytest.FixtureRequest) -> None:
    emulator_gap(request, store, {"gs"}, "fake-gcs-server 1.54 ignores ifGenerationMatch on deletes")
    stale = store.put("k", b"1")
    store.put("k", b"2")
    with pytest.raises(Conflict):
        store.delete("k", if_generation_match=stale.generation)
    assert read_all(store, "k") == b"2"


# -- keys and prefixes --------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a//b", "/a", "a\x00b", "a/../b", "a/", "", ".", "a\\b", "a\nb"])
def test_invalid_keys_are_refused(store: Store, bad: str) -> None:
    calls = [
        lambda: store.put(bad, b"x"),
        lambda: store.put(bad, io.BytesIO(b"x")),
        lambda: store.put(bad, b"x", if_absent=True),
        lambda: store.get(bad),
        lambda: store.stat(bad),
        lambda: store.open(bad),
        lambda: store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidKey) as e:
            call()
        assert e.value.key == bad
        assert "invalid object key" in str(e.value)
    assert list(store.list("")) == []


def test_url_prefix_keeps_keys_apart(store: Store, store_url: str) -> None:
    prefixed = open_store(store_url + "/pfx")
    try:
        prefixed.put("server/a.json", b"inside")
        store.put("server/a.json", b"outside")
        assert read_all(prefixed, "server/a.json") == b"inside"
        assert read_all(store, "server/a.json") == b"outside"
        assert [i.key for i in prefixed.list("")] == ["server/a.json"]
        assert [i.key for i in prefixed.list("server/", start_after="server/")] == ["server/a.json"]
        if scheme(store) != "file":  # in a bucket, the prefix is a plain key prefix
            assert read_all(store, "pfx/server/a.json") == b"inside"
            assert [i.key for i in store.list("")] == ["pfx/server/a.json", "server/a.json"]
        prefixed.delete("server/a.json")
        assert read_all(store, "server/a.json") == b"outside"
    finally:
        prefixed.close()


# -- failures of the store itself ------------------------------------------------------


@pytest.mark.slow  # GCS retries for five seconds before it gives up
@pytest.mark.parametrize("kind", CLOUD)
def test_unreachable_store_fails_fast(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "gcs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    scheme_ = {"gcs": "gs", "s3": "s3"}[kind]
    store = open_store(f"{scheme_}://no-such-bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as e:
        store.stat("server/a.json")
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert "no-such-bucket" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(StoreUnavailable):
        store.put("server/a.json", b"[]")


@pytest.mark.parametrize("kind", CLOUD)
def test_missing_bucket_is_unavailable(kind: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue({"gcs": "gcs_bucket", "s3": "s3_bucket"}[kind])  # emulator env
    store = open_store(f"{'gs' if kind == 'gcs' else 's3'}://push-missing-bucket")
    with pytest.raises(StoreUnavailable) as e:
        store.put("server/a.json", b"[]")
    assert "push-missing-bucket" in str(e.value)
    with pytest.raises(StoreUnavailable):
        list(store.list(""))


def _store_calls(store: Store) -> dict[str, Callable[[], object]]:
    return {
        "stat": lambda: store.stat("server/a.json"),
        "get": lambda: store.get("server/a.json"),
        "get-if-changed": lambda: store.get("server/a.json", if_generation_not_match="1"),
        "open": lambda: store.open("server/a.json").read(),
        "put": lambda: store.put("server/a.json", b"[]"),
        "put-if-absent": lambda: store.put("server/b.json", b"[]", if_absent=True),
        "list": lambda: list(store.list("server/")),
        "delete": lambda: store.delete("server/a.json"),
    }


class _NotAStore(http.server.BaseHTTPRequestHandler):
    """Answers every request with a web page, as a proxy or a wrong URL would."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("kind", [pytest.param("gcs", id="gcs", marks=pytest.mark.gcs),
                                  # botocore retries each call against it: seconds
                                  pytest.param("s3", id="s3", marks=[pytest.mark.s3, pytest.mark.slow])])
def test_an_endpoint_that_is_not_the_service_gives_only_push_errors(kind: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A web page where the API should answer made the client libraries' own exceptions
    # (a JSON decode error, a KeyError on ETag) escape the store.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAStore)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        if kind == "gcs":
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        else:
            for var, value in (("AWS_ENDPOINT_URL", url), ("AWS_ACCESS_KEY_ID", "testing"),
                               ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
                monkeypatch.setenv(var, value)
        store = open_store(f"{'gs' if kind == 'gcs' else 's3'}://some-bucket")
        for name, call in _store_calls(store).items():
            try:
                call()
            except StoreUnavailable as e:
                assert "server/" in str(e) and "\n" not in str(e), (name, e)
                continue
            except PushError as e:
                pytest.fail(f"{name}: {type(e).__name__}: {e}")
            # S3 parses the page as an empty listing and a delete of nothing: no harm.
            assert kind == "s3" and name in ("list", "delete"), name
        store.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _calls_as_nobody(root: Path) -> dict[str, str]:
    """The outcome of each store call on `root` by a user who may not read it (run in a
    forked child that drops root, since root reads everything)."""
    from push.store.local import LocalStore

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        outcome: dict[str, str] = {}
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            try:
                store = LocalStore(root)
            except PushError as e:
                outcome["open_store"] = f"{type(e).__name__}: {e}"
                return
            for name, call in _store_calls(store).items():
                try:
                    call()
                    outcome[name] = "ok"
                except PushError as e:
                    outcome[name] = f"{type(e).__name__}: {e}"
                except Exception as e:
                    outcome[name] = f"ESCAPED {type(e).__name__}: {e}"
        finally:
            os.write(writer, json.dumps(outcome).encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@pytest.mark.skipif(os.geteuid() != 0, reason="drops from root to nobody to lose the permission")
def test_a_local_store_it_may_not_read_gives_only_push_errors(tmp_path: Path) -> None:
    # os.scandir's PermissionError escaped a listing; a delete's lock file likewise.
    base = Path(tempfile.mkdtemp(prefix="push-unreadable-"))  # under /tmp: others may pass through
    try:
        base.chmod(0o755)
        root = base / "store"
        open_store(f"file://{root}").put("server/a.json", b"[]")
        root.chmod(0o700)
        outcome = _calls_as_nobody(root)
        assert set(outcome) == set(_store_calls(open_store(f"file://{root}")))
        for name, text in outcome.items():
            assert text.startswith("StoreUnavailable: "), (name, text)
            assert "server/" in text and "Permission denied" in text, (name, text)
        # A store whose very directory cannot be reached: refused at once, by name.
        assert _calls_as_nobody(tmp_path / "store") == {
            "open_store": f"StoreUnavailable: cannot use local store {tmp_path / 'store'}: Permission denied"}
    finally:
        shutil.rmtree(base)


def test_a_damaged_local_object_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put("server/a.json", b"[]")
    (tmp_path / "store" / "objects" / "server" / "a.json").write_bytes(b"not a header\n[]")
    with pytest.raises(CorruptObject) as e:
        store.stat("server/a.json")
    assert e.value.key == "server/a.json"


def test_get_reads_an_object_rewritten_meanwhile(store: Store) -> None:
    # A reader of a report rewritten every few ms (status/{server}.json) must never fail
    # because the object changed under it, and the generation must be that of the bytes.
    store.put("status/a.json", b"0")
    written: dict[str, bytes] = {}
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.wait(0.01):  # a hundred times faster than any agent reports
            n += 1
            data = str(n).encode()
            written[store.put("status/a.json", data).generation] = data

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        reads = 0
        while time.monotonic() < deadline and len(written) < 20:
            got = store.get("status/a.json")
            assert got is not None
            data, info = got
            reads += 1
            if info.generation in written:
                assert written[info.generation] == data
    finally:
        stop.set()
        writer.join()
    assert reads >= 10 and len(written) >= 20


# -- compare-and-swap across processes ---------------------------------------------------------


def _increment(url: str, times: int, start: multiprocessing.synchronize.Barrier,
               results: multiprocessing.Queue) -> None:
    store = open_store(url)
    conflicts = 0
    start.wait()  # all together, so the writers really do collide
    for _ in range(times):
        while True:
            data, info = store.get("counter")  # type: ignore[misc]
            try:
                store.put("counter", str(int(data) + 1).encode(), if_generation_match=info.generation)
                break
            except Conflict:
                conflicts += 1
    results.put(conflicts)


@pytest.mark.slow  # four spawned Python processes
def test_cross_process_cas_on_local_store(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    open_store(url).put("counter", b"0")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_increment, args=(url, 25, start, results)) for _ in range(4)]
    for w in workers:
        w.start()
    conflicts = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
        assert w.exitcode == 0
    data, _ = open_store(url).get("counter")  # type: ignore[misc]
    assert int(data) == 100
    print(f"{sum(conflicts)} conflicts retried")
