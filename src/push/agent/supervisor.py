"""A small service supervisor for sandbox roots, where there is no systemd.

It reads the units a package put in ROOT/{etc,lib,usr/lib}/systemd/system and runs each
one's ExecStart as a child process in its own session, with Environment=,
EnvironmentFile=, WorkingDirectory= (inside ROOT) and Restart= honoured, its output in
ROOT/var/log/push-units/UNIT.log and its pid in ROOT/run/push-units/UNIT.pid, so that a
pulld restarted after `kill -9` adopts the processes that are still running.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from push.agent.errors import UnitError
from push.agent.services import ServiceManager, UnitFacts
from push.units import UNIT_DIRS

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
# systemd's defaults: at most 5 starts in 10 s, then the unit stays failed.
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL = 10.0
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class UnitFile:
    """The [Service] settings the supervisor understands."""

    name: str
    exec_start: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[tuple[str, bool]] = field(default_factory=list)  # (path, optional)
    working_directory: str | None = None
    restart: str = "no"
    restart_sec: float = 0.1


def _parse_seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|sec|min|m)?\s*", text)
    if not m:
        return 0.1
    value = float(m[1])
    return {"ms": value / 1000, "min": value * 60, "m": value * 60}.get(m[2] or "s", value)


def parse_unit(name: str, text: str) -> UnitFile:
    """Parse a unit file's [Service] section (continuation lines and comments handled)."""
    section = None
    settings: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    unit = UnitFile(name=name, exec_start=[])
    for key, value in settings:
        if key == "ExecStart":
            if not value:
                unit.exec_start = []
            elif not unit.exec_start:
                unit.exec_start = shlex.split(value.lstrip("-@:+!"))
        elif key == "Environment":
            for assignment in shlex.split(value):
                k, sep, v = assignment.partition("=")
                if sep:
                    unit.environment[k] = v
        elif key == "EnvironmentFile":
            unit.environment_files.append((value[1:], True) if value.startswith("-") else (value, False))
        elif key == "WorkingDirectory":
            unit.working_directory = value.lstrip("-")
        elif key == "Restart":
            unit.restart = value
        elif key == "RestartSec":
            unit.restart_sec = _parse_seconds(value)
    return unit


def parse_environment_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class _Service:
    unit: str
    pid: int | None = None
    start_ticks: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    state: str = "inactive"
    exit_code: int | None = None
    stopping: bool = False
    restart_at: float | None = None
    starts: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=START_LIMIT_BURST))
    restarts: int = 0                  # automatic restarts (Restart=) since it was last started by the agent
    active_since: float | None = None  # time.monotonic() of its last start (None: adopted, see _active_for)
    last_exit: int | None = None       # its main process's last exit code


def _active_for(svc: _Service) -> float | None:
    """Seconds since the unit's process started: our own clock, else its start time in /proc."""
    if svc.active_since is not None:
        return time.monotonic() - svc.active_since
    if svc.start_ticks is None:
        return None
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - svc.start_ticks / os.sysconf("SC_CLK_TCK"))


class SandboxSupervisor(ServiceManager):
    """Runs the units of a sandbox root as child processes of the agent."""

    def __init__(self, root: Path, *, stop_timeout: float = STOP_TIMEOUT, monitor_interval: float = 0.2) -> None:
        self.root = Path(root).absolute()
        self.stop_timeout = stop_timeout
        self.run_dir = self.root / "run/push-units"
        self.log_dir = self.root / "var/log/push-units"
        self._services: dict[str, _Service] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._adopt_all()
        self._monitor = threading.Thread(target=self._watch, args=(monitor_interval,), name="supervisor",
                                         daemon=True)
        self._monitor.start()

    # -- unit files ----------------------------------------------------------------------

    def _inside(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def unit_path(self, unit: str) -> Path | None:
        for d in UNIT_DIRS:
            p = self.root / d / unit
            if p.is_file():
                return p
        return None

    def load(self, unit: str) -> UnitFile:
        path = self.unit_path(unit)
        if path is None:
            raise UnitError(f"unit {unit} not found in {self.root}")
        return parse_unit(unit, path.read_text(errors="replace"))

    def command(self, unit: UnitFile) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and working directory the unit runs with."""
        if not unit.exec_start:
            raise UnitError(f"unit {unit.name} has no ExecStart=")
        env = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["PUSH_SANDBOX_ROOT"] = str(self.root)
        env.update(unit.environment)
        for path, optional in unit.environment_files:
            try:
                env.update(parse_environment_file(self._inside(path).read_text(errors="replace")))
            except OSError as e:
                if not optional:
                    raise UnitError(f"unit {unit.name}: EnvironmentFile {path}: {e.strerror}") from None

        def expand(word: str) -> str:
            return _VAR_RE.sub(lambda m: env.get(m[1] or m[2], ""), word)

        argv = [expand(w) for w in unit.exec_start]
        if argv[0].startswith("/") and self._inside(argv[0]).exists():
            argv[0] = str(self._inside(argv[0]))
        cwd = self._inside(unit.working_directory) if unit.working_directory else self.root
        return argv, env, cwd

    # -- pid files and adoption ------------------------------------------------------------

    def _pid_file(self, unit: str) -> Path:
        return self.run_dir / f"{unit}.pid"

    def _write_pid_file(self, svc: _Service) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._pid_file(svc.unit).with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": svc.pid, "start": svc.start_ticks}))
        os.replace(tmp, self._pid_file(svc.unit))

    def _adopt_all(self) -> None:
        """Take over the processes a previous agent started that are still running."""
        if not self.run_dir.is_dir():
            return
        for pid_file in self.run_dir.glob("*.pid"):
            unit = pid_file.name[: -len(".pid")]
            try:
                data = json.loads(pid_file.read_text())
                pid, ticks = int(data["pid"]), data.get("start")
            except (OSError, ValueError, KeyError, TypeError):
                pid_file.unlink(missing_ok=True)
                continue
            if ticks is not None and _start_ticks(pid) == ticks:
                self._services[unit] = _Service(unit, pid=pid, start_ticks=ticks, state="active")
                log.info("adopted running unit", extra={"event": "unit.adopt", "unit": unit, "pid": pid})
            else:
                self._reap(pid)
                pid_file.unlink(missing_ok=True)

    @staticmethod
    def _reap(pid: int) -> int | None:
        """Collect the exit status of a child we lost the Popen of (after a re-exec)."""
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if got == pid else None

    # -- running ---------------------------------------------------------------------------

    def _alive(self, svc: _Service) -> tuple[bool, int | None]:
        """(running?, exit code if it ended and we could learn it)."""
        if svc.popen is not None:
            code = svc.popen.poll()
            return code is None, code
        if svc.pid is None or svc.start_ticks is None:
            return False, svc.exit_code
        if _start_ticks(svc.pid) == svc.start_ticks:
            return True, None
        return False, self._reap(svc.pid)

    def _start(self, unit: str) -> None:
        svc = self._services.setdefault(unit, _Service(unit))
        try:
            argv, env, cwd = self.command(self.load(unit))
        except UnitError:
            svc.state = "failed"
            raise
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{unit}.log", "ab") as out:
            out.write(f"-- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {shlex.join(argv)}\n".encode())
            out.flush()
            try:
                popen = subprocess.Popen(argv, cwd=cwd if cwd.is_dir() else self.root, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            except OSError as e:
                svc.state = "failed"
                out.write(f"-- cannot start: {e}\n".encode())
                raise UnitError(f"unit {unit}: cannot run {argv[0]}: {e.strerror}") from None
        svc.popen, svc.pid = popen, popen.pid
        svc.start_ticks = _start_ticks(popen.pid)
        svc.state, svc.exit_code, svc.stopping, svc.restart_at = "active", None, False, None
        svc.starts.append(time.monotonic())
        svc.active_since = svc.starts[-1]
        self._write_pid_file(svc)
        log.info("unit started", extra={"event": "unit.start", "unit": unit, "pid": popen.pid})

    def _stop(self, svc: _Service) -> None:
        svc.restart_at = None
        alive, _ = self._alive(svc)
        if alive and svc.pid is not None:
            svc.stopping = True
            svc.state = "deactivating"
            self._signal(svc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and self._alive(svc)[0]:
                time.sleep(0.02)
            if self._alive(svc)[0]:
                self._signal(svc.pid, signal.SIGKILL)
                while self._alive(svc)[0]:
                    time.sleep(0.02)
            # Like systemd with a cgroup, a unit is stopped when all of its processes are.
            pid, deadline = svc.pid, time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and self._group_alive(pid):
                self._signal(pid, signal.SIGKILL)
                time.sleep(0.02)
            log.info("unit stopped", extra={"event": "unit.stop", "unit": svc.unit, "pid": svc.pid})
        svc.state = "inactive"
        svc.popen = None
        svc.pid = None
        self._pid_file(svc.unit).unlink(missing_ok=True)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether any live (non-zombie) process is left in the process group."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        # The unit runs in its own session: signal its whole process group, as systemd
        # signals a whole cgroup, so a shell script's children go too.
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _watch(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.poll()
            except Exception:  # the monitor must never die
                log.exception("supervisor monitor failed")

    def poll(self) -> None:
        """Notice units that exited; restart those whose Restart= says so."""
        now = time.monotonic()
        with self._lock:
            for svc in self._services.values():
                if svc.restart_at is not None:
                    if now >= svc.restart_at:
                        svc.restart_at = None
                        try:
                            self._start(svc.unit)
                            svc.restarts += 1
                        except UnitError as e:
                            log.warning("unit restart failed", extra={"event": "unit.fail", "unit": svc.unit,
                                                                      "error": str(e)})
                    continue
                if svc.state not in ("active",) or svc.stopping:
                    continue
                alive, code = self._alive(svc)
                if alive:
                    continue
                svc.exit_code = svc.last_exit = code
                svc.active_since = None
                failed = code != 0  # an adopted process whose status we cannot know counts as failed
                svc.state = "failed" if failed else "inactive"
                svc.popen, svc.pid = None, None
                self._pid_file(svc.unit).unlink(missing_ok=True)
                log.info("unit exited", extra={"event": "unit.exit", "unit": svc.unit, "code": code})
                try:
                    policy = self.load(svc.unit).restart
                    restart_sec = self.load(svc.unit).restart_sec
                except UnitError:
                    continue
                if policy == "always" or (policy in ("on-failure", "on-abnormal", "on-abort") and failed):
                    if len(svc.starts) == START_LIMIT_BURST and now - svc.starts[0] < START_LIMIT_INTERVAL:
                        svc.state = "failed"
                        log.warning("unit start limit hit", extra={"event": "unit.start-limit", "unit": svc.unit})
                    else:
                        svc.state = "activating"
                        svc.restart_at = now + max(restart_sec, 0.05)

    # -- the ServiceManager interface ------------------------------------------------------

    def reload(self) -> None:
        pass  # unit files are read afresh at every start

    def restart(self, units: Sequence[str], *, unless_started_since: float | None = None) -> None:
        # Maintainer scripts never start units in a sandbox root (DPKG_ROOT is set), so
        # `unless_started_since` never applies here.
        errors = []
        with self._lock:
            for unit in units:
                if not unit.endswith(".service"):
                    log.info("unit type not supported in a sandbox root", extra={"event": "unit.unsupported",
                                                                                  "unit": unit})
                    continue
                svc = self._services.get(unit)
                if svc is not None:
                    self._stop(svc)
                try:
                    self._start(unit)
                    self._services[unit].restarts = 0
                except UnitError as e:
                    errors.append(str(e))
        if errors:
            raise UnitError("; ".join(errors))

    def stop(self, units: Sequence[str]) -> None:
        with self._lock:
            for unit in units:
                svc = self._services.get(unit)
                if svc is not None:
                    self._stop(svc)

    def disable(self, units: Sequence[str]) -> None:
        self.stop(units)
        with self._lock:
            for unit in units:
                self._services.pop(unit, None)

    def states(self, units: Sequence[str]) -> dict[str, str]:
        self.poll()
        with self._lock:
            out = {}
            for unit in units:
                svc = self._services.get(unit)
                if svc is not None:
                    out[unit] = svc.state
                elif not unit.endswith(".service"):
                    out[unit] = "unsupported"
                else:
                    out[unit] = "inactive" if self.unit_path(unit) is not None else "not-found"
            return out

    def facts(self, units: Sequence[str]) -> dict[str, UnitFacts]:
        states = self.states(units)
        with self._lock:
            out = {}
            for unit in units:
                svc = self._services.get(unit)
                if svc is None:
                    out[unit] = UnitFacts(state=states[unit])
                    continue
                sub = {"active": "running", "activating": "auto-restart", "failed": "failed"}.get(svc.state, "dead")
                out[unit] = UnitFacts(state=svc.state, sub_state=sub, restarts=svc.restarts,
                                      active_for=_active_for(svc) if svc.state == "active" else None,
                                      last_exit=svc.last_exit)
            return out

    def log_tail(self, unit: str, lines: int) -> list[str]:
        """The last lines of ROOT/var/log/push-units/UNIT.log (read from its last 64 KiB)."""
        path = self.log_dir / f"{unit}.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def pids(self) -> dict[str, int]:
        """unit -> pid of the units running now (tests stop what they started by pid)."""
        with self._lock:
            return {u: s.pid for u, s in self._services.items() if s.pid is not None and self._alive(s)[0]}

    def stop_all(self) -> None:
        with self._lock:
            for svc in list(self._services.values()):
                self._stop(svc)

    def close(self, stop_units: bool = True) -> None:
        """Stop the monitor, and (on a normal exit of the agent) every unit."""
        self._closed.set()
        if stop_units:
            self.stop_all()

    def detach(self) -> None:
        """Stop the monitor only: the units keep running for the next agent to adopt."""
        self._closed.set()
