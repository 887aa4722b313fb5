"""Fleet-wide write benchmark, in-process: one deploy-all to N servers through the push
server's own write path (push.fleet.deploy_everywhere, each write's trigger re-reading its
server into the fleet view, as `push serve` wires it), on a local store in tmpfs.

Prints the wall and CPU seconds of the call, the fleet view's snapshot builds and the CPU
per server written: what docs/benchmarks.md's "fleet-wide write" figures come from.

    .venv/bin/python benchmarks/bench_fleetwrite.py [--servers 3000,10000]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from push import catalog, config, fleet
from push.fleetview import FleetView
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore
from push.triggers import Triggers

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def release(store: LocalStore, n: int) -> ReleaseInfo:
    info = ReleaseInfo(Release("hello", "bench", "build", T0 + timedelta(hours=n),
                               hashlib.sha1(f"hello{n}".encode()).hexdigest()),
                       note=f"hello {n}", services=("hello.service",))
    catalog.publish(store, info, b"deb")
    return info


def run(n: int, root: Path) -> dict[str, float]:
    conf = root / "skiapush.conf"
    conf.write_text("".join(f'[servers.s{i:05d}]\nappNames = ["hello"]\n' for i in range(n)))
    store = LocalStore(root / "bucket")
    first, second = release(store, 1), release(store, 2)
    cfg = config.load(conf)
    ctx = fleet.Context.open(store, cfg, via="bench")
    view = FleetView(ctx)
    ctx.triggers = Triggers(cfg, on_change=view.refresh_server)
    fleet.deploy_everywhere(ctx, "bench", "hello", first.name, expected={f"s{i:05d}": None for i in range(n)})
    view.refresh(full=True)
    builds = view.builds
    wall, cpu = time.monotonic(), time.process_time()
    out = fleet.deploy_everywhere(ctx, "bench", "hello", second.name)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert out.ok and len(out.outcomes) == n
    assert all(view.snapshot.servers[s].state.apps[0].desired == second.name for s in view.snapshot.servers)
    return {"wall": wall, "cpu": cpu, "builds": view.builds - builds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="3000")
    args = p.parse_args()
    for n in (int(s) for s in args.servers.split(",")):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            r = run(n, Path(tmp))
        print(f"{n} servers: deploy-all {r['wall']:.1f} s, {r['cpu']:.1f} CPU-s "
              f"({r['cpu'] / n * 1000:.1f} ms per server), {r['builds']:.0f} snapshot builds", flush=True)


if __name__ == "__main__":
    main()
