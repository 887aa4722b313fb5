"""Health: the words for an app's health, and the health check a release declares.

A release may declare how to tell that it works (`[health]` in push.toml, or the flags of
`push release`): an HTTP URL on the server that must answer 2xx, a command that must exit
0, the seconds `within` which it must be healthy after its units start, the `interval`
between checks while it runs, and whether to `revert` it when it is not healthy in time.
The builder stores the check in the release's metadata under `health` (compact JSON, see
`HealthCheck.encode`); pulld reads it back with `HealthCheck.of_release`; a signed release
statement covers it (push.signing). Without a declared check an app is healthy when its
units are active and have not restarted for a settle time.

Used by the builder, pulld (push.agent), the signing statement and the fleet view.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from push.errors import InvalidRelease
from push.release import ReleaseInfo

# The release metadata key that holds a declared check.
HEALTH_METADATA = "health"
# The encoded check must stay well inside S3's 2 KB of user metadata per object (the note,
# the signature and the original keys share them).
HEALTH_LIMIT = 1024
DEFAULT_WITHIN = 30.0
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 10.0
# Without a declared check: how long units must stay active without a restart.
DEFAULT_SETTLE = 5.0
_KEYS = ("http", "command", "within", "interval", "timeout", "revert")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Health(enum.StrEnum):
    """An app's health, beside its sync state (Argo CD keeps the two apart too)."""

    HEALTHY = "healthy"          # the release works: its check passes, or its units are active and settled
    PROGRESSING = "progressing"  # just installed: not healthy yet, and its deadline has not passed
    UNHEALTHY = "unhealthy"      # its check fails, a unit failed, or it was not healthy by its deadline
    UNKNOWN = "unknown"          # not judged: nothing installed, or the agent cannot tell


@dataclass(frozen=True)
class HealthCheck:
    """What a release declares about its health. Times are seconds."""

    http: str | None = None            # a URL on the server; success = a 2xx answer
    command: tuple[str, ...] = ()      # an argument list run on the server; success = exit 0
    within: float = DEFAULT_WITHIN     # after its units start, by when it must be healthy
    interval: float = DEFAULT_INTERVAL  # between checks while it runs
    timeout: float = DEFAULT_TIMEOUT   # one check's run (a hung command is killed)
    revert: bool = True                # not healthy within `within` after an install: go back

    def __post_init__(self) -> None:
        if self.http is not None and not re.match(r"https?://[^\s]+$", self.http):
            raise InvalidRelease(f"health: http must be an http:// or https:// URL, got {self.http!r}")
        if any(not isinstance(a, str) or not a or "\x00" in a for a in self.command):
            raise InvalidRelease(f"health: command must be a list of non-empty strings, got {list(self.command)!r}")
        for name in ("within", "interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400 \
                    or math.isnan(value):
                raise InvalidRelease(f"health: {name} must be a number of seconds between 0 and 86400, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.revert, bool):
            raise InvalidRelease(f"health: revert must be true or false, got {self.revert!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "health") -> HealthCheck:
        """From `[health]` as TOML or JSON gives it; InvalidRelease naming what is wrong."""
        unknown = set(data) - set(_KEYS)
        if unknown:
            raise InvalidRelease(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(_KEYS)})")
        command = data.get("command", ())
        if isinstance(command, str) or not isinstance(command, (list, tuple)):
            raise InvalidRelease(f"{where}: command must be a list of arguments, such as [\"/usr/bin/app\", "
                                 f"\"--check\"], got {command!r}")
        http = data.get("http")
        if http is not None and not isinstance(http, str):
            raise InvalidRelease(f"{where}: http must be a URL, got {http!r}")
        try:
            return cls(http=http, command=tuple(command),
                       **{k: data[k] for k in ("within", "interval", "timeout", "revert") if k in data})
        except InvalidRelease as e:
            raise InvalidRelease(str(e).replace("health:", f"{where}:", 1)) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.http is not None:
            out["http"] = self.http
        if self.command:
            out["command"] = list(self.command)
        out.update(within=_number(self.within), interval=_number(self.interval), timeout=_number(self.timeout),
                   revert=self.revert)
        return out

    def encode(self) -> str:
        """The metadata value: compact JSON with sorted keys, ASCII only (S3 metadata is ASCII);
        InvalidRelease if it is over HEALTH_LIMIT bytes."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True, ensure_ascii=True)
        if len(text) > HEALTH_LIMIT:
            raise InvalidRelease(f"the health check is {len(text)} bytes of release metadata, over the "
                                 f"{HEALTH_LIMIT} allowed (S3 keeps 2 KB for all of a release's metadata): "
                                 "shorten its URL or command")
        return text

    @classmethod
    def decode(cls, text: str, where: str = "health") -> HealthCheck:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InvalidRelease(f"{where}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise InvalidRelease(f"{where}: not a JSON object")
        return cls.from_dict(data, where)

    @classmethod
    def of_release(cls, info: ReleaseInfo) -> HealthCheck | None:
        """The check a release declares (None: none, as for every release of the original
        tools); InvalidRelease if its metadata holds a malformed one."""
        text = info.extra.get(HEALTH_METADATA)
        return None if text is None else cls.decode(text, f"release {info.name}: metadata {HEALTH_METADATA!r}")

    @property
    def declared(self) -> bool:
        """It names a check to run (else only the units are judged)."""
        return self.http is not None or bool(self.command)


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value


def variables_in(text: str) -> list[str]:
    """The `${VAR}` names in `text`, in order."""
    return [m[1] for m in _VAR_RE.finditer(text)]


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${VAR}` replaced from `env`; KeyError names the first one unset."""
    missing = [v for v in variables_in(text) if v not in env]
    if missing:
        raise KeyError(missing[0])
    return _VAR_RE.sub(lambda m: env[m[1]], text)
