"""Signing keys, signed statements, and their verification: who made a release, who chose it.

Two kinds of statement, each a small typed class with one canonical byte encoding: a
release statement (signed by a release key, by `push release`) and a server-file statement
(signed by a deploy key, by every writer of server/{name}.json). Verifiers (pulld) check
them against a Keyring of trusted public keys and revoked key ids. docs/trust.md has the
design and the threat model; the crypto is Ed25519 from the `cryptography` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from push.errors import InvalidRelease, InvalidSigningKey, PushError, Untrusted
from push.health import HEALTH_METADATA
from push.layout import server_file_key, server_signature_key
from push.names import check_server
from push.release import ReleaseInfo
from push.timestamps import RELEASE_FORMAT

__all__ = [
    "DEFAULT_LIFETIME",
    "KEYID_METADATA",
    "METADATA_LIMIT",
    "SIGNATURE_METADATA",
    "InvalidSigningKey",
    "Keyring",
    "PublicKey",
    "ReleaseStatement",
    "Seen",
    "ServerFileStatement",
    "SignedServerFile",
    "SigningKey",
    "Untrusted",
    "canonical_json",
    "check_release_file",
    "default_key_dir",
    "key_of_file",
    "metadata_size",
    "needs_signing",
    "next_version",
    "release_signature",
    "sign_release",
    "sign_server_file",
    "verify_release",
    "verify_server_file",
    "write_key_pair",
]

# Release object metadata keys holding the signature (base64 of 64 bytes) and the key id.
SIGNATURE_METADATA = "signature"
KEYID_METADATA = "keyid"
# S3 allows 2 KB of user metadata per object, keys and values together (GCS allows 8 KiB):
# the smaller limit decides, since a release may be copied from one bucket to another.
METADATA_LIMIT = 2048
# How long a server-file statement is valid: an agent notices a frozen bucket after at most
# this long. The push server re-signs at half-life (see needs_signing).
DEFAULT_LIFETIME = timedelta(days=1)

KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_MAX_VERSION = 2**53  # exact in every JSON reader
_MAX_KEY_FILE = 64 * 1024


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The one byte encoding of a statement: sorted keys, no spaces, UTF-8, no floats."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime(RELEASE_FORMAT)


def _parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a UTC time YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, RELEASE_FORMAT).replace(tzinfo=UTC)


def _whole_seconds(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("statement times must be timezone-aware")
    return t.astimezone(UTC).replace(microsecond=0)


# -- keys ----------------------------------------------------------------------------------


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_key_name(name: str) -> str:
    if not KEY_NAME_RE.fullmatch(name) or len(name) > 100:
        raise InvalidSigningKey(f"invalid key name {name!r}: "
                                "use letters, digits and . _ - (starting with a letter or digit)")
    return name


def default_key_dir() -> Path:
    """$XDG_CONFIG_HOME/push/keys, else ~/.config/push/keys."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "push" / "keys"


class PublicKey:
    """An Ed25519 public key, as trusted by a verifier. Text form: an OpenSSH line,
    `ssh-ed25519 AAAA... NAME`, one line that pastes anywhere."""

    def __init__(self, key: Ed25519PublicKey, name: str = "") -> None:
        self.key = key
        self.name = name
        # The key id: the first 16 hex digits of the sha256 of the raw 32-byte key.
        self.key_id = hashlib.sha256(_raw(key)).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r}, name={self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and _raw(self.key) == _raw(other.key)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def to_text(self) -> str:
        line = self.key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return f"{line} {self.name}\n" if self.name else f"{line}\n"

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        try:
            self.key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_text(cls, text: str, source: str = "public key") -> PublicKey:
        """Parse an OpenSSH `ssh-ed25519` line or a PEM public key; InvalidSigningKey otherwise."""
        text = text.strip()
        if "PRIVATE KEY" in text:
            raise InvalidSigningKey(f"{source} is a private key: give its public key (NAME.pub); a private key "
                             "never belongs on an agent")
        try:
            if text.startswith("-----BEGIN PUBLIC KEY-----"):
                key = serialization.load_pem_public_key(text.encode())
                name = ""
            else:
                fields = text.split(None, 2)
                if len(fields) < 2 or fields[0] != "ssh-ed25519":
                    raise InvalidSigningKey(f"{source} is not a public key: expected one line "
                                            "'ssh-ed25519 AAAA... NAME' (a NAME.pub written by push keys generate)")
                key = serialization.load_ssh_public_key(f"{fields[0]} {fields[1]}".encode())
                name = fields[2].strip() if len(fields) > 2 else ""
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidSigningKey(f"{source} is not a readable public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidSigningKey(f"{source} is not an Ed25519 key: Push signs with Ed25519 (push keys generate)")
        return cls(key, name)

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        return cls.from_text(_read_key_file(path, "public key").decode("ascii", errors="replace"), str(path))


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise InvalidSigningKey(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise InvalidSigningKey(f"{path} is not a {what} (too large)")
    return data


class SigningKey:
    """An Ed25519 private key that signs statements. Its repr and errors never show key material."""

    def __init__(self, private: Ed25519PrivateKey, name: str = "") -> None:
        self._private = private
        self.public = PublicKey(private.public_key(), name)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def name(self) -> str:
        return self.public.name

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r}, name={self.name!r})"

    @classmethod
    def generate(cls, name: str = "") -> SigningKey:
        return cls(Ed25519PrivateKey.generate(), name)

    def sign(self, payload: bytes) -> bytes:
        return self._private.sign(payload)

    def to_pem(self) -> bytes:
        """PKCS8 PEM, unencrypted: the file's mode (0600) is what protects it, as with ssh host keys."""
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a NAME.key; InvalidSigningKey if it is missing, a public key, not Ed25519, or group/world-accessible."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())  # of the file we read, not of whatever the path names later
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidSigningKey(f"private key {path} is not a regular file")
                data = f.read(_MAX_KEY_FILE + 1)
        except OSError as e:
            raise InvalidSigningKey(f"cannot read private key {path}: {e.strerror}") from None
        if len(data) > _MAX_KEY_FILE:
            raise InvalidSigningKey(f"{path} is not a private key (too large)")
        if b"PUBLIC KEY" in data or data.lstrip().startswith(b"ssh-"):
            raise InvalidSigningKey(f"{path} is a public key: signing needs the private key (NAME.key, not NAME.pub)")
        if st.st_mode & 0o077:
            # As ssh does: a key others can read is a key others may have.
            raise InvalidSigningKey(f"permissions {stat.S_IMODE(st.st_mode):04o} on private key {path} are too open: "
                             f"it must be accessible by its owner only (chmod 600 {path})")
        if b"ENCRYPTED" in data:
            raise InvalidSigningKey(f"{path} is an encrypted private key: Push needs it unencrypted, protected by its "
                             "file mode (push keys generate writes one)")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # The library's message may quote the input: say only what the file is not.
            raise InvalidSigningKey(f"{path} is not a PEM (PKCS8) private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise InvalidSigningKey(f"{path} is not an Ed25519 key: Push signs with Ed25519 (push keys generate)")
        return cls(private, path.name.removesuffix(".key"))


def key_of_file(path: Path) -> tuple[PublicKey, bool]:
    """The public key of a NAME.pub, or of a NAME.key (then True, and loaded as signing would)."""
    if b"PRIVATE KEY" in _read_key_file(path, "key file"):
        return SigningKey.load(path).public, True
    return PublicKey.load(path), False


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Write `path` with `mode` from its first byte on, atomically, never replacing an existing file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: nothing is overwritten
        except FileExistsError:
            raise InvalidSigningKey(f"{path} exists: refusing to overwrite a key (choose another NAME, or "
                             "move the old key away yourself)") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_key_pair(directory: Path, name: str) -> tuple[SigningKey, Path, Path]:
    """Generate a key pair and write DIR/NAME.key (0600) and DIR/NAME.pub (0644).

    Refuses (InvalidSigningKey) if either file exists. Returns (key, private path, public path).
    """
    check_key_name(name)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidSigningKey(f"cannot create key directory {directory}: {e.strerror}") from None
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise InvalidSigningKey(f"{path} exists: refusing to overwrite a key (choose another NAME, or "
                             "move the old key away yourself)")
    key = SigningKey.generate(name)
    try:
        _create_exclusive(key_path, key.to_pem(), 0o600)
        try:
            _create_exclusive(pub_path, key.public.to_text().encode(), 0o644)
        except BaseException:
            key_path.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise InvalidSigningKey(f"cannot write key {name} in {directory}: {e.strerror}") from None
    return key, key_path, pub_path


class Keyring:
    """The public keys a verifier trusts for one role, and the key ids it no longer trusts.

    Several keys at once is how a key is rotated: trust the new one, move signing to it,
    then drop (or revoke) the old one. A revoked id is refused even if its key is listed.
    """

    def __init__(self, keys: Iterable[PublicKey] = (), revoked: Iterable[str] = ()) -> None:
        self.keys = {k.key_id: k for k in keys}
        self.revoked = frozenset(revoked)
        for key_id in self.revoked:
            if not KEY_ID_RE.fullmatch(key_id):
                raise InvalidSigningKey(f"revoked key id {key_id!r} is not 16 hex digits (see push keys show FILE)")

    @classmethod
    def load(cls, paths: Iterable[Path], revoked: Iterable[str] = ()) -> Keyring:
        return cls([PublicKey.load(p) for p in paths], revoked)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"Keyring(keys={sorted(self.keys)}, revoked={sorted(self.revoked)})"

    def check(self, payload: bytes, signature: bytes, key_id: str, what: str) -> PublicKey:
        """The key that signed `payload`; Untrusted if it is revoked, unknown, or the signature fails."""
        if key_id in self.revoked:
            raise Untrusted("revoked-key", f"{what} is signed by key {key_id}, which is revoked")
        key = self.keys.get(key_id)
        if key is None:
            trusted = ", ".join(sorted(self.keys)) or "none"
            raise Untrusted("unknown-key", f"{what} is signed by key {key_id}, which is not trusted "
                                           f"(trusted: {trusted})")
        if not key.verifies(signature, payload):
            raise Untrusted("bad-signature", f"{what}: the signature by key {key_id} does not match: "
                                             "it was changed after it was signed")
        return key


def _decode_signature(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise Untrusted("malformed", f"{what}: its signature is not a string")
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Untrusted("malformed", f"{what}: its signature is not base64") from None
    if len(signature) != 64:
        raise Untrusted("malformed", f"{what}: its signature is {len(signature)} bytes, not an Ed25519 signature's 64")
    return signature


def _check_key_id(key_id: object, what: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise Untrusted("malformed", f"{what}: its key id {key_id!r} is not 16 hex digits")
    return key_id


# -- releases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseStatement:
    """What a release key vouches for: this release is this exact .deb, built then, as this package.

    Only the signature and the key id are stored (in the release's metadata); the verifier
    rebuilds the statement from the metadata, so changing any field here breaks the signature.
    """

    TYPE: ClassVar[str] = "push.release/v1"

    release: str  # the release name, which holds app, user@host, build time and git hash
    app: str
    package: str
    version: str
    architecture: str
    sha256: str
    size: int
    built: str  # UTC YYYY-MM-DDTHH:MM:SSZ, the build time in the name
    dirty: bool
    note: str
    services: tuple[str, ...]
    # The declared health check, as stored in the metadata (push.health): a signature covers
    # it, so nobody can change what the agent checks or switch a revert off. None: no check
    # (and then no "health" key in the statement, so older statements verify unchanged).
    health: str | None = None

    @classmethod
    def from_info(cls, info: ReleaseInfo) -> ReleaseStatement:
        """The statement of a release's metadata; InvalidRelease if a signed field is missing."""
        missing = [k for k in ("package", "version", "architecture") if not info.extra.get(k)]
        if info.sha256 is None:
            missing.append("sha256")
        if info.size is None:
            missing.append("size")
        if missing:
            raise InvalidRelease(f"release {info.name}: no {', '.join(missing)} in its metadata, which a "
                                 "signature covers")
        assert info.sha256 is not None and info.size is not None
        return cls(release=info.name, app=info.app, package=info.extra["package"], version=info.extra["version"],
                   architecture=info.extra["architecture"], sha256=info.sha256, size=info.size,
                   built=info.release.timestamp, dirty=info.dirty, note=info.note, services=info.services,
                   health=info.extra.get(HEALTH_METADATA))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "release": self.release, "app": self.app, "package": self.package,
                "version": self.version, "architecture": self.architecture, "sha256": self.sha256,
                "size": self.size, "built": self.built, "dirty": self.dirty, "note": self.note,
                "services": list(self.services), **({"health": self.health} if self.health is not None else {})}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of user metadata as S3 counts them: UTF-8 of every key and value.

    A value that is not printable ASCII travels RFC 2047-encoded (push.store.s3), so it
    counts at that size.
    """
    total = 0
    for key, value in metadata.items():
        raw = value.encode("utf-8")
        size = len(raw) if value.isascii() and value.isprintable() else 12 + 4 * math.ceil(len(raw) / 3)
        total += len(key.encode("utf-8")) + size
    return total


def sign_release(info: ReleaseInfo, key: SigningKey) -> ReleaseInfo:
    """`info` with its statement's signature and the key id in its metadata.

    InvalidRelease if a signed field is missing or the metadata would exceed METADATA_LIMIT.
    """
    statement = ReleaseStatement.from_info(info)
    signature = base64.b64encode(key.sign(statement.encode())).decode()
    signed = replace(info, extra={**info.extra, SIGNATURE_METADATA: signature, KEYID_METADATA: key.key_id})
    size = metadata_size(signed.to_metadata())
    if size > METADATA_LIMIT:
        raise InvalidRelease(f"release {info.name}: its metadata would be {size} bytes with the signature, over "
                             f"the {METADATA_LIMIT} that S3 allows: shorten the note")
    return signed


def release_signature(info: ReleaseInfo) -> tuple[bytes, str] | None:
    """(signature, key id) from a release's metadata, None if it is unsigned; Untrusted if malformed."""
    text, key_id = info.extra.get(SIGNATURE_METADATA), info.extra.get(KEYID_METADATA)
    if text is None and key_id is None:
        return None
    what = f"release {info.name}"
    return _decode_signature(text, what), _check_key_id(key_id, what)


def verify_release(info: ReleaseInfo, keyring: Keyring) -> ReleaseStatement:
    """The statement of a release whose metadata is validly signed by a key in `keyring`; else Untrusted.

    Then compare the downloaded .deb with it (check_release_file) before dpkg sees the file.
    """
    what = f"release {info.name}"
    found = release_signature(info)
    if found is None:
        raise Untrusted("unsigned", f"{what} is not signed")
    signature, key_id = found
    try:
        statement = ReleaseStatement.from_info(info)
    except InvalidRelease as e:
        raise Untrusted("bad-signature", str(e)) from None
    keyring.check(statement.encode(), signature, key_id, what)
    return statement


def check_release_file(statement: ReleaseStatement, sha256: str, size: int) -> None:
    """Untrusted unless a downloaded .deb (its sha256 and size) is the one the statement names."""
    if sha256 != statement.sha256 or size != statement.size:
        raise Untrusted("digest-mismatch", f"release {statement.release}: the downloaded .deb (sha256 {sha256}, "
                                           f"{size} bytes) is not the signed one (sha256 {statement.sha256}, "
                                           f"{statement.size} bytes)")


# -- server files --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFileStatement:
    """What a deploy key vouches for: server/{server}.json is exactly these bytes, as of
    `version`, until `expires`. Versions only grow (next_version); a verifier refuses one
    older than the newest it has seen (rollback) and one past its expiry (freeze)."""

    TYPE: ClassVar[str] = "push.server/v1"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"type", "server", "sha256", "version", "issued", "expires"})

    server: str
    sha256: str
    version: int
    issued: datetime
    expires: datetime

    def __post_init__(self) -> None:
        check_server(self.server)
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 0 < self.version < _MAX_VERSION:
            raise ValueError(f"version {self.version!r} is not a whole number from 1 to 2**53")
        object.__setattr__(self, "issued", _whole_seconds(self.issued))
        object.__setattr__(self, "expires", _whole_seconds(self.expires))
        if self.expires <= self.issued:
            raise ValueError("a statement must expire after it is issued")

    @property
    def resign_at(self) -> datetime:
        """When a writer should sign afresh: at half-life, so an expiry is never reached while a writer runs."""
        return self.issued + (self.expires - self.issued) / 2

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "server": self.server, "sha256": self.sha256, "version": self.version,
                "issued": _format_time(self.issued), "expires": _format_time(self.expires)}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: object) -> ServerFileStatement:
        """Parse strictly (exactly these fields, this type); ValueError says what is wrong."""
        if not isinstance(value, dict):
            raise TypeError("the statement is not a JSON object")
        if value.get("type") != cls.TYPE:
            raise ValueError(f"the statement's type is {value.get('type')!r}, not {cls.TYPE!r}")
        if set(value) != cls.FIELDS:
            raise ValueError(f"the statement's fields are {sorted(value)}, not {sorted(cls.FIELDS)}")
        server, sha256, version = value["server"], value["sha256"], value["version"]
        if not isinstance(server, str) or not isinstance(sha256, str):
            raise TypeError("server and sha256 must be strings")
        try:
            check_server(server)
        except PushError as e:
            raise ValueError(str(e)) from None
        return cls(server=server, sha256=sha256, version=version,
                   issued=_parse_time(value["issued"], "issued"), expires=_parse_time(value["expires"], "expires"))


@dataclass(frozen=True)
class SignedServerFile:
    """A server-file statement with its signature, as stored at signatures/server/{server}.json:

        {"keyid": "…16 hex…", "signature": "…base64…", "statement": {…}}
    """

    statement: ServerFileStatement
    signature: bytes
    key_id: str

    def to_bytes(self) -> bytes:
        doc = {"keyid": self.key_id, "signature": base64.b64encode(self.signature).decode(),
               "statement": self.statement.to_json()}
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, server: str, data: bytes) -> SignedServerFile:
        """Read a stored statement (not yet verified); Untrusted("malformed") if it cannot be."""
        what = f"{server_signature_key(server)}"
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise Untrusted("malformed", f"{what} is not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"keyid", "signature", "statement"}:
            raise Untrusted("malformed", f"{what} is not a signed statement (keyid, signature, statement)")
        try:
            statement = ServerFileStatement.from_json(doc["statement"])
        except (ValueError, TypeError) as e:
            raise Untrusted("malformed", f"{what}: {e}") from None
        return cls(statement, _decode_signature(doc["signature"], what), _check_key_id(doc["keyid"], what))


@dataclass(frozen=True)
class Seen:
    """The newest server-file statement a verifier accepted: its version and who signed it.

    An agent keeps one per server in its state (to_json/from_json) to refuse rollbacks.
    """

    version: int
    key_id: str

    @classmethod
    def of(cls, signed: SignedServerFile) -> Seen:
        return cls(signed.statement.version, signed.key_id)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "keyid": self.key_id}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Seen:
        version, key_id = value.get("version"), value.get("keyid")
        if isinstance(version, bool) or not isinstance(version, int) or not isinstance(key_id, str):
            raise TypeError(f"not a seen version: {value!r}")
        return cls(version, key_id)


def next_version(previous: ServerFileStatement | None, now: datetime) -> int:
    """The version of a new statement: max(previous + 1, `now` in Unix milliseconds).

    The clock term means a writer that finds no previous statement (the first, or one that
    was deleted) still starts above every version signed before it, and two push servers
    that race on one bucket both sign above what either read; the +1 keeps versions growing
    within a millisecond and past a writer whose clock is behind.
    """
    clock = int(now.timestamp() * 1000)
    return max(previous.version + 1 if previous is not None else 1, clock)


def sign_server_file(server: str, data: bytes, key: SigningKey, previous: ServerFileStatement | None,
                     now: datetime | None = None, lifetime: timedelta = DEFAULT_LIFETIME) -> SignedServerFile:
    """Sign `data`, the exact bytes of server/{server}.json, with a version above `previous`'s.

    Store the result's to_bytes() at server_signature_key(server), written only if that object
    is still at the generation `previous` was read at (else re-read and sign again).
    """
    now = _whole_seconds(now or datetime.now(UTC))
    statement = ServerFileStatement(server=server, sha256=hashlib.sha256(data).hexdigest(),
                                    version=next_version(previous, now), issued=now, expires=now + lifetime)
    return SignedServerFile(statement, key.sign(statement.encode()), key.key_id)


def needs_signing(current: SignedServerFile | None, data: bytes, key: SigningKey, now: datetime | None = None) -> bool:
    """Whether a writer holding `key` must (re-)sign server file `data`: no statement, one for other
    bytes, one by another key (rotation), or one past half its life (TUF's timestamp role)."""
    now = now or datetime.now(UTC)
    return (current is None
            or current.statement.sha256 != hashlib.sha256(data).hexdigest()
            or current.key_id != key.key_id
            or now >= current.statement.resign_at)


def verify_server_file(server: str, data: bytes, signed: bytes | None, keyring: Keyring,
                       seen: Seen | None = None, now: datetime | None = None) -> SignedServerFile:
    """Check server/{server}.json (`data`) against its stored statement (`signed`, None if absent).

    Returns the signed statement (record Seen.of(it) once acted on); raises Untrusted when it is
    unsigned, malformed, signed by an unknown or revoked key, badly signed, for another server,
    for other bytes, older than `seen` (unless `seen` was signed by a key since revoked: that
    is how an agent recovers from a fast-forward by a stolen key), or expired.
    """
    what = server_file_key(server)
    if signed is None:
        raise Untrusted("unsigned", f"{what} is not signed ({server_signature_key(server)} is missing)")
    parsed = SignedServerFile.parse(server, signed)
    st = parsed.statement
    keyring.check(st.encode(), parsed.signature, parsed.key_id, f"the statement of {what}")
    if st.server != server:
        raise Untrusted("wrong-server", f"the statement of {what} is for server {st.server!r}: a statement "
                                        "cannot be moved from one server to another")
    digest = hashlib.sha256(data).hexdigest()
    if digest != st.sha256:
        raise Untrusted("digest-mismatch", f"{what} was changed after it was signed (its sha256 is {digest}, "
                                           f"the statement says {st.sha256})")
    if seen is not None and seen.key_id not in keyring.revoked and st.version < seen.version:
        raise Untrusted("rollback", f"{what} is version {st.version}, older than version {seen.version} "
                                    "already seen: an old file put back")
    now = now or datetime.now(UTC)
    if now >= st.expires:
        raise Untrusted("expired", f"the statement of {what} expired at {_format_time(st.expires)}: nobody "
                                   "has re-signed it since (a frozen bucket, or no push server running)")
    return parsed
