"""push.signing: key files, the two statements, and every way verification refuses.

Pure unit tests (no store): the builder's signed releases are in test_builder_signing.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buildapp import push
from push import layout, signing
from push.errors import InvalidRelease, PushError
from push.exits import exit_code
from push.release import Release, ReleaseInfo
from push.signing import (
    InvalidSigningKey,
    Keyring,
    PublicKey,
    ReleaseStatement,
    Seen,
    ServerFileStatement,
    SignedServerFile,
    SigningKey,
    Untrusted,
)


def with_extra(info: ReleaseInfo, **extra: str) -> ReleaseInfo:
    return dataclasses.replace(info, extra={**info.extra, **extra})


NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
HASH = "87ad69c70978556a84e23078f772b078200956d6"
SHA = "a" * 64
FILE = b'[\n  "hello/hello:alice@build-1:2026-11-27T10:15:02Z:87ad69c70978556a84e23078f772b078200956d6.deb"\n]\n'


def fixed_key(seed: int = 1, name: str = "fixed") -> SigningKey:
    """A key from a fixed seed: Ed25519 is deterministic, so its signatures are fixed too."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32), name)


def release_info(**changes: object) -> ReleaseInfo:
    info = ReleaseInfo(
        release=Release(app="hello", user="alice", host="build-1", time=datetime(2026, 11, 27, 10, 15, 2, tzinfo=UTC),
                        hash=HASH),
        dirty=False, note="Say hello in French", services=("hello.service",), sha256=SHA, size=1234,
        extra={"package": "push-hello", "version": "1.20261127.101502.000001+g87ad69c", "architecture": "all"},
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def stored(info: ReleaseInfo) -> ReleaseInfo:
    """What a verifier reads back: the metadata through its string form, as every store keeps it."""
    return ReleaseInfo.from_metadata(info.release.key, info.to_metadata())


def assert_untrusted(exc: pytest.ExceptionInfo[Untrusted], reason: str, *fragments: str) -> None:
    assert exc.value.reason == reason, (exc.value.reason, str(exc.value))
    for fragment in fragments:
        assert fragment in str(exc.value), str(exc.value)


# -- key files -----------------------------------------------------------------------------


def test_generate_writes_a_private_key_0600_and_a_public_key_0644(tmp_path: Path) -> None:
    key, key_path, pub_path = signing.write_key_pair(tmp_path / "keys", "release-1")
    assert (key_path, pub_path) == (tmp_path / "keys/release-1.key", tmp_path / "keys/release-1.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, unencrypted
    line = pub_path.read_text()
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" release-1\n") and line.count("\n") == 1
    raw = key.public.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:16]
    loaded, public = SigningKey.load(key_path), PublicKey.load(pub_path)
    assert loaded.key_id == public.key_id == key.key_id
    assert public.name == loaded.name == "release-1"
    assert public.verifies(loaded.sign(b"x"), b"x")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["release-1.key", "release-1.pub"]


def test_the_private_key_is_created_0600_whatever_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created with mode 0600 by the open() that makes it: never readable by others, even for an instant."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)
    try:
        _, key_path, _ = signing.write_key_pair(tmp_path, "k")
    finally:
        os.umask(old)
    [(_, flags, mode)] = [o for o in opened if "k.key" in o[0]]
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", ["k.key", "k.pub"])
def test_generate_never_overwrites_a_key(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")
    with pytest.raises(InvalidSigningKey, match="exists: refusing to overwrite"):
        signing.write_key_pair(tmp_path, "k")
    assert (tmp_path / existing).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # no temp file, no half pair


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up", "with space"])
def test_generate_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidSigningKey, match="invalid key name"):
        signing.write_key_pair(tmp_path, name)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[SigningKey, Path, Path]:
    return signing.write_key_pair(tmp_path / "keys", "k")


def test_signing_refuses_a_public_key(pair: tuple[SigningKey, Path, Path]) -> None:
    with pytest.raises(InvalidSigningKey, match=r"is a public key: signing needs the private key"):
        SigningKey.load(pair[2])


def test_trusting_refuses_a_private_key(pair: tuple[SigningKey, Path, Path]) -> None:
    with pytest.raises(InvalidSigningKey, match="is a private key: give its public key"):
        PublicKey.load(pair[1])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o610])
def test_a_private_key_others_can_access_is_refused(pair: tuple[SigningKey, Path, Path], mode: int) -> None:
    pair[1].chmod(mode)
    with pytest.raises(InvalidSigningKey, match=rf"permissions {mode:04o} .* too open.*chmod 600"):
        SigningKey.load(pair[1])
    pair[1].chmod(0o400)  # read-only for its owner is fine
    assert SigningKey.load(pair[1]).key_id == pair[0].key_id


def test_unusable_key_files_are_refused_without_showing_their_contents(tmp_path: Path) -> None:
    def private(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    cases = {
        private(tmp_path / "rsa.key", rsa_pem): "is not an Ed25519 key",
        private(tmp_path / "enc.key", encrypted): "is an encrypted private key",
        private(tmp_path / "junk.key", b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"):
            r"is not a PEM \(PKCS8\) private key",
        private(tmp_path / "empty.key", b""): r"is not a PEM \(PKCS8\) private key",
        tmp_path / "missing.key": "cannot read private key",
        tmp_path: "cannot read private key .*: Is a directory",
    }
    for path, message in cases.items():
        with pytest.raises(InvalidSigningKey, match=message) as exc:
            SigningKey.load(path)
        text = str(exc.value)
        assert "MII" not in text and "BEGIN" not in text, text  # no PEM body, no header in the error
        assert isinstance(exc.value, PushError) and exit_code(exc.value) == 2


def test_public_keys_in_text_forms(pair: tuple[SigningKey, Path, Path]) -> None:
    key = pair[0]
    pem = key.public.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert PublicKey.from_text(pem.decode()).key_id == key.key_id
    assert PublicKey.from_text(key.public.to_text()) == key.public
    assert PublicKey.from_text(key.public.to_text().split()[0] + " " + key.public.to_text().split()[1]).name == ""
    rsa_line = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    for text, message in ((rsa_line, "is not a public key"), ("ssh-ed25519 AAAAnotakey", "not a readable public key"),
                          ("hello", "is not a public key"), ("", "is not a public key")):
        with pytest.raises(InvalidSigningKey, match=message):
            PublicKey.from_text(text)


def test_no_key_material_in_reprs(pair: tuple[SigningKey, Path, Path]) -> None:
    key = pair[0]
    body = pair[1].read_text().splitlines()[1]
    for text in (repr(key), str(key), repr(key.public), repr(Keyring([key.public]))):
        assert body not in text and key.key_id in text


def test_keys_commands(tmp_path: Path) -> None:
    made = push("keys", "generate", "deploy-1", "--dir", tmp_path / "keys")
    assert made.code == 0, made.err
    key_id = made.out.split()[2]
    assert len(key_id) == 16 and str(tmp_path / "keys/deploy-1.key") in made.out
    for name in ("deploy-1.key", "deploy-1.pub"):
        shown = push("keys", "show", tmp_path / "keys" / name)
        assert shown.code == 0, shown.err
        assert f"key id:     {key_id}\n" in shown.out and "ssh-ed25519 AAAA" in shown.out
    again = push("keys", "generate", "deploy-1", "--dir", tmp_path / "keys")
    assert again.code == 2 and again.err.startswith("push: error: ") and "refusing to overwrite" in again.err
    (tmp_path / "keys/deploy-1.key").chmod(0o644)
    loose = push("keys", "show", tmp_path / "keys/deploy-1.key")
    assert loose.code == 2 and "too open" in loose.err


def test_keys_go_to_the_config_directory_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    made = push("keys", "generate", "release-1")
    assert made.code == 0, made.err
    assert (tmp_path / "config/push/keys/release-1.key").is_file()
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert signing.default_key_dir() == Path.home() / ".config/push/keys"


def test_revoked_key_ids_must_be_key_ids() -> None:
    with pytest.raises(InvalidSigningKey, match="not 16 hex digits"):
        Keyring([], revoked=["deploy-1"])


# -- release statements --------------------------------------------------------------------


def test_release_statement_has_one_fixed_encoding() -> None:
    statement = ReleaseStatement.from_info(release_info(note="Grüße, \"quoted\""))
    assert statement.encode() == (
        b'{"app":"hello","architecture":"all","built":"2026-11-27T10:15:02Z","dirty":false,'
        b'"note":"Gr\xc3\xbc\xc3\x9fe, \\"quoted\\"","package":"push-hello",'
        b'"release":"hello/hello:alice@build-1:2026-11-27T10:15:02Z:87ad69c70978556a84e23078f772b078200956d6.deb",'
        b'"services":["hello.service"],"sha256":"' + SHA.encode() + b'","size":1234,"type":"push.release/v1",'
        b'"version":"1.20261127.101502.000001+g87ad69c"}'
    )
    # Ed25519 is deterministic: a fixed key and statement give a fixed signature, across versions of Push.
    signed = signing.sign_release(release_info(), fixed_key())
    assert signed.extra["keyid"] == fixed_key().key_id == "34750f98bd59fcfc"
    assert signed.extra["signature"] == (
        "z1iXKiijIgl6CuWbqg6GXpon1Ae/Eu5Ne6hwe5cz9huLTs3mHpbc53mjZGaVyBtMwIuTUbF6LvOhBjHfSs2DAQ==")


def test_signed_release_round_trips_through_its_metadata() -> None:
    key = fixed_key()
    signed = signing.sign_release(release_info(), key)
    md = signed.to_metadata()
    assert set(md) - set(release_info().to_metadata()) == {"signature", "keyid"}
    assert len(base64.b64decode(md["signature"])) == 64
    statement = signing.verify_release(stored(signed), Keyring([key.public]))
    assert statement == ReleaseStatement.from_info(release_info())
    signing.check_release_file(statement, SHA, 1234)


@pytest.mark.parametrize(("field", "value"), [
    ("note", "Say hello in German"), ("dirty", "true"), ("services", "hello.service sshd.service"),
    ("sha256", "b" * 64), ("size", "1235"), ("package", "push-other"), ("version", "1.20991231.000000.0+g0"),
    ("architecture", "amd64"),
])
def test_changing_any_signed_field_breaks_the_signature(field: str, value: str) -> None:
    key = fixed_key()
    md = signing.sign_release(release_info(), key).to_metadata()
    md[field] = value
    tampered = ReleaseInfo.from_metadata(release_info().release.key, md)
    with pytest.raises(Untrusted) as exc:
        signing.verify_release(tampered, Keyring([key.public]))
    assert_untrusted(exc, "bad-signature", f"signature by key {key.key_id} does not match")


def test_a_signature_moved_to_another_release_does_not_hold() -> None:
    """Mix-and-match of releases: the name is signed, so a signature copied to another release fails."""
    key = fixed_key()
    md = signing.sign_release(release_info(), key).to_metadata()
    other = Release(app="hello", user="mallory", host="evil", time=NOW, hash="0" * 40)
    with pytest.raises(Untrusted) as exc:
        signing.verify_release(ReleaseInfo.from_metadata(other.key, md), Keyring([key.public]))
    assert_untrusted(exc, "bad-signature", other.name)


def test_release_refusals_and_their_reasons() -> None:
    key, other = fixed_key(1), fixed_key(2, "other")
    signed = stored(signing.sign_release(release_info(), key))
    cases: list[tuple[ReleaseInfo, Keyring, str, str]] = [
        (stored(release_info()), Keyring([key.public]), "unsigned", "is not signed"),
        (signed, Keyring([other.public]), "unknown-key",
         f"signed by key {key.key_id}, which is not trusted (trusted: {other.key_id})"),
        (signed, Keyring([], revoked=[key.key_id]), "revoked-key", "which is revoked"),
        (signed, Keyring([key.public, other.public], revoked=[key.key_id]), "revoked-key", "which is revoked"),
        (with_extra(signed, signature="not base64!"), Keyring([key.public]), "malformed", "is not base64"),
        (with_extra(signed, signature=base64.b64encode(b"x" * 63).decode()), Keyring([key.public]), "malformed",
         "63 bytes"),
        (with_extra(signed, keyid="ABC"), Keyring([key.public]), "malformed", "key id 'ABC'"),
        (dataclasses.replace(signed, extra={k: v for k, v in signed.extra.items() if k != "package"}),
         Keyring([key.public]), "bad-signature", "no package in its metadata"),
    ]
    for info, keyring, reason, fragment in cases:
        with pytest.raises(Untrusted) as exc:
            signing.verify_release(info, keyring)
        assert_untrusted(exc, reason, fragment)
        assert str(exc.value).startswith(f"release {info.name}")
    # Rotation: a keyring holding the old and the new key accepts releases signed by either.
    both = Keyring([key.public, other.public])
    signing.verify_release(signed, both)
    signing.verify_release(stored(signing.sign_release(release_info(), other)), both)


def test_a_downloaded_deb_must_be_the_signed_one() -> None:
    statement = signing.verify_release(stored(signing.sign_release(release_info(), fixed_key())),
                                       Keyring([fixed_key().public]))
    for sha256, size in (("b" * 64, 1234), (SHA, 1233)):
        with pytest.raises(Untrusted) as exc:
            signing.check_release_file(statement, sha256, size)
        assert_untrusted(exc, "digest-mismatch", "is not the signed one")


def test_a_signature_of_one_kind_is_never_taken_for_the_other() -> None:
    """Both statements carry their type: a server-file signature pasted onto a release fails."""
    key = fixed_key()
    server_sig = signing.sign_server_file("web-1", FILE, key, None, NOW).signature
    info = with_extra(release_info(), signature=base64.b64encode(server_sig).decode(), keyid=key.key_id)
    with pytest.raises(Untrusted) as exc:
        signing.verify_release(stored(info), Keyring([key.public]))
    assert_untrusted(exc, "bad-signature")
    release_sig = base64.b64decode(signing.sign_release(release_info(), key).extra["signature"])
    forged = json.loads(signing.sign_server_file("web-1", FILE, key, None, NOW).to_bytes())
    forged["signature"] = base64.b64encode(release_sig).decode()
    with pytest.raises(Untrusted) as exc2:
        signing.verify_server_file("web-1", FILE, json.dumps(forged).encode(), Keyring([key.public]), now=NOW)
    assert_untrusted(exc2, "bad-signature")


def test_signed_metadata_stays_within_s3s_2_kb() -> None:
    key = fixed_key()
    fits = signing.sign_release(release_info(note="n" * 1300), key)
    assert signing.metadata_size(fits.to_metadata()) <= signing.METADATA_LIMIT
    with pytest.raises(InvalidRelease, match="over the 2048 that S3 allows: shorten the note"):
        signing.sign_release(release_info(note="n" * 1700), key)
    # Non-ASCII travels RFC 2047-encoded on S3, a third larger: counted so.
    assert signing.metadata_size({"note": "é" * 300}) == 4 + 12 + 4 * 200
    signing.sign_release(release_info(note="n" * 1400), key)
    with pytest.raises(InvalidRelease):  # the same 1,400 bytes of UTF-8, but 1,880 once encoded
        signing.sign_release(release_info(note="é" * 700), key)


def test_a_release_without_package_metadata_cannot_be_signed() -> None:
    with pytest.raises(InvalidRelease, match="no package, version, architecture"):
        signing.sign_release(release_info(extra={}), fixed_key())


# -- server-file statements ----------------------------------------------------------------


def test_server_file_statement_has_one_fixed_encoding_and_storage_form() -> None:
    signed = signing.sign_server_file("web-1", FILE, fixed_key(), None, NOW)
    st = signed.statement
    assert st.version == 1796126400000  # NOW in Unix milliseconds: there was no previous statement
    assert st.encode() == (
        b'{"expires":"2026-12-02T12:00:00Z","issued":"2026-12-01T12:00:00Z","server":"web-1",'
        b'"sha256":"' + hashlib.sha256(FILE).hexdigest().encode() + b'","type":"push.server/v1",'
        b'"version":1796126400000}'
    )
    doc = json.loads(signed.to_bytes())
    assert doc == {"keyid": "34750f98bd59fcfc", "signature": base64.b64encode(signed.signature).decode(),
                   "statement": json.loads(st.encode())}
    assert SignedServerFile.parse("web-1", signed.to_bytes()) == signed
    assert layout.server_signature_key("web-1") == "signatures/server/web-1.json"


def test_server_file_round_trip() -> None:
    key = fixed_key()
    signed = signing.sign_server_file("web-1", FILE, key, None, NOW)
    got = signing.verify_server_file("web-1", FILE, signed.to_bytes(), Keyring([key.public]),
                                     seen=Seen(signed.statement.version, key.key_id), now=NOW + timedelta(hours=23))
    assert got == signed
    assert Seen.of(got) == Seen.from_json(json.loads(json.dumps(Seen.of(got).to_json())))


def _edit(signed: SignedServerFile, **statement: object) -> bytes:
    doc = json.loads(signed.to_bytes())
    doc["statement"].update(statement)
    return json.dumps(doc).encode()


def test_server_file_refusals_and_their_reasons() -> None:
    key, other = fixed_key(1), fixed_key(2, "other")
    trusted = Keyring([key.public])
    signed = signing.sign_server_file("web-1", FILE, key, None, NOW)
    newer = signing.sign_server_file("web-1", FILE, key, signed.statement, NOW + timedelta(minutes=1))
    for_web2 = signing.sign_server_file("web-2", FILE, key, None, NOW)
    later = NOW + timedelta(hours=1)
    cases: list[tuple[str, bytes, bytes | None, Keyring, Seen | None, datetime, str, str]] = [
        ("web-1", FILE, None, trusted, None, later, "unsigned", "signatures/server/web-1.json is missing"),
        ("web-1", FILE, b"{", trusted, None, later, "malformed", "not valid JSON"),
        ("web-1", FILE, b"[]", trusted, None, later, "malformed", "not a signed statement"),
        ("web-1", FILE, _edit(signed, extra="x"), trusted, None, later, "malformed", "fields"),
        ("web-1", FILE, _edit(signed, type="push.release/v1"), trusted, None, later, "malformed", "type"),
        ("web-1", FILE, _edit(signed, version=True), trusted, None, later, "malformed", "version"),
        ("web-1", FILE, _edit(signed, expires="tomorrow"), trusted, None, later, "malformed", "expires"),
        ("web-1", FILE, signed.to_bytes(), Keyring([other.public]), None, later, "unknown-key", "not trusted"),
        ("web-1", FILE, signed.to_bytes(), Keyring([key.public], [key.key_id]), None, later, "revoked-key",
         "revoked"),
        ("web-1", FILE, _edit(signed, version=signed.statement.version + 10**6), trusted, None, later,
         "bad-signature", "does not match"),
        ("web-1", FILE, _edit(signed, expires="2030-01-01T00:00:00Z"), trusted, None, later, "bad-signature",
         "does not match"),
        ("web-1", FILE, for_web2.to_bytes(), trusted, None, later, "wrong-server", "is for server 'web-2'"),
        ("web-1", FILE + b" ", signed.to_bytes(), trusted, None, later, "digest-mismatch",
         "server/web-1.json was changed after it was signed"),
        ("web-1", FILE, signed.to_bytes(), trusted, Seen.of(newer), later, "rollback",
         f"is version {signed.statement.version}, older than version {newer.statement.version}"),
        ("web-1", FILE, signed.to_bytes(), trusted, None, NOW + timedelta(days=1), "expired",
         "expired at 2026-12-02T12:00:00Z"),
    ]
    for server, data, stored_statement, keyring, seen, now, reason, fragment in cases:
        with pytest.raises(Untrusted) as exc:
            signing.verify_server_file(server, data, stored_statement, keyring, seen=seen, now=now)
        assert_untrusted(exc, reason, fragment)


def test_an_equal_version_is_no_rollback_and_a_revoked_signers_version_is_forgotten() -> None:
    """An agent re-reads the statement it already follows; and after a stolen key signed a version
    far ahead (fast-forward) and was revoked, the legitimate versions are accepted again."""
    key, stolen = fixed_key(1), fixed_key(2, "stolen")
    signed = signing.sign_server_file("web-1", FILE, key, None, NOW)
    signing.verify_server_file("web-1", FILE, signed.to_bytes(), Keyring([key.public]), seen=Seen.of(signed), now=NOW)
    ahead = Seen(signed.statement.version + 10**9, stolen.key_id)
    with pytest.raises(Untrusted, match="older than"):
        signing.verify_server_file("web-1", FILE, signed.to_bytes(), Keyring([key.public, stolen.public]),
                                   seen=ahead, now=NOW)
    signing.verify_server_file("web-1", FILE, signed.to_bytes(), Keyring([key.public], revoked=[stolen.key_id]),
                               seen=ahead, now=NOW)


def test_versions_only_grow() -> None:
    first = signing.sign_server_file("web-1", FILE, fixed_key(), None, NOW).statement
    # Within one second, and from a writer whose clock is an hour behind: still above the previous.
    again = signing.sign_server_file("web-1", FILE, fixed_key(), first, NOW).statement
    behind = signing.sign_server_file("web-1", FILE, fixed_key(), again, NOW - timedelta(hours=1)).statement
    assert first.version < again.version < behind.version
    # A writer that finds no previous statement (deleted, or a new push server) starts at its clock,
    # above every version signed earlier.
    fresh = signing.sign_server_file("web-1", FILE, fixed_key(), None, NOW + timedelta(seconds=1)).statement
    assert fresh.version > behind.version
    # Two writers that read the same previous statement both sign above it.
    a = signing.next_version(first, NOW + timedelta(seconds=5))
    b = signing.next_version(first, NOW - timedelta(seconds=5))
    assert min(a, b) > first.version


def test_when_a_writer_must_sign_again() -> None:
    key, new_key = fixed_key(1), fixed_key(2, "new")
    signed = signing.sign_server_file("web-1", FILE, key, None, NOW, lifetime=timedelta(hours=24))
    assert signed.statement.resign_at == NOW + timedelta(hours=12)
    assert signing.needs_signing(None, FILE, key, NOW)
    assert not signing.needs_signing(signed, FILE, key, NOW + timedelta(hours=11, minutes=59))
    assert signing.needs_signing(signed, FILE, key, NOW + timedelta(hours=12))  # half-life: before any expiry
    assert signing.needs_signing(signed, FILE + b"\n", key, NOW)  # the file changed
    assert signing.needs_signing(signed, FILE, new_key, NOW)  # rotated to a new deploy key


def test_statements_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="expire after"):
        ServerFileStatement("web-1", SHA, 1, NOW, NOW)
    with pytest.raises(ValueError, match="version"):
        ServerFileStatement("web-1", SHA, 0, NOW, NOW + timedelta(hours=1))
    with pytest.raises(ValueError, match="sha256"):
        ServerFileStatement("web-1", "A" * 64, 1, NOW, NOW + timedelta(hours=1))
    with pytest.raises(PushError, match="invalid server name"):
        ServerFileStatement("../etc", SHA, 1, NOW, NOW + timedelta(hours=1))
