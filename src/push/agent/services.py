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
import time
from collections.abc import Sequence
from dataclasses import dataclass

from push.agent.errors import UnitError
from push.units import ACTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitFacts:
    """What the service manager knows of one unit, for judging health (push.agent.judge)."""

    state: str                        # ActiveState: active | activating | failed | inactive | ...
    sub_state: str = ""               # SubState: running, auto-restart, exited, ...
    restarts: int = 0                 # automatic restarts since it was last started (NRestarts)
    active_for: float | None = None   # seconds since it last became active (None: not active)
    last_exit: int | None = None      # the main process's last exit status, if it exited


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

    @abc.abstractmethod
    def facts(self, units: Sequence[str]) -> dict[str, UnitFacts]:
        """unit -> its state, restarts, time active and last exit (for health)."""

    @abc.abstractmethod
    def log_tail(self, unit: str, lines: int) -> list[str]:
        """The unit's last `lines` lines of output (the journal, or the supervisor's log)."""

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

    def facts(self, units: Sequence[str]) -> dict[str, UnitFacts]:
        if not units:
            return {}
        proc = self._run("show", "--property=Id,LoadState,ActiveState,SubState,NRestarts,"
                         "ActiveEnterTimestampMonotonic,ExecMainStatus,ExecMainExitTimestampMonotonic",
                         "--", *units, check=False)
        now = time.monotonic()  # systemd's monotonic clock is this one (CLOCK_MONOTONIC)
        out: dict[str, UnitFacts] = {}
        for block, unit in zip(proc.stdout.strip().split("\n\n"), units, strict=False):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            state = "not-found" if props.get("LoadState") == "not-found" else props.get("ActiveState", "unknown")
            entered = props.get("ActiveEnterTimestampMonotonic", "0")
            active_for = (max(0.0, now - int(entered) / 1e6)
                          if state == "active" and entered.isdigit() and int(entered) else None)
            status = props.get("ExecMainStatus", "")
            exited = props.get("ExecMainExitTimestampMonotonic", "0")
            restarts = props.get("NRestarts", "0")
            out[unit] = UnitFacts(state=state, sub_state=props.get("SubState", ""),
                                  restarts=int(restarts) if restarts.isdigit() else 0, active_for=active_for,
                                  last_exit=int(status) if status.isdigit() and exited not in ("", "0") else None)
        for unit in units:
            out.setdefault(unit, UnitFacts(state="unknown"))
        return out

    def log_tail(self, unit: str, lines: int) -> list[str]:
        argv = ["journalctl", "--no-pager", "--quiet", "-o", "cat", "-n", str(lines), "-u", unit]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                  timeout=10, env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"})
        except (subprocess.TimeoutExpired, OSError) as e:
            return [f"(cannot read the journal of {unit}: {e})"]
        return proc.stdout.splitlines()[-lines:]

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
