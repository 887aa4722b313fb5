"""The processes of a local fleet: a push server and N agents, started and stopped by pid.

Used by `push demo`, the end-to-end tests and the fleet benchmarks, so that all three run
the real programs (`push serve`, `pulld`) as separate processes, exactly as on servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with _opener.open(url, timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


def bin_path(name: str) -> str:
    """`push` / `pulld` next to this Python (the virtualenv's), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **self.env}, start_new_session=True)
        log.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill9(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalFleet:
    """A push server and agents on this machine, sharing one store."""

    workdir: Path
    store: str
    config: Path
    servers: list[str]
    server_port: int = 0
    agent_args: list[str] = field(default_factory=list)
    server_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    push_server: Process | None = None
    agents: dict[str, Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    def root(self, server: str) -> Path:
        return self.workdir / "servers" / server / "root"

    def start_server(self, extra: list[str] | None = None) -> None:
        self.server_port = self.server_port or free_port()
        self.push_server = Process(
            "push serve",
            [bin_path("push"), "serve", "--no-auth", "--host", HOST, "--port", str(self.server_port),
             "--store", self.store, "--config", str(self.config), *self.server_args, *(extra or [])],
            self.workdir / "logs" / "push-server.log", self.env)
        self.push_server.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.push_server.alive():
                raise RuntimeError(f"push serve exited:\n{self.push_server.log_tail()}")
            try:
                http_get(self.url + "/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"push serve did not answer on {self.url}:\n{self.push_server.log_tail()}")

    def start_agent(self, server: str, extra: list[str] | None = None) -> Process:
        root = self.root(server)
        root.mkdir(parents=True, exist_ok=True)
        argv = [bin_path("pulld"), "--server", server, "--root", str(root), "--store", self.store,
                "--state-dir", str(self.workdir / "servers" / server / "state"), "--metrics-port", "0",
                "--log-format", "text", *self.agent_args, *(extra or [])]
        if self.push_server is not None:
            argv += ["--push-url", self.url]
        agent = Process(f"pulld {server}", argv, self.workdir / "logs" / f"pulld-{server}.log",
                        {**self.env, "PUSH_SERVER_NAME": server})
        agent.start()
        self.agents[server] = agent
        return agent

    def status(self, server: str) -> dict[str, object] | None:
        from push import status as status_mod
        from push.store import open_store

        report = status_mod.read(open_store(self.store), server)
        return report.to_json() if report else None

    def wait_until(self, predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.1,
                   what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self.processes())
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")

    def processes(self) -> list[Process]:
        return [p for p in [self.push_server, *self.agents.values()] if p is not None]

    def stop(self) -> None:
        """Stop the agents (which stop their units), then the server; then any unit left behind."""
        for agent in self.agents.values():
            agent.stop()
        if self.push_server is not None:
            self.push_server.stop()
        for server in self.agents:
            kill_leftover_units(self.root(server))


def kill_leftover_units(root: Path) -> None:
    """Kill unit processes an agent left behind (one killed with -9), by their pid files.

    A pid is only signalled when its start time still matches the pid file, so a
    recycled pid is never hit.
    """
    for pid_file in (root / "run" / "push-units").glob("*.pid"):
        try:
            data = json.loads(pid_file.read_text())
            pid, start = int(data["pid"]), data.get("start")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid <= 1 or start is None or int(stat.rsplit(")", 1)[1].split()[19]) != start:
            continue
        # Its process group first (the unit's children too), else the process alone.
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
                break
            except (ProcessLookupError, PermissionError):
                continue

