"""Release names and release metadata: the one place that knows their format.

A release is `{app}/{app}:{user}@{host}:{UTC YYYY-MM-DDTHH:MM:SSZ}:{40-hex hash}.deb`, stored
at `debs/` + name, exactly as the original Push wrote it. Its object metadata carries the
original keys (appname, userid, hash, datetime, dirty, note, services) plus sha256 and size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from push import layout
from push.errors import InvalidName, InvalidRelease
from push.names import check_app, check_git_hash, check_host, check_release_file, check_user
from push.timestamps import parse_release_text, release_text

_TIME_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
_NAME_RE = re.compile(
    rf"(?P<app>[^/]+)/(?P<app2>[^/:]+):(?P<user>[^/@]+)@(?P<host>[^/]+):"
    rf"(?P<time>{_TIME_RE}):(?P<hash>[^/:]+)\.deb"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Every rule of push.names for an ASCII name in one pattern (app, user, host, a time from
# year 1000 on, a 40-hex hash): a name it matches is valid as it is, and is taken apart
# without the checks one by one. A push server parses every release its server files and
# its catalogue's newest releases name at start-up (40,000 at 1,000 servers x 20 apps);
# the checks one by one cost 13 µs a name, the pattern 3.
_VALID_ASCII_NAME = re.compile(
    r"(?P<app>[A-Za-z0-9][A-Za-z0-9._+-]{0,63})/(?P=app):(?P<user>[!-.0-9;-?A-\[\]-~]{1,64})"
    r"@(?P<host>[!-.0-9;-?A-\[\]-~]{1,253}):(?P<time>[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})Z"
    r":(?P<hash>[0-9a-f]{40})\.deb"
)

# Metadata keys, as the original wrote them, then ours.
ORIGINAL_KEYS = ("appname", "userid", "hash", "datetime", "dirty", "note", "services")
PUSH_KEYS = ("sha256", "size")


def app_of(name: str) -> str:
    """The app of a release name or placeholder: the part before the first '/'."""
    return name.split("/", 1)[0]


@dataclass(frozen=True)
class Release:
    """One release of one app, identified by its name."""

    app: str
    user: str
    host: str
    time: datetime
    hash: str
    # The name, made once: it is asked for on every lookup (formatting the time took 8 µs).
    _name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_app(self.app)
        check_user(self.user)
        check_host(self.host)
        check_git_hash(self.hash)
        if self.time.tzinfo is None:
            raise InvalidRelease("release time must be timezone-aware (UTC)")
        # Names hold whole seconds in UTC: normalise so equal names mean equal releases.
        object.__setattr__(self, "time", self.time.astimezone(timezone.utc).replace(microsecond=0))
        name = f"{self.app}/{self.app}:{self.user}@{self.host}:{self.timestamp}:{self.hash}.deb"
        object.__setattr__(self, "_name", name)
        check_release_file(name.split("/", 1)[1])

    @classmethod
    def parse(cls, name: str) -> Release:
        """Parse a release name (`app/app:user@host:time:hash.deb`); InvalidRelease if bad."""
        if not isinstance(name, str) or _CONTROL.search(name) or ".." in name:
            raise InvalidRelease(f"invalid release name {name!r}")
        fast = cls._parse_valid(name)
        if fast is not None:
            return fast
        m = _NAME_RE.fullmatch(name)
        if m is None:
            raise InvalidRelease(
                f"invalid release name {name!r}: expected APP/APP:USER@HOST:YYYY-MM-DDTHH:MM:SSZ:GITHASH.deb"
            )
        if m["app"] != m["app2"]:
            raise InvalidRelease(f"invalid release name {name!r}: app {m['app2']!r} is filed under {m['app']!r}")
        try:
            time = parse_release_text(m["time"])
        except ValueError:
            raise InvalidRelease(f"invalid release name {name!r}: bad time {m['time']!r}", name=name) from None
        try:
            return cls(app=m["app"], user=m["user"], host=m["host"], time=time, hash=m["hash"])
        except InvalidName as e:
            raise InvalidRelease(f"invalid release name {name!r}: {e}", name=name) from None

    @classmethod
    def _parse_valid(cls, name: str) -> Release | None:
        """The release, if `name` is an ASCII name every rule allows (None: check it part by part)."""
        m = _VALID_ASCII_NAME.fullmatch(name) if name.isascii() and len(name) - name.find("/") <= 256 else None
        if m is None:
            return None
        try:
            time = datetime.fromisoformat(m["time"]).replace(tzinfo=timezone.utc)
        except ValueError:
            return None
        release = object.__new__(cls)
        for attr, value in (("app", m["app"]), ("user", m["user"]), ("host", m["host"]), ("time", time),
                            ("hash", m["hash"]), ("_name", name)):
            object.__setattr__(release, attr, value)
        return release

    @classmethod
    def from_key(cls, key: str) -> Release:
        """Parse an object key `debs/{name}`."""
        name = layout.release_name_of(key)
        if name is None:
            raise InvalidRelease(f"{key!r} is not a release key (under {layout.DEBS}, ending .deb)")
        return cls.parse(name)

    @property
    def timestamp(self) -> str:
        return release_text(self.time)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key(self) -> str:
        return layout.release_key(self.name)

    @property
    def short_hash(self) -> str:
        return self.hash[:7]

    def __str__(self) -> str:
        return self.name


def short(name: str | None) -> str:
    """A release name as people read it (CLI lines, progress reasons, rollout events): app,
    build time and short hash, `hello 2026-03-01 12:00 9c64614`. Structured fields keep the
    full name; a name that does not parse is shown as it is."""
    if not name:
        return "(nothing)"
    try:
        r = Release.parse(name)
    except InvalidRelease:
        return name
    return f"{r.app} {r.time:%Y-%m-%d %H:%M} {r.short_hash}"


def _parse_bool(value: str, key: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise InvalidRelease(f"metadata {key!r} must be 'true' or 'false', got {value!r}")


@dataclass(frozen=True)
class ReleaseInfo:
    """A release with what its metadata says of it."""

    release: Release
    dirty: bool = False
    note: str = ""
    services: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None
    # Any further metadata keys (package, version, ...) kept as they came.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def app(self) -> str:
        return self.release.app

    def to_metadata(self) -> dict[str, str]:
        r = self.release
        md = {
            "appname": r.app,
            "userid": f"{r.user}@{r.host}",
            "hash": r.hash,
            "datetime": r.timestamp,
            "dirty": "true" if self.dirty else "false",
            "note": self.note,
            "services": " ".join(self.services),
        }
        if self.sha256 is not None:
            md["sha256"] = self.sha256
        if self.size is not None:
            md["size"] = str(self.size)
        md.update(self.extra)
        return md

    @classmethod
    def from_metadata(cls, key: str, metadata: dict[str, str]) -> ReleaseInfo:
        """Build from an object's key and metadata; InvalidRelease when they disagree."""
        release = Release.from_key(key)
        md = dict(metadata)
        appname = md.get("appname")
        if not appname:
            raise InvalidRelease(f"{key}: no 'appname' metadata (not a release)")
        if appname != release.app:
            raise InvalidRelease(f"{key}: metadata appname {appname!r} does not match app {release.app!r}")
        sha256 = md.get("sha256")
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidRelease(f"{key}: metadata sha256 {sha256!r} is not 64 hex digits")
        size_text = md.get("size")
        size = None
        if size_text is not None:
            if not size_text.isdigit():
                raise InvalidRelease(f"{key}: metadata size {size_text!r} is not a number")
            size = int(size_text)
        services = tuple(md.get("services", "").split())
        for unit in services:
            if _CONTROL.search(unit) or "/" in unit:
                raise InvalidRelease(f"{key}: bad unit name {unit!r} in metadata services")
        extra = {k: v for k, v in md.items() if k not in ORIGINAL_KEYS + PUSH_KEYS}
        return cls(
            release=release,
            dirty=_parse_bool(md.get("dirty", "false"), "dirty"),
            note=md.get("note", ""),
            services=services,
            sha256=sha256,
            size=size,
            extra=extra,
        )


def newest_first_key(info: ReleaseInfo) -> tuple[datetime, str]:
    """Sort key for newest-first ordering (use with reverse=True); ties broken by name."""
    return (info.release.time, info.release.name)
