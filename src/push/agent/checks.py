"""Running a release's declared health check on this server: its HTTP URL and its command.

The only module of the agent that runs health checks. Each run has a timeout; a command
runs in its own session and, when it hangs past its timeout, its whole process group is
killed (so a shell's children go too). `${VAR}` in the URL and in the command's arguments
comes from the app's environment file, `ROOT/etc/default/APP` (where a server gives an app
its port), plus `PUSH_APP` and `PUSH_ROOT` (the root: `/` on a real server). Used by
`push.agent.judge`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from push.agent.supervisor import parse_environment_file
from push.health import HealthCheck, expand

OUTPUT_TAIL = 2000   # characters of a check's output kept for the report


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str        # what failed, in words, with the tail of the check's output ("" when it passed)
    seconds: float


def environment(app: str, root: Path | None) -> dict[str, str]:
    """The variables a check of `app` may use: ROOT/etc/default/APP, PUSH_APP, PUSH_ROOT."""
    base = root or Path("/")
    env = {"PUSH_APP": app, "PUSH_ROOT": str(base)}
    with contextlib.suppress(OSError):
        env.update(parse_environment_file((base / "etc/default" / app).read_text(errors="replace")))
    return env


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_TAIL else "…" + text[-OUTPUT_TAIL:]


def run(check: HealthCheck, app: str, root: Path | None) -> CheckResult:
    """Run the check's HTTP request, then its command; the first failure is the result."""
    started = time.monotonic()
    env = environment(app, root)
    try:
        url = expand(check.http, env) if check.http is not None else None
        argv = [expand(a, env) for a in check.command]
    except KeyError as e:
        where = (root or Path("/")) / "etc/default" / app
        return CheckResult(False, f"the health check uses ${{{e.args[0]}}}, which {where} does not set",
                           time.monotonic() - started)
    if url is not None:
        failed = _http(url, check.timeout)
        if failed:
            return CheckResult(False, failed, time.monotonic() - started)
    if argv:
        left = max(0.1, check.timeout - (time.monotonic() - started))
        failed = _command(argv, left, env, root, limit=check.timeout)
        if failed:
            return CheckResult(False, failed, time.monotonic() - started)
    return CheckResult(True, "", time.monotonic() - started)


# Health checks go to the server itself: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, timeout: float) -> str | None:
    """None if `url` answers 2xx within `timeout`, else what went wrong."""
    try:
        with _OPENER.open(urllib.request.Request(url, headers={"User-Agent": "pulld-health"}),
                          timeout=timeout) as resp:
            status = resp.status
            body = resp.read(4096)
    except urllib.error.HTTPError as e:
        body = e.read(4096) if e.fp is not None else b""
        return f"GET {url}: HTTP {e.code}" + (f": {_tail(body.decode(errors='replace'))}" if body.strip() else "")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"GET {url}: {reason}"
    if not 200 <= status < 300:
        return f"GET {url}: HTTP {status}: {_tail(body.decode(errors='replace'))}"
    return None


def _command(argv: list[str], timeout: float, env: dict[str, str], root: Path | None, limit: float) -> str | None:
    """None if the command exits 0 within `timeout`; else its exit and output's tail. A
    command still running at the timeout is killed with its whole process group."""
    run_env = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
    run_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    run_env.update(env)
    if root is not None:
        run_env["PUSH_SANDBOX_ROOT"] = str(root)
        inside = root / argv[0].lstrip("/")
        if argv[0].startswith("/") and inside.exists():  # as the sandbox supervisor runs ExecStart
            argv = [str(inside), *argv[1:]]
    shown = " ".join(argv)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=run_env, cwd=str(root or "/"), start_new_session=True)
    except OSError as e:
        return f"cannot run {shown}: {e.strerror}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a child that left the group still holds the pipe
            proc.kill()
            out = b""
        text = _tail(out.decode(errors="replace"))
        killed = f"{shown} did not finish within its {limit:g}s timeout: killed"
        return killed + (f"; its output: {text}" if text else "")
    text = _tail(out.decode(errors="replace"))
    if proc.returncode != 0:
        return f"{shown} exited {proc.returncode}" + (f": {text}" if text else "")
    return None
