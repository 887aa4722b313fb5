"""Liveness benchmark: how soon a stopped agent is shown stale, and what an idle agent writes.

Real processes on one local bucket: `push serve` and `pulld` agents with sandbox roots, at
the defaults unless told otherwise (watch timeout 55 s, watch grace 20 s, report interval
60 s). Measured on the wall clock:

- with a push server: an agent that watches it is stopped with SIGSTOP; the bench asks the
  API (`GET /api/v1/servers/{server}`) every 0.5 s until `stale` is true;
- without one: an agent with no push server is killed; the bench runs the fleet view
  straight from the bucket (what `push status` does) every 0.5 s until `stale` is true;
- an idle agent's bucket writes: for `--idle` seconds, every write of its report
  (`status/{server}.json`, seen by its generation, polled every 0.1 s: heartbeats are at
  least 0.9 intervals apart) and every change-journal entry it adds, scaled to an hour.

`--pulld` and `--push` choose the programs, so the same bench measures another checkout
(the "before" figures: `--pulld /work/main/.venv/bin/pulld`).

    .venv/bin/python benchmarks/bench_liveness.py [--idle 300] [--watch-timeout 55] [--watch-grace 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from emulators import free_port
from push.errors import NotFound
from push.store.local import LocalStore

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
BIN = Path(sys.executable).parent


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _agent(args: argparse.Namespace, work: Path, store: str, server: str, *extra: str) -> subprocess.Popen[bytes]:
    root = work / server / "root"
    root.mkdir(parents=True)
    return _start([args.pulld, "--server", server, "--root", str(root), "--store", store, "--state-dir",
                   str(work / server / "state"), "--metrics-port", "0", "--log-format", "text", *extra],
                  work / f"pulld-{server}.log")


def _until(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def _stale_via_api(url: str, server: str) -> bool:
    with _OPENER.open(f"{url}/api/v1/servers/{server}", timeout=5) as r:
        return bool(json.loads(r.read())["stale"])


def _stale_direct(store_dir: Path, conf: Path, server: str) -> bool:
    from push import fleet
    from push.config import load
    from push.fleetview import FleetView

    ctx = fleet.direct_context(LocalStore(store_dir), load(str(conf), required=True), via="bench")
    state = FleetView(ctx).state(server)
    return bool(next(s for s in state.servers if s.server == server).stale)


def with_push_server(args: argparse.Namespace, work: Path, store_dir: Path, conf: Path, out: dict[str, object]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = _start([args.push, "serve", "--no-auth", "--port", str(port), "--store", str(store_dir), "--config",
                    str(conf), "--watch-grace", f"{args.watch_grace:g}"], work / "serve.log")
    agent = None
    try:
        _until(lambda: _ok(url + "/healthz"), 30, "push serve")
        agent = _agent(args, work, str(store_dir), "watched", "--push-url", url, "--watch-timeout",
                       f"{args.watch_timeout:g}")
        _until(lambda: _contact(url, "watched"), 60, "the agent's first watch")
        time.sleep(args.settle)  # somewhere in its long-poll, not right at its start
        os.kill(agent.pid, signal.SIGSTOP)
        out["push_server_stale_s"] = round(_until(lambda: _stale_via_api(url, "watched"), 300, "stale"), 1)
    finally:
        if agent is not None:
            _stop(agent)
        _stop(serve)


def _ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _contact(url: str, server: str) -> bool:
    with _OPENER.open(f"{url}/api/v1/servers/{server}", timeout=5) as r:
        return json.loads(r.read())["last_contact"] is not None


def without_push_server(args: argparse.Namespace, work: Path, store_dir: Path, conf: Path,
                        out: dict[str, object]) -> None:
    agent = _agent(args, work, str(store_dir), "alone", "--report-interval", f"{args.report_interval:g}")
    try:
        store = LocalStore(store_dir)
        _until(lambda: _exists(store, "status/alone.json"), 60, "the agent's first report")
        time.sleep(args.settle)
        agent.kill()
        agent.wait()
        out["direct_stale_s"] = round(_until(lambda: _stale_direct(store_dir, conf, "alone"), 900, "stale"), 1)
    finally:
        _stop(agent)


def _exists(store: LocalStore, key: str) -> bool:
    try:
        store.stat(key)
        return True
    except NotFound:
        return False


def idle_writes(args: argparse.Namespace, work: Path, store_dir: Path, out: dict[str, object]) -> None:
    agent = _agent(args, work, str(store_dir), "idle", "--report-interval", f"{args.report_interval:g}")
    store = LocalStore(store_dir)
    try:
        _until(lambda: _exists(store, "status/idle.json"), 60, "the agent's first report")
        time.sleep(5)  # past its start-up reports
        journal_before = sum(1 for i in store.list("changes/") if i.key.endswith("~idle"))
        last = store.stat("status/idle.json").generation
        writes, start = 0, time.monotonic()
        while time.monotonic() - start < args.idle:
            gen = store.stat("status/idle.json").generation
            if gen != last:
                writes, last = writes + 1, gen
            time.sleep(0.1)
        journal = sum(1 for i in store.list("changes/") if i.key.endswith("~idle")) - journal_before
        hours = args.idle / 3600
        out["idle_report_writes_per_hour"] = round(writes / hours, 1)
        out["idle_journal_writes_per_hour"] = round(journal / hours, 1)
    finally:
        _stop(agent)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pulld", default=str(BIN / "pulld"))
    p.add_argument("--push", default=str(BIN / "push"))
    p.add_argument("--idle", type=float, default=300.0, help="seconds of idle agent to count writes over")
    p.add_argument("--watch-timeout", type=float, default=55.0)
    p.add_argument("--watch-grace", type=float, default=20.0)
    p.add_argument("--report-interval", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds between the agent's start and its stop")
    p.add_argument("--only", choices=("stale", "writes"), help="one half of the bench")
    args = p.parse_args()
    out: dict[str, object] = {"watch_timeout": args.watch_timeout, "watch_grace": args.watch_grace,
                              "report_interval": args.report_interval, "pulld": args.pulld}
    with tempfile.TemporaryDirectory(prefix="bench-liveness-") as tmp:
        work = Path(tmp)
        store_dir = work / "bucket"
        conf = work / "skiapush.conf"
        conf.write_text("".join(f'[servers.{s}]\nappNames = ["app"]\n' for s in ("watched", "alone", "idle")))
        jobs = []
        if args.only != "writes":
            jobs += [with_push_server, without_push_server]
        if args.only != "stale":
            jobs.append(lambda *a: idle_writes(args, work, store_dir, out))
        threads = []
        for job in jobs:
            if job in (with_push_server, without_push_server):
                t = threading.Thread(target=job, args=(args, work, store_dir, conf, out))
            else:
                t = threading.Thread(target=job)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
