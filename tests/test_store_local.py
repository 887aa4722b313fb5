"""What only the local store does: the on-disk form, and in-kernel copies from real files."""

import hashlib
import io
import os

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
