"""pulld health benchmark: from the units' start to the report that says `healthy`.

A real `pulld` process (sandbox root, local store, the sandbox supervisor) installs a release
whose unit is a python3 HTTP server and whose declared check is an HTTP GET of it. Measured
per round, on the wall clock:

- units start -> healthy report: from pulld's `unit.start` log line to the moment
  `status/{server}.json` says `healthy` (the bench polls it every 5 ms);
- units start -> the app answers: the bench's own GETs of the app every 5 ms (the app's
  start-up, which no agent can shorten);
- the check's own time: one GET of the healthy app, as the check does it.

The agent's share is (healthy report - app answers); the target is the check's own time plus
at most 0.5 s. A second case, `units`, has no declared check: healthy after the settle time
(0.5 s here), so its agent share is (healthy report - settle).

    .venv/bin/python benchmarks/bench_health.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agentpkgs import build_deb, publish_deb, set_server_file
from emulators import free_port
from push.agent.supervisor import SandboxSupervisor
from push.errors import PushError
from push.health import HealthCheck
from push.store.local import LocalStore

SERVER = "bench"
SETTLE = 0.5
HTTP = """\
#!/bin/sh
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$PUSH_SANDBOX_ROOT/usr/local/share/{app}"
"""
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 1.0) -> bool:
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            r.read()
            return 200 <= r.status < 300
    except OSError:
        return False


def _unit_start(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "unit.start":
            return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    return None


def one_round(work: Path, n: int, declared: bool) -> dict[str, float]:
    store = LocalStore(work / "store")
    root = work / f"root-{n}"
    port = free_port()
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/web").write_text(f"PORT={port}\n")
    check = HealthCheck(http="http://127.0.0.1:${PORT}/VERSION") if declared else HealthCheck()
    deb = build_deb(work, "web", f"1.{n}", script=HTTP.format(app="web"), compression="none")
    info = publish_deb(store, "web", n, deb, version=f"1.{n}", health=check)
    deb.unlink()
    server = f"{SERVER}{n}{'c' if declared else 'u'}"  # a fresh report per round
    set_server_file(store, server, [info.name])
    log = work / f"pulld-{n}.log"
    argv = [sys.executable, "-m", "push.agent.main", "--store", str(work / "store"), "--root", str(root),
            "--server", server, "--metrics-port", "0", "--interval", "600", "--settle", str(SETTLE)]
    env = {k: v for k, v in os.environ.items() if k != "GCE_METADATA_HOST"}
    healthy = None
    answered: list[float] = []
    stop = threading.Event()

    def knock() -> None:  # the app's first answer, seen from outside every 2 ms
        while not stop.is_set() and not answered:
            t = time.time()
            if _get(f"http://127.0.0.1:{port}/VERSION", 0.5):
                answered.append(t)
            time.sleep(0.002)

    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    knocker = threading.Thread(target=knock, daemon=True)
    knocker.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and healthy is None:
            try:
                got = store.get(f"status/{server}.json")
            except PushError:  # no report yet
                got = None
            if got is not None:
                app = json.loads(got[0]).get("apps", {}).get("web", {})
                if app.get("health") == "healthy":
                    healthy = time.time()
            time.sleep(0.005)
        knocker.join(5)
        started = _unit_start(log)
        assert started is not None and healthy is not None and answered, log.read_text()[-2000:]
        checks = []
        for _ in range(20):
            t = time.perf_counter()
            assert _get(f"http://127.0.0.1:{port}/VERSION")
            checks.append(time.perf_counter() - t)
        return {"to_healthy": healthy - started, "to_answer": answered[0] - started, "check": statistics.median(checks)}
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
        SandboxSupervisor(root).close(stop_units=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for declared in (True, False):
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
            for n in range(1, args.rounds + 1):
                rows.append(one_round(Path(tmp), n, declared))
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        share = [r["to_healthy"] - (r["to_answer"] if declared else SETTLE) for r in rows]
        name = "http check" if declared else f"units only (settle {SETTLE:g}s)"
        print(f"{name}: units start -> healthy report median {med['to_healthy'] * 1000:.0f} ms; "
              f"-> app answers {med['to_answer'] * 1000:.0f} ms; check's own time {med['check'] * 1000:.1f} ms; "
              f"agent's share median {statistics.median(share) * 1000:.0f} ms "
              f"(min {min(share) * 1000:.0f}, max {max(share) * 1000:.0f})")


if __name__ == "__main__":
    main()
