"""The agent's small record in its state directory: which packages Push installed, per app.

What is installed is always read from dpkg; this record only says which Debian packages
belong to which app (so an app taken off the server file can be removed, and packages Push
did not install are left alone) and which release was last installed, for the releases
whose Debian version does not tell them apart. It is written atomically (temp file, fsync,
rename), and holds an exclusive lock so that two agents never share one state directory.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from push.agent.errors import AgentStateError

STATE_FILE = "state.json"
LOCK_FILE = "lock"


@dataclass
class AppRecord:
    """What Push installed for one app."""

    packages: list[str] = field(default_factory=list)   # every Debian package it installed for the app
    release: str | None = None      # the release installed last, with success
    package: str | None = None      # ... its Debian package and version
    version: str | None = None
    pending: dict[str, str] | None = None   # the release being installed (written before dpkg -i)
    units_pending: bool = False     # installed, its units not (re)started yet (cleared once they are)

    def installed(self, release: str, package: str, version: str) -> None:
        """Record that `release` (that package and version) is now installed, with success."""
        self.release, self.package, self.version = release, package, version
        if package not in self.packages:
            self.packages.insert(0, package)


@dataclass
class AgentState:
    path: Path
    apps: dict[str, AppRecord] = field(default_factory=dict)
    # release name -> [package, version], learnt from the .deb for releases whose metadata
    # lacks them (releases from the original tools).
    debs: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> AgentState:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as e:
            raise AgentStateError(f"cannot read agent state {path}: {e}") from None
        apps = {}
        for app, rec in dict(data.get("apps") or {}).items():
            known = {k: v for k, v in dict(rec).items() if k in AppRecord.__dataclass_fields__}
            apps[app] = AppRecord(**known)
        return cls(path, apps=apps, debs=dict(data.get("debs") or {}))

    def save(self) -> None:
        data = {"apps": {app: asdict(rec) for app, rec in sorted(self.apps.items())}, "debs": self.debs}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def app(self, app: str) -> AppRecord:
        return self.apps.setdefault(app, AppRecord())


class StateLock:
    """An exclusive lock on the state directory, held for the agent's lifetime."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AgentStateError(f"another pulld is running with state directory {directory}") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
