"""Names: the rules for apps, servers, units and the parts of a release name, checked here only.

Every validator returns the name when it is good and raises InvalidName (with its kind and
value) when not. The limits keep every key Push writes within what each store takes: one
path component of the local store is at most 255 bytes, a GCS or S3 key at most 1,024;
docs/names.md explains each number.
"""

from __future__ import annotations

import re

from push.errors import InvalidName
from push.units import UNIT_SUFFIXES, UNIT_TYPES, is_template

APP_MAX = 64
SERVER_MAX = 128
UNIT_MAX = 255            # systemd's own limit
USER_MAX = 64
HOST_MAX = 253            # a fully qualified DNS name
RELEASE_FILE_MAX = 255    # `{app}:{user}@{host}:{time}:{hash}.deb`: one file name in the local store
NOTE_MAX = 1000           # characters of a change's note (stored three times in the history)

_APP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SERVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.[a-z]+")
# Users and hosts are the builder's: anything printable but the separators of a release name.
_USER_HOST_RE = re.compile(r"[^\x00-\x20\x7f/:@\\]+")
_HASH_RE = re.compile(r"[0-9a-f]{40}")
_NOTE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _fail(kind: str, value: object, rule: str) -> InvalidName:
    return InvalidName(f"invalid {kind} {value!r}: {rule}", kind=kind, value=str(value))


def _check(kind: str, value: object, pattern: re.Pattern[str], limit: int, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise _fail(kind, value, rule)
    if len(value.encode()) > limit:
        raise _fail(kind, value, f"at most {limit} bytes")
    return value


def check_app(app: str) -> str:
    """An app: letters, digits and . _ + -, starting with a letter or digit; at most 64."""
    return _check("app name", app, _APP_RE, APP_MAX,
                  "use letters, digits and . _ + - (starting with a letter or digit)")


def check_server(server: str) -> str:
    """A server (a hostname or GCE instance name): letters, digits and . _ -; at most 128."""
    return _check("server name", server, _SERVER_RE, SERVER_MAX, "use letters, digits and . _ -")


def check_unit(unit: str) -> str:
    """A systemd unit one can act on: NAME.TYPE, a type a package can ship (push.units), and
    not a template (NAME@.TYPE starts nothing without an instance)."""
    rule = f"expected NAME.service (or .{', .'.join(UNIT_TYPES[1:])})"
    _check("unit name", unit, _UNIT_RE, UNIT_MAX, rule)
    if not unit.endswith(UNIT_SUFFIXES):
        raise _fail("unit name", unit, rule)
    if is_template(unit):
        raise _fail("unit name", unit, "a template names no instance to start, stop or restart")
    return unit


def check_user(user: str) -> str:
    """The user part of a release name: no space, control character, / : @ or backslash."""
    return _check("user", user, _USER_HOST_RE, USER_MAX, "no spaces, control characters, / : @ or \\")


def check_host(host: str) -> str:
    """The host part of a release name: as a user, at most 253 bytes (a DNS name)."""
    return _check("host", host, _USER_HOST_RE, HOST_MAX, "no spaces, control characters, / : @ or \\")


def check_git_hash(value: str) -> str:
    """The commit of a release name: 40 lowercase hex digits."""
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
        raise _fail("git hash", value, "expected 40 lowercase hex digits")
    return value


def check_note(note: str) -> str:
    """A change's note ("why"): text of at most 1,000 characters, no control characters but
    tab and newline, no lone UTF-16 surrogate (it could not be stored as UTF-8)."""
    if not isinstance(note, str):
        raise _fail("note", type(note).__name__, "expected text")
    if len(note) > NOTE_MAX:
        raise InvalidName(f"invalid note: {len(note)} characters, at most {NOTE_MAX}", kind="note", value=note[:40])
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("invalid note: it holds a lone UTF-16 surrogate (not text)", kind="note") from None
    if _NOTE_CONTROL_RE.search(note):
        raise InvalidName("invalid note: no control characters (but tab and newline)", kind="note", value=note[:40])
    return note


def check_release_file(file_name: str) -> str:
    """A release's file name, `{app}:{user}@{host}:{time}:{hash}.deb`, fits one path component."""
    if len(file_name.encode()) > RELEASE_FILE_MAX:
        raise _fail("release name", file_name,
                    f"its file name is {len(file_name.encode())} bytes, at most {RELEASE_FILE_MAX}: "
                    "use a shorter host or user name")
    return file_name
