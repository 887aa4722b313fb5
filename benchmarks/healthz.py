"""Waiting for a `push serve` process to answer /healthz 200: the one loop the benchmarks
share (bench_catalog.py and bench_server.py time a push server's start with it).

The caller starts the process and takes its start time before the Popen, so the time it
measures includes the interpreter's start-up; this only waits, checking that the process
is still alive between tries (503 means the first look at the bucket is still running).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


class NotHealthy(SystemExit):
    """The push server exited, or did not answer 200 in time (ends the benchmark with the
    end of its log)."""


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 900.0,
                       interval: float = 0.05, log: Path | None = None) -> None:
    """Return once GET {url}/healthz answers 200; NotHealthy if `proc` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=min(60.0, timeout), trust_env=False) as client:
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
                raise NotHealthy(f"push serve exited {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise NotHealthy(f"push serve: no /healthz 200 after {timeout:g} s")
            time.sleep(interval)
