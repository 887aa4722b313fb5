"""Run `push serve` as a real process on 127.0.0.1 for the browser, CLI and watcher tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from emulators import free_port

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PushServerProcess:
    """`push serve` on a free loopback port; stop() ends it by its pid."""

    def __init__(self, store_url: str, config: Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_path = log_path
        argv = [sys.executable, "-m", "push.cli", "serve", "--store", store_url, "--config", str(config),
                "--host", "127.0.0.1", "--port", str(self.port), "--poll-interval", "0.2", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"push serve exited {self.process.returncode}:\n{self.log()}")
            try:
                with _opener.open(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"push serve not ready on {self.url}:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
