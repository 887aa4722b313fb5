"""Rollout benchmark: a rollout in waves 1,25%,100% with bake 0 against three plain
deploy-and-converge rounds of the same sizes, on one push server and one fleet of agents,
in the same run; and the push server's CPU while it drives.

The agents are bench_agents.py's protocol-speaking agents (pulld's own watch long-poll,
conditional reads, plan and report, no dpkg), which here also report what they installed as
`healthy` (as pulld does once a release's units have settled; settle time 0). The push
server is the real `push serve` on the local store, with `--poll-interval` and
`--rollout-interval` as given. The sequence:

1. baseline: release 2 deployed to wave 1's servers (one `deploy-all` call naming exactly
   those), waiting until every one of them reports it installed and healthy (the benchmark
   reads their reports from the bucket every 0.05 s), then wave 2's new servers, then wave
   3's: the sum of the three rounds;
2. rollout: `POST /api/v1/rollouts` of release 3 (waves 1,25%,100%, bake 0) until
   `GET /api/v1/rollouts/{id}` says completed (read every 0.05 s); the push server's CPU
   seconds over that window (/proc), and the rounds of its driver.

    .venv/bin/python benchmarks/bench_rollout.py [--agents 50] [--poll-interval 0.5] [--rollout-interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import bench_agents as ba

from push import catalog, status
from push.demo.fleet import LocalFleet
from push.rollout.model import parse_waves
from push.store import open_store

WAVES = "1,25%,100%"
LOOK = 0.05


def healthy_agents() -> None:
    """bench_agents' agents, reporting an installed release healthy (settle time 0)."""
    build = ba.SimAgent._report

    def report(self: ba.SimAgent, planned: ba.Plan, working: bool = False) -> ba.report.AgentStatus:
        st = build(self, planned, working)
        for app in st.apps.values():
            if app.installed and app.state == "ok":
                app.health = "healthy"
        return st

    ba.SimAgent._report = report  # type: ignore[method-assign]


def converged(store_url: str, servers: list[str], release: str) -> bool:
    store = open_store(store_url)
    for s in servers:
        rep = status.read(store, s)
        app = rep.apps.get(ba.APP) if rep else None
        if app is None or app.installed != release or app.health != "healthy":
            return False
    return True


def run(n: int, poll_interval: float, rollout_interval: float, timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        work = Path(tmp)
        store_url, config, servers, _, second = ba.setup(work, n)
        third_info, third_data = ba.make_release(3)
        catalog.publish(open_store(store_url), third_info, third_data)
        third = third_info.name
        result: dict[str, object] = {"agents": n, "waves": WAVES, "poll_interval": poll_interval,
                                     "rollout_interval": rollout_interval, "load_before": ba.loadavg(),
                                     "date": datetime.now(UTC).isoformat(timespec="seconds")}
        fleet = LocalFleet(workdir=work / "fleet", store=store_url, config=config, servers=[])
        (work / "fleet" / "logs").mkdir(parents=True, exist_ok=True)
        fleet.start_server(["--poll-interval", str(poll_interval), "--rollout-interval", str(rollout_interval)])
        out = work / "worker-0.json"
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--store", store_url, "--push-url", fleet.url,
                                 "--target", second, "--out", str(out), "--servers", ",".join(servers)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(work / "worker.log", "wb"))  # noqa: SIM115 - closed with the process
        http = httpx.Client(base_url=fleet.url, trust_env=False, timeout=60)
        try:
            assert fleet.push_server is not None and fleet.push_server.pid is not None
            pid = fleet.push_server.pid
            deadline = time.monotonic() + timeout
            while sum(int(s.get("ready", 0)) for s in ba.worker_states([out])) < n:  # type: ignore[call-overload]
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"agents did not start: {(work / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.5)
            time.sleep(3)  # the start's reports and polls settle
            sizes = parse_waves(WAVES, n)
            plan = sorted(servers)

            # 1. Three plain deploy-and-converge rounds.
            rounds = []
            done = 0
            for size in sizes:
                wave = plan[done:size]
                t0 = time.monotonic()
                r = http.post(f"/api/v1/apps/{ba.APP}/deploy-all",
                              json={"release": second, "expected": {s: ba.make_release(1)[0].name for s in wave}})
                r.raise_for_status()
                while not converged(store_url, wave, second):
                    if time.monotonic() - t0 > timeout:
                        raise RuntimeError("a plain round did not converge")
                    time.sleep(LOOK)
                rounds.append(round(time.monotonic() - t0, 2))
                done = size
            result["plain_rounds_s"] = rounds
            result["plain_total_s"] = round(sum(rounds), 2)
            time.sleep(2)

            # 2. The rollout.
            cpu0, t0 = ba.cpu_seconds(pid), time.monotonic()
            r = http.post("/api/v1/rollouts", json={"app": ba.APP, "release": third, "waves": WAVES, "bake": 0,
                                                    "wave_deadline": timeout})
            r.raise_for_status()
            rid = r.json()["id"]
            while True:
                got = http.get(f"/api/v1/rollouts/{rid}").json()
                if got["state"] not in ("running", "paused", "rolling_back"):
                    break
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"the rollout did not end: {got['events'][-5:]}")
                time.sleep(LOOK)
            t1, cpu1 = time.monotonic(), ba.cpu_seconds(pid)
            result["rollout_state"] = got["state"]
            result["rollout_s"] = round(t1 - t0, 2)
            result["rollout_waves"] = sizes
            from push import timestamps

            created = timestamps.parse(got["created"])
            result["wave_seconds"] = [  # from the start, when each wave started and when it was done
                [round((timestamps.parse(w["started"]) - created).total_seconds(), 2),
                 round((timestamps.parse(w["done"]) - created).total_seconds(), 2)] for w in got["waves"]]
            result["ratio"] = round((t1 - t0) / sum(rounds), 2)
            result["server_cpu_s"] = round(cpu1 - cpu0, 2)
            result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
            # CPU of the driver idle (nothing to drive) over the same length, for comparison.
            cpu2, t2 = ba.cpu_seconds(pid), time.monotonic()
            time.sleep(max(3.0, t1 - t0))
            result["server_cpu_pct_idle"] = round(100 * (ba.cpu_seconds(pid) - cpu2) / (time.monotonic() - t2), 1)
            result["load_after"] = ba.loadavg()
            return result
        finally:
            http.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--poll-interval", type=float, default=0.5, help="push serve --poll-interval")
    p.add_argument("--rollout-interval", type=float, default=0.5, help="push serve --rollout-interval")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--push-url", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--servers", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        random.seed()
        healthy_agents()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        asyncio.run(ba.worker(args.store, args.push_url, args.servers.split(","), args.target, args.out, 8))
        return 0
    print(json.dumps(run(args.agents, args.poll_interval, args.rollout_interval, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
