"""Service managers: (re)start, stop and read the units of the packages Push installed.

One interface, two implementations: `SystemdManager` (systemctl, for real servers) and
`push.agent.supervisor.SandboxSupervisor` (child processes, for sandbox roots, where there
is no systemd). This module is the only one that runs systemctl; which files are units and
which to start is `push.units`.
"""

from __future__ import annotations

import abc
import logging
import os
import subprocess
from collections.abc import Sequence

from push.agent.errors import UnitError
from push.units import ACTIONS

log = logging.getLogger(__name__)


class ServiceManager(abc.ABC):
    """What the agent needs from a service manager."""

    @abc.abstractmethod
    def reload(self) -> None:
        """Re-read unit files (after a package added, changed or removed some)."""

    @abc.abstractmethod
    def restart(self, units: Sequence[str], *, unless_started_since: float | None = None) -> None:
        """Enable and (re)start `units`: after an install. UnitError names the ones that failed.

        With `unless_started_since` (a time.monotonic() value), units that became active
        after it (the package's postinst restarted them already) are left alone.
        """

    @abc.abstractmethod
    def stop(self, units: Sequence[str]) -> None:
        """Stop `units`."""

    @abc.abstractmethod
    def disable(self, units: Sequence[str]) -> None:
        """Stop and disable `units`: before their package is removed."""

    @abc.abstractmethod
    def states(self, units: Sequence[str]) -> dict[str, str]:
        """unit -> active | inactive | failed | activating | deactivating | not-found."""

    def act(self, action: str, unit: str, *, wait: bool = True) -> None:
        """start / stop / restart one unit (unit requests from the push server).

        `wait=False` only queues the job where the manager can (the agent's own unit: waiting
        for it to stop would wait for the very process that asks).
        """
        if action not in ACTIONS:
            raise UnitError(f"unknown unit action {action!r}")
        if action == "restart":
            self.restart([unit])
        elif action == "start":
            self.start([unit])
        else:
            self.stop([unit])

    def start(self, units: Sequence[str]) -> None:
        """Start `units` if they are not running."""
        states = self.states(units)
        self.restart([u for u in units if states.get(u) != "active"])

    def close(self) -> None:  # noqa: B027 - optional
        """The agent is exiting normally."""


class SystemdManager(ServiceManager):
    """systemd through systemctl: units outlive the agent, which only asks systemd."""

    def __init__(self, systemctl: str = "systemctl", timeout: float = 120.0) -> None:
        self.systemctl = systemctl
        self.timeout = timeout

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.systemctl, *args]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=self.timeout,
                                  env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            raise UnitError(f"systemctl {' '.join(args)} timed out after {self.timeout:.0f}s") from None
        except OSError as e:
            raise UnitError(f"cannot run {self.systemctl}: {e.strerror}") from None
        if check and proc.returncode != 0:
            raise UnitError(f"systemctl {' '.join(args)} failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def reload(self) -> None:
        self._run("daemon-reload")

    def act(self, action: str, unit: str, *, wait: bool = True) -> None:
        if wait or action not in ACTIONS:
            super().act(action, unit)
        else:
            self._run("--no-block", action, unit)

    def restart(self, units: Sequence[str], *, unless_started_since: float | None = None) -> None:
        if not units:
            return
        # Units without an [Install] section cannot be enabled; that is not an error.
        self._run("enable", "--quiet", *units, check=False)
        if unless_started_since is not None:
            fresh = self._started_since(units, unless_started_since)
            units = [u for u in units if u not in fresh]
        if units:
            self._run("restart", *units)

    def _started_since(self, units: Sequence[str], since: float) -> set[str]:
        """Units active since `since` (monotonic seconds; systemd's monotonic clock is the same)."""
        proc = self._run("show", "--property=Id,ActiveState,ActiveEnterTimestampMonotonic", "--", *units,
                         check=False)
        fresh = set()
        for block, unit in zip(proc.stdout.strip().split("\n\n"), units, strict=False):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            stamp = props.get("ActiveEnterTimestampMonotonic", "0")
            if props.get("ActiveState") == "active" and stamp.isdigit() and int(stamp) / 1e6 >= since:
                fresh.add(unit)
        return fresh

    def stop(self, units: Sequence[str]) -> None:
        if units:
            self._run("stop", *units)

    def disable(self, units: Sequence[str]) -> None:
        if units:
            self._run("disable", "--now", "--quiet", *units, check=False)

    def states(self, units: Sequence[str]) -> dict[str, str]:
        if not units:
            return {}
        proc = self._run("show", "--property=Id,ActiveState,LoadState", "--", *units, check=False)
        states: dict[str, str] = {}
        for block, unit in zip(proc.stdout.strip().split("\n\n"), units, strict=False):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("LoadState") == "not-found":
                states[unit] = "not-found"
            else:
                states[unit] = props.get("ActiveState", "unknown")
        for unit in units:
            states.setdefault(unit, "unknown")
        return states
