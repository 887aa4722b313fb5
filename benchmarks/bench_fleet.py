"""Fleet benchmark: N real pulld processes, each with a sandbox root, against one push server.

1. Deploy latency: from one "deploy to every server that runs this app" call until each
   agent reports the new release installed (its status report, read from the bucket),
   for N = 10, 25, 50, with the watch trigger and with polling only (pulld's default
   15 s poll, the original Push's interval). Several deploys per N, alternating between
   two releases (upgrade, then rollback), each a real dpkg install and unit restart.
2. Idle watchers: the push server holding 2,000 idle watch long-polls: its memory before
   and with them, and the time from one deploy call until every watcher has its answer.

Prints the figures with the anchors (15 s original poll, Argo CD's 3-minute default) and
writes docs/benchmarks-fleet.png.

    .venv/bin/python benchmarks/bench_fleet.py [--sizes 10,25,50] [--deploys 4] [--watchers 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from push import status as status_mod
from push.demo.apps import stage
from push.demo.fleet import LocalFleet, bin_path
from push.store import open_store

REPO = Path(__file__).resolve().parent.parent


def push(*args: str) -> str:
    r = subprocess.run([bin_path("push"), *args], capture_output=True, text=True, timeout=300)
    if r.returncode:
        sys.exit(f"push {args[0]} failed: {r.stderr.strip()}")
    return r.stdout


LIGHT_SERVICE = """#!/bin/sh
# A service that costs next to nothing to start, so the figures measure Push, not the app.
echo "hello {version} on ${{PUSH_SERVER_NAME:-?}}"
exec sleep infinity
"""

# Which app the fleet deploys: "light" (a shell service) or "python" (the demo's Python
# HTTP service, whose interpreter start-up alone costs ~0.09 CPU-seconds per restart).
APP_KIND = "light"


def build(work: Path, store: str) -> list[str]:
    names = []
    for version in ("1", "2"):
        time.sleep(1.05 - time.time() % 1)
        tree = stage("hello", version, work / "src" / f"hello-{version}")
        depends = ["--depends", "python3"]
        if APP_KIND == "light":
            (tree / "usr/local/bin/hello").write_text(LIGHT_SERVICE.format(version=version))
            depends = []
        h = hashlib.sha1(version.encode()).hexdigest()
        out = push("release", "hello", "--root", str(tree), "--note", f"v{version}", "--hash", h,
                   *depends, "--store", store)
        names.append(out.strip().splitlines()[-1])
    return names


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def installed_times(store, servers: list[str], release: str, since: float, timeout: float) -> dict[str, float]:
    """Per server, seconds from `since` to the report that shows `release` installed."""
    got: dict[str, float] = {}
    deadline = time.time() + timeout
    while len(got) < len(servers) and time.time() < deadline:
        for server in servers:
            if server in got:
                continue
            report = status_mod.read(store, server)
            app = report.apps.get("hello") if report else None
            if app and app.installed == release and app.state == "ok":
                got[server] = datetime.fromisoformat(report.time.replace("Z", "+00:00")).timestamp() - since
        time.sleep(0.05)
    return got


def deploy_latencies(work: Path, n: int, mode: str, deploys: int) -> tuple[list[float], list[float]]:
    """(per-agent latencies, all-installed time per deploy) for `n` agents in `mode`."""
    root = work / f"{mode}-{n}"
    store_url = f"file://{root / 'bucket'}"
    store = open_store(store_url)
    names = build(root, store_url)
    servers = [f"s{i:03d}" for i in range(n)]
    config = root / "skiapush.conf"
    config.write_text("".join(f'[servers.{s}]\nappNames = ["hello"]\n' for s in servers))
    fleet = LocalFleet(workdir=root / "fleet", store=store_url, config=config, servers=servers,
                       agent_args=[] if mode == "watch" else ["--interval", "15"])
    for s in servers:
        (fleet.root(s) / "etc/default").mkdir(parents=True)
        (fleet.root(s) / "etc/default/hello").write_text("PORT=0\n")
        push("deploy", s, "hello", names[0], "--store", store_url, "--config", str(config))
    per_agent: list[float] = []
    all_done: list[float] = []
    try:
        fleet.start_server()
        for s in servers:
            if mode == "watch":
                fleet.start_agent(s)
            else:
                fleet.push_server, saved = None, fleet.push_server  # agents without --push-url
                fleet.start_agent(s)
                fleet.push_server = saved
        got = installed_times(store, servers, names[0], 0, timeout=300)
        if len(got) < n:
            sys.exit(f"only {len(got)}/{n} agents installed the first release")
        time.sleep(2)
        with httpx.Client(timeout=120) as client:
            for d in range(deploys):
                target = names[(d + 1) % 2]
                t0 = time.time()
                r = client.post(f"{fleet.url}/api/v1/apps/hello/deploy-all", json={"release": target})
                r.raise_for_status()
                got = installed_times(store, servers, target, t0, timeout=120)
                if len(got) < n:
                    sys.exit(f"{mode} N={n}: only {len(got)}/{n} agents installed {target}")
                per_agent += got.values()
                all_done.append(max(got.values()))
                print(f"  {mode:5} N={n:3} deploy {d + 1}: all installed in {max(got.values()):.2f} s", flush=True)
                # With polling, deploy at a random phase of the agents' 15 s poll; otherwise
                # every deploy would land just after a poll and measure the worst case.
                time.sleep(1 + (random.uniform(0, 15) if mode == "poll" else 0))
    finally:
        fleet.stop()
    return per_agent, all_done


async def watchers(work: Path, count: int, servers: int) -> dict[str, float]:
    root = work / "watchers"
    store_url = f"file://{root / 'bucket'}"
    names = build(root, store_url)
    server_names = [f"w{i:02d}" for i in range(servers)]
    config = root / "skiapush.conf"
    config.write_text("".join(f'[servers.{s}]\nappNames = ["hello"]\n' for s in server_names))
    for s in server_names:
        push("deploy", s, "hello", names[0], "--store", store_url, "--config", str(config))
    fleet = LocalFleet(workdir=root / "fleet", store=store_url, config=config, servers=server_names)
    fleet.start_server()
    try:
        pid = fleet.push_server.pid
        assert pid is not None
        base_rss = rss_mb(pid)
        host, port = "127.0.0.1", fleet.server_port
        async with httpx.AsyncClient(timeout=120) as client:
            revs = {s: (await client.get(f"{fleet.url}/api/v1/watch/{s}")).json()["rev"] for s in server_names}
        answered: list[float] = []
        parked = 0

        async def watch(i: int) -> None:
            # A raw HTTP/1.1 long-poll, as light as an agent's, so that the client side
            # (2,000 of them in this one process) does not dominate the measurement.
            nonlocal parked
            s = server_names[i % servers]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /api/v1/watch/{s}?since={revs[s]}&timeout=120 HTTP/1.1\r\n"
                         f"Host: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            parked += 1
            body = await reader.read()
            if b'"changed":true' in body.replace(b" ", b""):
                answered.append(time.time())
            writer.close()

        tasks = [asyncio.create_task(watch(i)) for i in range(count)]
        while parked < count:
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # let every request reach the server and park
        held_rss = rss_mb(pid)
        t0 = time.time()
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{fleet.url}/api/v1/apps/hello/deploy-all", json={"release": names[1]})
        r.raise_for_status()
        deploy_call = time.time() - t0
        await asyncio.gather(*tasks)
        woken = max(answered) - t0
        return {"watchers": count, "answered": len(answered), "rss_idle_mb": base_rss, "rss_held_mb": held_rss,
                "deploy_call_s": deploy_call, "all_woken_s": woken, "servers": servers}
    finally:
        fleet.stop()


def plot(results: dict[str, dict[int, dict[str, float]]], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
                       check=True, capture_output=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, style in (("watch", "o-"), ("poll", "s--")):
        sizes = sorted(results.get(mode, {}))
        if not sizes:
            continue
        ax.plot(sizes, [results[mode][n]["all_p50"] for n in sizes], style, label=f"{mode}: all installed, p50")
        ax.plot(sizes, [results[mode][n]["agent_p99"] for n in sizes], style, alpha=0.45,
                label=f"{mode}: per agent, p99")
    ax.axhline(15, color="grey", linestyle=":", label="original Push poll (15 s)")
    ax.axhline(180, color="red", linestyle=":", label="Argo CD default poll (180 s)")
    ax.axhline(2, color="green", linestyle="-.", label="target: 2 s")
    ax.set_yscale("log")
    ax.set_xlabel("agents (real pulld processes, one push server)")
    ax.set_ylabel("seconds from deploy call to installed")
    ax.set_title("Push: deploy latency across a local fleet")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,25,50")
    ap.add_argument("--modes", default="watch,poll")
    ap.add_argument("--deploys", type=int, default=4)
    ap.add_argument("--watchers", type=int, default=2000)
    ap.add_argument("--watch-servers", type=int, default=1, help="servers the watchers are spread over (default 1)")
    ap.add_argument("--app", choices=("light", "python"), default="light",
                    help="light: a shell service (measures Push); python: the demo's HTTP service")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks-fleet.png")
    args = ap.parse_args()
    global APP_KIND
    APP_KIND = args.app
    print(f"app: {APP_KIND}")
    work = Path(tempfile.mkdtemp(prefix="push-bench-fleet-"))
    results: dict[str, dict[int, dict[str, float]]] = {}
    for mode in filter(None, args.modes.split(",")):
        for n in (int(x) for x in args.sizes.split(",")):
            per_agent, all_done = deploy_latencies(work, n, mode, args.deploys)
            results.setdefault(mode, {})[n] = {
                "agent_p50": statistics.median(per_agent), "agent_p99": pct(per_agent, 99),
                "all_p50": statistics.median(all_done), "all_max": max(all_done)}
    print()
    print("deploy call -> installed (seconds); anchors: original Push polls every 15 s, Argo CD every 180 s")
    print(f"{'trigger':8}{'agents':>7}{'agent p50':>11}{'agent p99':>11}{'all p50':>9}{'all max':>9}"
          f"{'vs 15 s poll':>14}{'vs 180 s':>10}")
    for mode, by_n in results.items():
        for n, r in sorted(by_n.items()):
            print(f"{mode:8}{n:>7}{r['agent_p50']:>11.2f}{r['agent_p99']:>11.2f}{r['all_p50']:>9.2f}"
                  f"{r['all_max']:>9.2f}{15 / r['all_p50']:>13.1f}x{180 / r['all_p50']:>9.0f}x")
    if args.watchers:
        w = asyncio.run(watchers(work, args.watchers, args.watch_servers))
        print()
        print(f"{w['watchers']} idle watchers on {w['servers']} servers: push server RSS {w['rss_idle_mb']:.0f} MB "
              f"idle -> {w['rss_held_mb']:.0f} MB holding them "
              f"({(w['rss_held_mb'] - w['rss_idle_mb']) * 1024 / w['watchers']:.1f} KB each); "
              f"deploy-all call {w['deploy_call_s']:.2f} s; all {w['answered']} woken {w['all_woken_s']:.2f} s "
              f"after the call")
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")
    print(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
