"""What only the local store does: the on-disk form, in-kernel copies from real files, and
adopting a built file without copying it."""

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from push.errors import Conflict, NotFound, StoreUnavailable
from push.store import local
from push.store.local import LocalStore


def test_put_from_a_file_copies_from_its_position_to_the_end(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "pkg.deb"
    src.write_bytes(data)
    store = LocalStore(tmp_path / "bucket")
    with open(src, "rb") as f:
        f.seek(1000)
        info = store.put("debs/a/whole", f, {"k": "v"})
        assert f.tell() == len(data)  # the stream is consumed, as a chunked copy would leave it
    assert info.size == len(data) - 1000
    got, stat = store.get("debs/a/whole")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data[1000:]).digest()
    assert stat.metadata == {"k": "v"} and stat.size == len(data) - 1000


def test_put_from_a_stream_without_a_file(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    store.put("x", io.BytesIO(b"abc" * 1000))
    assert store.get("x")[0] == b"abc" * 1000


def test_object_file_is_one_header_line_then_the_contents(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    store.put("server/s1.json", b"[]\n", {"a": "b"})
    raw = (tmp_path / "bucket" / "objects" / "server" / "s1.json").read_bytes()
    header, _, body = raw.partition(b"\n")
    assert b'"metadata": {"a": "b"}' in header and body == b"[]\n"


def _built(store: LocalStore, data: bytes, name: str = "built.deb") -> Path:
    path = store.adoption_dir() / name
    path.write_bytes(data)
    return path


def test_adoption_moves_the_file_and_pads_the_header_to_whole_blocks(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    data = os.urandom(5 * 1024 * 1024 + 3)
    built = _built(store, data)
    inode = built.stat().st_ino
    store.put_file("debs/a/a.deb", built, {"sha256": hashlib.sha256(data).hexdigest()}, if_absent=True, adopt=True)
    obj = tmp_path / "bucket" / "objects" / "debs" / "a" / "a.deb"
    assert not built.exists()
    assert obj.stat().st_ino == inode  # the same file: renamed, never copied
    raw = obj.read_bytes()
    header, _, body = raw.partition(b"\n")
    block = os.statvfs(obj).f_bsize
    assert (len(header) + 1) % block == 0 and header.endswith(b" ")
    assert json.loads(header)["metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert body == data
    assert store.stat("debs/a/a.deb").size == len(data)
    assert os.listdir(tmp_path / "bucket" / ".tmp") == []


def test_adoption_copies_where_the_file_system_cannot_insert_a_range(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_insert_range", lambda fd, length: False)  # tmpfs, btrfs: EOPNOTSUPP
    store = LocalStore(tmp_path / "bucket")
    data = os.urandom(1024 * 1024)
    built = _built(store, data)
    store.put_file("debs/a/a.deb", built, {"k": "v"}, if_absent=True, adopt=True)
    assert store.get("debs/a/a.deb") is not None and store.get("debs/a/a.deb")[0] == data
    assert not built.exists() and os.listdir(tmp_path / "bucket" / ".tmp") == []


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second file system (/dev/shm)")
def test_adoption_copies_a_file_from_another_file_system(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    data = os.urandom(1024 * 1024)
    other = Path(f"/dev/shm/push-test-{os.getpid()}.deb")
    other.write_bytes(data)
    try:
        store.put_file("debs/a/a.deb", other, {"k": "v"}, if_absent=True, adopt=True)
    finally:
        other.unlink(missing_ok=True)
    assert store.get("debs/a/a.deb")[0] == data


def test_adoption_refused_by_a_precondition_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    store.put("debs/a/a.deb", b"first", {"n": "1"}, if_absent=True)
    built = _built(store, os.urandom(100_000))
    with pytest.raises(Conflict):
        store.put_file("debs/a/a.deb", built, {"n": "2"}, if_absent=True, adopt=True)
    assert store.get("debs/a/a.deb")[0] == b"first"
    assert not built.exists() and os.listdir(tmp_path / "bucket" / ".tmp") == []


def test_adoption_that_fails_before_the_rename_shows_no_object(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "bucket")
    built = _built(store, os.urandom(100_000))

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(local.os, "fsync", failing_fsync)
    with pytest.raises(StoreUnavailable, match="Input/output error"):
        store.put_file("debs/a/a.deb", built, {"k": "v"}, if_absent=True, adopt=True)
    monkeypatch.undo()
    with pytest.raises(NotFound):
        store.stat("debs/a/a.deb")
    assert os.listdir(tmp_path / "bucket" / ".tmp") == []
    assert list(store.list("debs/")) == []
