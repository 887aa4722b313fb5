"""pulld benchmarks: deploy overhead, memory, idle cost, and trigger latency.

1. deploy: one 50 MB package through pulld (the agent's step, and `pulld --once` as a whole
   process) against downloading it and running `dpkg -i` by hand, as ratios in one run.
2. rss: peak RSS of the pulld process while it installs a 100 MB and a 1 GB package.
3. idle: a 1 s poll for --idle-seconds (default 600): object bytes downloaded (beyond the
   conditional reads of the server file), store calls, CPU seconds.
4. latency: server-file change (with the watch trigger) to the start of the install;
   `latency-push-server` does it through a real `push serve` (deploy API -> its watch).

All against a local store in a temp directory, into sandbox roots (dpkg --root).

    .venv/bin/python benchmarks/bench_agent.py [deploy rss idle latency latency-push-server]
        [--idle-seconds 600]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agentpkgs import build_deb, publish_deb, set_server_file
from push.agent.agent import Agent, AgentOptions
from push.agent.dpkg import Dpkg
from push.agent.supervisor import SandboxSupervisor
from push.store import CHUNK_SIZE, Store
from push.store.local import LocalStore

MB = 1024 * 1024


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GCE_METADATA_HOST", None)
    return env


def _publish(store: Store, work: Path, app: str, n: int, size: int, *, unit: bool = False) -> str:
    deb = build_deb(work, app, f"1.{n}", payload_size=size, compression="none", with_unit=unit)
    try:
        return publish_deb(store, app, n, deb, version=f"1.{n}").name
    finally:
        deb.unlink()


def bench_deploy(work: Path, size: int = 50 * MB, rounds: int = 5) -> dict[str, float]:
    store = LocalStore(work / "store")
    name = _publish(store, work, "big", 1, size)
    key = "debs/" + name
    hand, step, once = [], [], []
    for i in range(rounds):
        # By hand: stream the object to a file, then dpkg -i it.
        root = work / f"hand-{i}"
        Dpkg(root).prepare()
        t = time.perf_counter()
        path = work / "hand.deb"
        with store.open(key) as r, open(path, "wb") as f:
            while chunk := r.read(CHUNK_SIZE):
                f.write(chunk)
        subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", f"--log={root}/var/log/dpkg.log",
                        "-i", str(path)], check=True, capture_output=True)
        hand.append(time.perf_counter() - t)
        path.unlink()

        # The agent's step (pulld as a daemon: already running when the change comes).
        root = work / f"step-{i}"
        set_server_file(store, f"step{i}", [name])
        sup = SandboxSupervisor(root)
        agent = Agent(store, AgentOptions(server=f"step{i}", root=root), sup)
        agent.recover()
        t = time.perf_counter()
        assert agent.step()
        step.append(time.perf_counter() - t)
        sup.close()

        # `pulld --once` as a whole process (interpreter start and imports included).
        root = work / f"once-{i}"
        set_server_file(store, f"once{i}", [name])
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "push.agent.main", "--once", "--server", f"once{i}", "--root", str(root),
                        "--store", store.url, "--metrics-port", "0"], check=True, capture_output=True, env=_env())
        once.append(time.perf_counter() - t)
    h, s, o = statistics.median(hand), statistics.median(step), statistics.median(once)
    return {"size_mb": size / MB, "hand_s": h, "step_s": s, "once_s": o, "step_ratio": s / h, "once_ratio": o / h}


_RSS_WRAPPER = """
import resource, sys
from push.agent.main import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def bench_rss(work: Path, sizes: tuple[int, ...] = (100 * MB, 1024 * MB)) -> dict[str, float]:
    out: dict[str, float] = {}
    for size in sizes:
        store = LocalStore(work / f"store-{size}")
        name = _publish(store, work, "huge", 1, size)
        set_server_file(store, "rss", [name])
        root = work / f"rss-{size}"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, "--once", "--server", "rss", "--root", str(root),
                               "--store", store.url, "--metrics-port", "0"], capture_output=True, text=True,
                              env=_env())
        elapsed = time.perf_counter() - t
        assert proc.returncode == 0, proc.stderr[-2000:]
        kb = int(proc.stderr.split("MAXRSS_KB")[1].split()[0])
        out[f"rss_mb_{size // MB}"] = kb / 1024
        out[f"seconds_{size // MB}"] = elapsed
        subprocess.run(["rm", "-rf", str(root), str(work / f"store-{size}")], check=True)
    return out


class _Counting(Store):
    """Counts calls and the object bytes read through open()."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.url, self.lists_metadata = inner, inner.url, inner.lists_metadata
        self.calls: dict[str, int] = {}
        self.bytes_read = 0

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def stat(self, key):  # type: ignore[no-untyped-def]
        self._count("stat")
        return self.inner.stat(key)

    def open(self, key):  # type: ignore[no-untyped-def]
        self._count("open")
        reader = self.inner.open(key)
        outer = self
        orig = reader.read

        def read(size: int = -1) -> bytes:
            data = orig(size)
            outer.bytes_read += len(data)
            return data

        reader.read = read  # type: ignore[method-assign]
        return reader

    def put(self, key, data, metadata=None, **kw):  # type: ignore[no-untyped-def]
        self._count("put")
        return self.inner.put(key, data, metadata, **kw)

    def list_page(self, prefix, token=None, page_size=1000, start_after=None):  # type: ignore[no-untyped-def]
        self._count("list")
        return self.inner.list_page(prefix, token, page_size, start_after)

    def delete(self, key, **kw):  # type: ignore[no-untyped-def]
        self._count("delete")
        return self.inner.delete(key, **kw)


def bench_idle(work: Path, seconds: float, interval: float = 1.0) -> dict[str, float]:
    base = LocalStore(work / "idle-store")
    deb = build_deb(work, "idle", "1.1")
    name = publish_deb(base, "idle", 1, deb).name
    set_server_file(base, "idle", [name])
    store = _Counting(base)
    sup = SandboxSupervisor(work / "idle-root")
    agent = Agent(store, AgentOptions(server="idle", root=work / "idle-root"), sup)
    assert agent.step()  # install, start the unit: then measure the idle steps
    store.calls.clear()
    store.bytes_read = 0
    cpu0 = time.process_time()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    steps = 0
    stop = threading.Event()
    while time.monotonic() - t0 < seconds:
        agent.step(["poll"])
        steps += 1
        stop.wait(interval)
    cpu = time.process_time() - cpu0
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (ch.ru_utime - children0.ru_utime) + (ch.ru_stime - children0.ru_stime)
    sup.close()
    return {"seconds": seconds, "steps": steps, "object_bytes_downloaded": store.bytes_read,
            "stat": store.calls.get("stat", 0), "open": store.calls.get("open", 0),
            "list": store.calls.get("list", 0), "put": store.calls.get("put", 0),
            "cpu_s": cpu, "child_cpu_s": child_cpu}


def bench_latency(work: Path, rounds: int = 10, via_push_server: bool = False) -> dict[str, float]:
    """With `via_push_server`: a real `push serve --no-auth`, and each change is a deploy
    through its API (which wakes its watchers); else a minimal watch endpoint and a direct
    write of the server file."""
    from test_agent_main import WatchServer

    store = LocalStore(work / "lat-store")
    names = []
    for n in (1, 2):
        deb = build_deb(work, "lat", f"1.{n}", with_unit=False)
        names.append(publish_deb(store, "lat", n, deb).name)
    set_server_file(store, "lat", [names[0]])
    if via_push_server:
        from pushserver import PushServerProcess

        config = work / "skiapush.conf"
        config.write_text('[servers.lat]\nappNames = ["lat"]\n')
        watch = PushServerProcess(store.url, config, work / "serve.log", "--no-auth")
        watch.close = watch.stop  # type: ignore[attr-defined]
        import httpx

        client = httpx.Client(trust_env=False, timeout=30)

        def change(name: str) -> None:
            r = client.post(f"{watch.url}/api/v1/servers/lat/apps/lat/deploy", json={"release": name})
            r.raise_for_status()
    else:
        watch = WatchServer()

        def change(name: str) -> None:
            set_server_file(store, "lat", [name])
            watch.bump()
    log_path = work / "lat.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "push.agent.main", "--server", "lat", "--root",
                                 str(work / "lat-root"), "--store", store.url, "--metrics-port", "0",
                                 "--push-url", watch.url, "--interval", "600"], stdout=log, stderr=subprocess.STDOUT,
                                env=_env())
    try:
        def events() -> list[dict]:
            out = []
            for line in log_path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
            return out

        def wait(pred, timeout: float = 30):  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = pred()
                if got:
                    return got
                time.sleep(0.005)
            raise RuntimeError("timed out")

        wait(lambda: any(e.get("event") == "install.done" for e in events()))
        time.sleep(0.5)  # the long-poll is waiting
        latencies = []
        for i in range(rounds):
            time.sleep(0.3)  # the agent is idle, waiting on the long-poll
            seen = len([e for e in events() if e.get("event") == "install.start"])
            t0 = time.time()
            change(names[(i + 1) % 2])
            starts = wait(lambda seen=seen: [e for e in events() if e.get("event") == "install.start"][seen:])
            latencies.append(float(starts[0]["t"]) - t0)
            wait(lambda seen=seen: len([e for e in events() if e.get("event") == "install.done"]) >= seen + 1)
    finally:
        proc.terminate()
        proc.wait(10)
        watch.close()
    return {"rounds": rounds, "median_ms": statistics.median(latencies) * 1000, "max_ms": max(latencies) * 1000,
            "min_ms": min(latencies) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("which", nargs="*", default=["deploy", "rss", "idle", "latency", "latency-push-server"])
    p.add_argument("--idle-seconds", type=float, default=600.0)
    p.add_argument("--rss-sizes", default="100,1024", help="package sizes in MB for the RSS run")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        for which in args.which:
            sub = work / which
            sub.mkdir()
            if which == "deploy":
                results[which] = bench_deploy(sub)
            elif which == "rss":
                results[which] = bench_rss(sub, tuple(int(s) * MB for s in args.rss_sizes.split(",")))
            elif which == "idle":
                results[which] = bench_idle(sub, args.idle_seconds)
            elif which == "latency":
                results[which] = bench_latency(sub)
            elif which == "latency-push-server":
                results[which] = bench_latency(sub, via_push_server=True)
            print(which, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in results[which].items()}), flush=True)


if __name__ == "__main__":
    main()
