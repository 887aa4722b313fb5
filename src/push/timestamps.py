"""Times Push writes, and the time-ordered ids of history records and unit requests.

Every timestamp Push writes to the bucket is UTC ISO-8601 with microseconds and a `Z`
(`2026-01-02T03:04:05.123456Z`); `parse` also reads the whole-second form and explicit
offsets, which reports and records written by earlier versions hold. Release names keep
their whole-second form (`RELEASE_FORMAT`), as the original Push wrote them. Ids are
`{20-digit UTC ns}-{8 hex}`: they sort in time order, and two writers never pick the same one.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta, timezone

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
RELEASE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ID_RE = re.compile(r"(\d{20})-([0-9a-f]{8})")
_RELEASE_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", re.ASCII)


def now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(t: datetime) -> str:
    """`t` as Push writes it: UTC, microseconds, `Z`."""
    return t.astimezone(timezone.utc).strftime(FORMAT)


def now_text() -> str:
    return format_time(now())


def text_in(seconds: float) -> str:
    """The time `seconds` from now, as Push writes it."""
    return format_time(now() + timedelta(seconds=seconds))


def parse(text: str) -> datetime:
    """A timestamp Push (or an earlier version) wrote, as an aware UTC datetime; ValueError if none."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if t.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return t.astimezone(timezone.utc)


def release_text(t: datetime) -> str:
    """The time part of a release name: UTC, whole seconds."""
    return t.astimezone(timezone.utc).strftime(RELEASE_FORMAT)


def parse_release_text(text: str) -> datetime:
    """The time part of a release name; ValueError if it is not `YYYY-MM-DDTHH:MM:SSZ`."""
    # fromisoformat behind an exact pattern: strptime took 40 µs, most of the cost of reading
    # one release from the catalogue index.
    if not _RELEASE_TIME_RE.fullmatch(text):
        raise ValueError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


def new_id(now_ns: int | None = None) -> str:
    """A fresh id, `{20-digit ns}-{8 hex}`, at `now_ns` (default: now)."""
    return f"{time.time_ns() if now_ns is None else now_ns:020d}-{secrets.token_hex(4)}"


def id_parts(record_id: str) -> tuple[int, str]:
    """(ns, random part) of an id; ValueError if it is not one."""
    m = ID_RE.fullmatch(record_id)
    if m is None:
        raise ValueError(f"invalid id {record_id!r}: expected 20 digits, '-', 8 hex digits")
    return int(m[1]), m[2]


def id_time(record_id: str) -> datetime:
    """When an id was made."""
    return datetime.fromtimestamp(id_parts(record_id)[0] / 1e9, timezone.utc)
