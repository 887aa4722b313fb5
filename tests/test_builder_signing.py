"""`push release --signing-key`: real releases, signed by the builder, verified from what the store kept.

Into each kind of store (local, and the GCS and S3 emulators on 127.0.0.1), so the signature
and the metadata it covers are shown to survive each backend's round trip.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from buildapp import make_repo, push
from push import signing
from push.catalog import Catalog
from push.release import Release, ReleaseInfo
from push.signing import Keyring, PublicKey, Untrusted
from push.store import Store, open_store

# Non-ASCII on purpose: S3 carries it RFC 2047-encoded, and the signature must survive that.
NOTE = "Grüße aus Zürich: sign the release"


@pytest.fixture
def release_key(tmp_path: Path) -> tuple[Path, PublicKey]:
    _, key_path, pub_path = signing.write_key_pair(tmp_path / "keys", "release-1")
    return key_path, PublicKey.load(pub_path)


def stored_info(store: Store, name: str) -> tuple[ReleaseInfo, bytes]:
    key = Release.parse(name).key
    info = store.stat(key)
    with store.open(key) as reader:
        data = b"".join(reader)
    return ReleaseInfo.from_metadata(info.key, info.metadata), data


def test_signed_release_verifies_from_the_stored_metadata(store_url: str, tmp_path: Path,
                                                          release_key: tuple[Path, PublicKey]) -> None:
    key_path, public = release_key
    repo = make_repo(tmp_path / "repo")
    built = push("release", "hello", "--root", "stage", "--note", NOTE, "--no-lintian", "--signing-key", key_path,
                 "--store", store_url, cwd=repo)
    assert built.code == 0, built.err
    assert f"push: signed with release key {public.key_id}" in built.err
    store = open_store(store_url)
    try:
        info, data = stored_info(store, built.last_line)
        raw = store.stat(info.release.key).metadata
    finally:
        store.close()
    statement = signing.verify_release(info, Keyring([public]))
    assert (statement.release, statement.note, statement.package) == (built.last_line, NOTE, "push-hello")
    signing.check_release_file(statement, hashlib.sha256(data).hexdigest(), len(data))
    assert raw["keyid"] == public.key_id and len(raw["signature"]) == 88
    assert signing.metadata_size(raw) <= signing.METADATA_LIMIT
    # Nothing of the key but its id reaches the bucket: not its path, not its material.
    material = key_path.read_text().splitlines()[1]
    for value in raw.values():
        assert str(key_path.parent) not in value and material not in value and "BEGIN" not in value
    # Readers that know nothing of signatures still list the release as before.
    listed = push("releases", "hello", "--json", "--store", store_url)
    assert listed.code == 0 and built.last_line in listed.out


def test_a_release_rewritten_without_the_key_is_refused(tmp_path: Path, release_key: tuple[Path, PublicKey]) -> None:
    """Someone with write access to the bucket but not the key replaces the .deb and its metadata
    (sha256 and size made to match): the signature no longer holds."""
    key_path, public = release_key
    repo = make_repo(tmp_path / "repo")
    url = f"file://{tmp_path / 'store'}"
    built = push("release", "hello", "--root", "stage", "--note", "genuine", "--no-lintian",
                 "--signing-key", key_path, "--store", url, cwd=repo)
    assert built.code == 0, built.err
    store = open_store(url)
    info, _ = stored_info(store, built.last_line)
    evil = b"!<arch>\nnot the release\n"
    md = {**info.to_metadata(), "sha256": hashlib.sha256(evil).hexdigest(), "size": str(len(evil))}
    store.delete(info.release.key)
    store.put(info.release.key, evil, md)
    replaced, data = stored_info(store, built.last_line)
    assert data == evil and replaced.sha256 == hashlib.sha256(evil).hexdigest()  # intact as far as sha256 goes
    with pytest.raises(Untrusted) as exc:
        signing.verify_release(replaced, Keyring([public]))
    assert exc.value.reason == "bad-signature"
    # Only the .deb swapped, the metadata left alone: the signed statement names the genuine file.
    store.delete(info.release.key)
    store.put(info.release.key, evil, info.to_metadata())
    kept, data = stored_info(store, built.last_line)
    statement = signing.verify_release(kept, Keyring([public]))
    with pytest.raises(Untrusted) as exc2:
        signing.check_release_file(statement, hashlib.sha256(data).hexdigest(), len(data))
    assert exc2.value.reason == "digest-mismatch"
    store.close()


def test_without_a_key_a_release_is_unsigned_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       release_key: tuple[Path, PublicKey]) -> None:
    monkeypatch.setenv("PUSH_SIGNING_KEY", "")  # set but empty counts as unset
    repo = make_repo(tmp_path / "repo")
    url = f"file://{tmp_path / 'store'}"
    built = push("release", "hello", "--root", "stage", "--note", "unsigned", "--no-lintian", "--store", url, cwd=repo)
    assert built.code == 0, built.err
    assert "signed" not in built.err
    store = open_store(url)
    info, _ = stored_info(store, built.last_line)
    assert "signature" not in info.extra and "keyid" not in info.extra
    with pytest.raises(Untrusted) as exc:
        signing.verify_release(info, Keyring([release_key[1]]))
    assert exc.value.reason == "unsigned"
    store.close()


def test_the_key_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               release_key: tuple[Path, PublicKey]) -> None:
    monkeypatch.setenv("PUSH_SIGNING_KEY", str(release_key[0]))
    repo = make_repo(tmp_path / "repo")
    url = f"file://{tmp_path / 'store'}"
    built = push("release", "hello", "--root", "stage", "--note", "from env", "--no-lintian", "--store", url, cwd=repo)
    assert built.code == 0, built.err
    [info] = Catalog(open_store(url)).releases("hello")
    assert signing.verify_release(info, Keyring([release_key[1]])).release == built.last_line


@pytest.mark.parametrize(("which", "mode", "fragment"), [
    ("pub", 0o644, "is a public key: signing needs the private key"),
    ("key", 0o644, "too open"),
    ("missing", 0o600, "cannot read private key"),
])
def test_a_bad_key_fails_before_the_build_and_uploads_nothing(tmp_path: Path, release_key: tuple[Path, PublicKey],
                                                              which: str, mode: int, fragment: str) -> None:
    key_path = release_key[0]
    path = {"pub": key_path.with_suffix(".pub"), "key": key_path, "missing": key_path.with_name("nope.key")}[which]
    if path.exists():
        path.chmod(mode)
    repo = make_repo(tmp_path / "repo")
    store = tmp_path / "store"
    result = push("release", "hello", "--root", "stage", "--note", "x", "--no-lintian", "--signing-key", path,
                  "--store", store, cwd=repo)
    assert result.code == 2, result.err
    assert result.err.startswith("push: error: ") and fragment in result.err and result.err.count("\n") == 1
    assert "BEGIN" not in result.err
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*") if p.parent.name != ".locks")
