"""Push server at fleet scale: 1,000 servers x 20 apps x 50 releases (1,000,000 releases).

Generates the bucket into a local store, starts `push serve` on 127.0.0.1 and measures over
HTTP: the cold start (the bucket read, the catalogue from its index, which is written once
after generation as the first push server on a bucket does; benchmarks/bench_catalog.py
compares it with listing), warm GET /api/v1/fleet and the fleet page, filtered views,
deploys per second, and memory. In-process it measures the fleet
view's refresh after one new release and after one changed server file (the incremental
paths). Results are printed as a Markdown table for docs/benchmarks.md.

The release objects are written straight in the local store's on-disk format (a JSON
header line, then the contents; no fsync), which is how 1,000,000 of them can be made in
about a minute; a sample is written through Store.put first to time that path and to
check that both give byte-identical headers apart from the generation. Server files,
agent reports, history and everything measured go through the Store API.

    .venv/bin/python benchmarks/bench_server.py [--servers 1000] [--apps 20] [--releases 50]
                                                 [--shared-apps] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from push import catalog as catalog_mod
from push import fleet, layout, serverfile, status, timestamps
from push.catalog import Catalog
from push.config import parse
from push.fleetview import FleetView
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from healthz import wait_until_healthy  # noqa: E402

from emulators import free_port  # noqa: E402

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
TOKEN = "bench-token"


def app_names(args: argparse.Namespace, server: int) -> list[str]:
    if args.shared_apps:
        return [f"app{a:02d}" for a in range(args.apps)]
    return [f"app{server * args.apps + a:05d}" for a in range(args.apps)]


def release_info(app: str, n: int) -> ReleaseInfo:
    h = hashlib.sha1(f"{app}/{n}".encode()).hexdigest()
    # A real-looking sha256 (random to a compressor), so the catalogue index is as large as a real one.
    return ReleaseInfo(Release(app, f"user{n % 7}", "build", T0 + timedelta(hours=n), h),
                       dirty=(n % 17 == 0), note=f"change {n} of {app}", services=(f"{app}.service",),
                       sha256=hashlib.sha256(h.encode()).hexdigest(), size=4)


def write_raw(store: LocalStore, info: ReleaseInfo, generation: int) -> None:
    """One release object in the local store's exact on-disk format, without fsync."""
    path = store.root / "objects" / info.release.key
    header = json.dumps({"generation": str(generation), "metadata": info.to_metadata(),
                         "content_type": "application/vnd.debian.binary-package"}).encode() + b"\n"
    try:
        f = open(path, "wb")  # noqa: SIM115
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "wb")  # noqa: SIM115
    with f:
        f.write(header + b"deb!")


def generate(args: argparse.Namespace, store: LocalStore) -> dict[str, float]:
    figures: dict[str, float] = {}
    apps = sorted({a for s in range(args.servers) for a in app_names(args, s)})
    # A sample through the Store API (fsync'd, journaled), to time it and check the format.
    sample = [release_info(apps[0], n) for n in range(min(args.releases, 50))]
    t = time.perf_counter()
    for info in sample:
        catalog_mod.publish(store, info, b"deb!")
    figures["put_per_release_ms"] = (time.perf_counter() - t) / len(sample) * 1000
    check_path = store.root / "objects" / sample[0].release.key
    api_header = json.loads(check_path.read_bytes().split(b"\n", 1)[0])
    write_raw(store, sample[0], int(api_header["generation"]))
    raw_header = json.loads(check_path.read_bytes().split(b"\n", 1)[0])
    assert raw_header == api_header, (raw_header, api_header)
    assert store.stat(sample[0].release.key).metadata == sample[0].to_metadata()

    t = time.perf_counter()
    gen = time.time_ns()
    count = 0
    for app in apps:
        for n in range(args.releases):
            if app == apps[0] and n < len(sample):
                continue
            write_raw(store, release_info(app, n), gen + count)
            count += 1
    figures["raw_write_s"] = time.perf_counter() - t
    figures["releases"] = count + len(sample)

    t = time.perf_counter()
    latest_n = args.releases - 1
    for s in range(args.servers):
        server = f"srv{s:04d}"
        entries = []
        for i, app in enumerate(app_names(args, s)):
            # Most run the newest release; every 7th app runs an older one (out of date).
            n = latest_n if (s + i) % 7 else max(0, latest_n - 3)
            entries.append(release_info(app, n).name)
        serverfile.write(store, serverfile.ServerFile(server, tuple(entries)))
        st = status.AgentStatus(server=server, agent_version="bench", time=timestamps.now_text(), hostname=server,
                                in_sync=True)
        if s % 97 == 0:  # a stale agent now and then
            st.time = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for i, name in enumerate(entries):
            app = app_names(args, s)[i]
            failed = (s * args.apps + i) % 101 == 0
            installed = release_info(app, max(0, latest_n - 5)).name if (s + i) % 53 == 0 else name
            st.apps[app] = status.AppStatus(desired=name, installed=installed,
                                            state="failed" if failed else "ok",
                                            error="dpkg: error processing package" if failed else None,
                                            units={f"{app}.service": "active"})
        status.write(store, st)
    figures["fleet_write_s"] = time.perf_counter() - t
    return figures


def ensure_index(store: LocalStore) -> float | None:
    """Write the catalogue index if the bucket has none (the first push server to start on a
    bucket does so); its seconds, or None if there was one. Every later start reads it."""
    if any(True for _ in store.list(layout.CATALOG_INDEX)):
        return None
    t = time.perf_counter()
    writer = Catalog(store, writes_index=True)
    writer.refresh()
    if writer.index_writer is not None:
        writer.index_writer.join()
    writer.write_index()
    return time.perf_counter() - t


def config_text(args: argparse.Namespace) -> str:
    lines = ["[access]", 'view = ["bench@example.com"]', 'deploy = ["bench@example.com"]', "",
             "[[tokens]]", 'name = "bench"', f'sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"',
             'identity = "bench@example.com"', ""]
    for s in range(args.servers):
        lines.append(f"[servers.srv{s:04d}]")
        lines.append("appNames = [" + ", ".join(f'"{a}"' for a in app_names(args, s)) + "]")
    return "\n".join(lines) + "\n"


def timed_gets(client: httpx.Client, path: str, n: int, headers: dict[str, str]) -> tuple[list[float], int]:
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path, headers=headers)
        r.raise_for_status()
        size = len(r.content)
        times.append((time.perf_counter() - t) * 1000)
    return times, size


def summary(times: list[float]) -> str:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms"


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=20, help="apps per server")
    ap.add_argument("--releases", type=int, default=50, help="releases per app")
    ap.add_argument("--shared-apps", action="store_true",
                    help="every server runs the same apps (apps x releases releases in all) instead of "
                         "its own (servers x apps x releases)")
    ap.add_argument("--dir", type=Path, help="generate here (reused if it holds a bucket already)")
    ap.add_argument("--keep", action="store_true", help="keep the generated bucket")
    ap.add_argument("--requests", type=int, default=20, help="requests per warm measurement")
    ap.add_argument("--deploys", type=int, default=300)
    args = ap.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="push-bench-server-"))
    root.mkdir(parents=True, exist_ok=True)
    store = LocalStore(root / "bucket")
    conf = root / "skiapush.conf"
    conf.write_text(config_text(args))
    config = parse(conf.read_text(), conf)
    figures: dict[str, float] = {}
    if not (root / "bucket" / "objects" / "server").exists():
        print(f"generating {args.servers} servers x {args.apps} apps x {args.releases} releases into {root} ...",
              flush=True)
        figures.update(generate(args, store))
        print(f"  {figures['releases']:,.0f} releases written raw in {figures['raw_write_s']:.0f} s "
              f"(Store.put + journal: {figures['put_per_release_ms']:.2f} ms per release, "
              f"so ~{figures['put_per_release_ms'] * figures['releases'] / 1000:,.0f} s for all); "
              f"server files + agent reports in {figures['fleet_write_s']:.1f} s", flush=True)

    index_write = ensure_index(store)
    if index_write is not None:
        print(f"  catalogue index written in {index_write:.0f} s (as a push server does after its first start)",
              flush=True)

    results: list[tuple[str, str]] = []

    # -- in-process: the fleet view's cold load and incremental refreshes ---------------------
    # A snapshot computes every changed server's state and JSON when it is built (by the
    # poll, a local write or a catalogue refresh); a read joins the cached JSON.
    ctx = fleet.Context.open(store, config, catalog=Catalog(store))
    view = FleetView(ctx)
    t = time.perf_counter()
    ctx.catalog.refresh()
    results.append((f"catalogue cold load in-process ({len(ctx.catalog):,} releases, "
                    f"{ctx.catalog.list_pages:,} list pages)", f"{time.perf_counter() - t:.1f} s"))
    t = time.perf_counter()
    view.refresh(include_catalog=False)
    results.append(("fleet view first snapshot in-process (server files + reports read, every state computed)",
                    f"{time.perf_counter() - t:.1f} s"))
    t = time.perf_counter()
    first = view.state_json()
    results.append(("fleet JSON, first (joins each server's JSON text)",
                    f"{(time.perf_counter() - t) * 1000:.0f} ms, {len(first) / 1e6:.1f} MB JSON"))
    t = time.perf_counter()
    for _ in range(5):
        view.state_json()
    results.append(("fleet JSON, warm (nothing changed)", f"{(time.perf_counter() - t) / 5 * 1000:.1f} ms"))
    t = time.perf_counter()
    view.refresh(include_catalog=False)
    results.append(("bucket poll, nothing changed (list server/, status/, requests/; check every server)",
                    f"{(time.perf_counter() - t) * 1000:.0f} ms"))

    # One new release of an app that runs on one server (or all, with --shared-apps).
    app0 = app_names(args, 0)[0]
    new = release_info(app0, args.releases + 10 + int(time.time()) % 100_000)  # unique per run
    catalog_mod.publish(store, new, b"deb!")
    reads = view.object_reads
    catalog_seconds = []
    catalog_refresh = ctx.catalog.refresh

    def timed_catalog_refresh(full: bool = False) -> list[ReleaseInfo]:
        t0 = time.perf_counter()
        try:
            return catalog_refresh(full)
        finally:
            catalog_seconds.append(time.perf_counter() - t0)

    ctx.catalog.refresh = timed_catalog_refresh  # type: ignore[method-assign]
    t = time.perf_counter()
    found = view.refresh_catalog()
    t_all = time.perf_counter() - t
    ctx.catalog.refresh = catalog_refresh  # type: ignore[method-assign]
    t = time.perf_counter()
    state = view.state_json()
    t_state = time.perf_counter() - t
    assert found and new.name.encode() in state
    results.append(("after one new release: catalogue refresh", f"{catalog_seconds[0] * 1000:.1f} ms"))
    results.append(("after one new release: next snapshot built (changed servers recomputed)",
                    f"{(t_all - catalog_seconds[0]) * 1000:.0f} ms"))
    results.append(("after one new release: fleet JSON", f"{t_state * 1000:.0f} ms"))

    sf = serverfile.read(store, "srv0001")
    serverfile.write(store, sf.with_release(release_info(app_names(args, 1)[0], 1).release))
    t = time.perf_counter()
    changed = view.refresh(include_catalog=False)
    t_poll = time.perf_counter() - t
    t = time.perf_counter()
    view.state_json()
    t_state = time.perf_counter() - t
    assert changed == {"srv0001"} and view.object_reads == reads + 1
    results.append(("after one changed server file: bucket poll and next snapshot (1 object read)",
                    f"{t_poll * 1000:.0f} ms"))
    results.append(("after one changed server file: fleet JSON", f"{t_state * 1000:.1f} ms"))

    # A deploy by this process: the write, then re-reading that server into the next snapshot.
    target = release_info(app_names(args, 2)[0], 2)
    times = []
    for i in range(20):
        name = release_info(target.app, 2 + i % 2).name
        t = time.perf_counter()
        fleet.deploy(ctx, "bench", "srv0002", target.app, name)
        t_write = time.perf_counter()
        view.refresh_server("srv0002")
        times.append(((t_write - t) * 1000, (time.perf_counter() - t_write) * 1000))
    results.append(("a local deploy in-process: the write (server file + 3 history keys) / refresh_server",
                    f"median {statistics.median(w for w, _ in times):.1f} ms / "
                    f"{statistics.median(r for _, r in times):.1f} ms"))
    del view, ctx

    # -- over HTTP: a real `push serve` -------------------------------------------------------
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "serve.log", "wb")  # noqa: SIM115
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "push.cli", "serve", "--store", str(root / "bucket"),
                             "--config", str(conf), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_until_healthy(url, proc, timeout=600, interval=0.2, log=root / "serve.log")
        with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
            results.append(("push serve: start until /healthz is 200 (catalogue from its index)",
                            f"{time.perf_counter() - t:.1f} s"))
            client.get("/api/v1/fleet", headers=headers)  # compute once
            client.get("/", headers={**headers, "accept": "text/html"})
            times, size = timed_gets(client, "/api/v1/fleet", args.requests, headers)
            results.append((f"GET /api/v1/fleet, warm ({size / 1e6:.1f} MB)", summary(times)))
            times, size = timed_gets(client, "/api/v1/fleet?server=srv0042", args.requests, headers)
            results.append((f"GET /api/v1/fleet?server=srv0042 ({size / 1e3:.0f} kB)", summary(times)))
            times, size = timed_gets(client, "/api/v1/servers/srv0042", args.requests, headers)
            results.append((f"GET /api/v1/servers/srv0042 ({size / 1e3:.0f} kB)", summary(times)))
            times, size = timed_gets(client, "/", args.requests, {**headers, "accept": "text/html"})
            results.append((f"GET / fleet page, warm, first page of servers ({size / 1e6:.2f} MB)", summary(times)))
            times, size = timed_gets(client, "/?all=1", max(5, args.requests // 4), {**headers, "accept": "text/html"})
            results.append((f"GET /?all=1 fleet page, warm, all {args.servers} servers ({size / 1e6:.1f} MB)",
                            summary(times)))
            times, size = timed_gets(client, f"/servers/srv0001/apps/{app_names(args, 1)[0]}", args.requests,
                                     {**headers, "accept": "text/html"})
            results.append((f"GET release picker ({args.releases} releases)", summary(times)))
            results.append(("push serve memory (RSS)", f"{rss_mb(proc.pid):,.0f} MB"))

            # Deploys: each a compare-and-swap of one server file plus three history objects.
            # Every job deploys a release other than the one there now (read first), so each
            # is a real change.
            jobs = []
            for i in range(args.deploys):
                s = (i * 37) % args.servers
                a = app_names(args, s)[(i // args.servers) % args.apps]
                current = serverfile.read(store, f"srv{s:04d}").release_of(a)
                n = (i * 7) % args.releases
                if current is not None and current.name == release_info(a, n).name:
                    n = (n + 1) % args.releases
                jobs.append((f"srv{s:04d}", a, release_info(a, n).name))
            # What one durable write costs on this disk right now (a deploy makes four:
            # the server file and three history objects, each fsync'd with its directory).
            put_times = []
            for i in range(20):
                t = time.perf_counter()
                store.put(f"bench/fsync-probe-{i}", b"x")
                put_times.append((time.perf_counter() - t) * 1000)
            results.append(("one Store.put of a small object on this disk (file + directory fsync)",
                            summary(put_times)))
            half = args.deploys // 2
            changed = 0
            t = time.perf_counter()
            for server, app, name in jobs[:half]:
                r = client.post(f"/api/v1/servers/{server}/apps/{app}/deploy", json={"release": name}, headers=headers)
                r.raise_for_status()
                changed += r.json()["changed"]
            seq = half / (time.perf_counter() - t)
            results.append((f"deploys per second, one client, sequential ({changed} of {half} changed)",
                            f"{seq:.0f}/s"))

            async def parallel(batch: list[tuple[str, str, str]]) -> tuple[float, int]:
                async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as ac:
                    sem = asyncio.Semaphore(8)
                    done = []

                    async def one(server: str, app: str, name: str) -> None:
                        async with sem:
                            r = await ac.post(f"/api/v1/servers/{server}/apps/{app}/deploy",
                                              json={"release": name}, headers=headers)
                            r.raise_for_status()
                            done.append(r.json()["changed"])

                    t0 = time.perf_counter()
                    await asyncio.gather(*(one(*job) for job in batch))
                    return len(batch) / (time.perf_counter() - t0), sum(done)

            par, changed = asyncio.run(parallel(jobs[half:]))
            results.append((f"deploys per second, 8 concurrent clients ({changed} of {len(jobs) - half} changed)",
                            f"{par:.0f}/s"))
            t = time.perf_counter()
            client.get("/api/v1/fleet", headers=headers)
            results.append(("GET /api/v1/fleet right after those deploys",
                            f"{(time.perf_counter() - t) * 1000:.0f} ms"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"| {args.servers:,} servers x {args.apps} apps x {args.releases} releases"
          f"{' (shared apps)' if args.shared_apps else ''} | result |")
    print("|---|---|")
    for what, value in results:
        print(f"| {what} | {value} |")
    if figures:
        print(f"\ngeneration: {figures['releases']:,.0f} releases raw in {figures['raw_write_s']:.0f} s; "
              f"Store.put+journal {figures['put_per_release_ms']:.2f} ms/release; "
              f"server files + reports {figures['fleet_write_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
