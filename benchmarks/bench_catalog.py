"""Catalogue cold start at scale: with the catalogue index, and as before it (listing), in one run.

Local store (default): 1,000 servers x 20 apps x 50 releases = 1,000,000 releases, made as
benchmarks/bench_server.py makes them (raw local-store objects, server files, agent
reports); with --dir the bucket is kept and reused by later runs. --gcs: the same shape at
--servers 20 (20,000 releases) on fake-gcs-server, made through the Store API.

In-process: the cold load by listing debs/ (what every start cost before the index), the
first index write (encode + put), the index's size, its read and header parse, the cold load
from it, the first questions a fleet view asks (the newest release of every app, every
deployed release), a full re-list with the index, and a rewrite after one new release.
As processes: `push releases APP` and `push serve` until /healthz is 200 (and its memory),
with this tree and, with --before SRC, with another tree's src/ (e.g. the commit before:
`git archive BASE src | tar -x -C /tmp/before`), interleaved, --repeat times each.

    .venv/bin/python benchmarks/bench_catalog.py [--dir DIR] [--before SRC] [--repeat 3]
    .venv/bin/python benchmarks/bench_catalog.py --gcs [--servers 20] [--before SRC]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import bench_server  # noqa: E402
from healthz import wait_until_healthy  # noqa: E402

from emulators import free_port, start_fake_gcs  # noqa: E402
from push import catalog as catalog_mod  # noqa: E402
from push import catalogindex, layout, serverfile, status, timestamps  # noqa: E402
from push.catalog import Catalog  # noqa: E402
from push.catalogindex import CatalogIndex  # noqa: E402
from push.errors import NotFound  # noqa: E402
from push.store import Store, open_store  # noqa: E402
from push.store.local import LocalStore  # noqa: E402

INDEX = layout.catalog_index_key(catalogindex.VERSION)


class Counting:
    """A store that counts metadata reads (stat) and whole-object reads (get); can hide the index."""

    def __init__(self, inner: Store, hide_index: bool = False) -> None:
        self.inner, self.hide_index = inner, hide_index
        self.stats = self.gets = 0

    def stat(self, key: str) -> Any:
        self.stats += 1
        return self.inner.stat(key)

    def get(self, key: str, if_generation_not_match: str | None = None) -> Any:
        if self.hide_index and key == INDEX:
            raise NotFound(f"{key} hidden by the benchmark")
        self.gets += 1
        return self.inner.get(key, if_generation_not_match)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- making the bucket ---------------------------------------------------------------------------


def generate_via_api(args: argparse.Namespace, store: Store) -> None:
    """The bucket of bench_server.generate, every object through the Store API (for GCS)."""
    apps = sorted({a for s in range(args.servers) for a in bench_server.app_names(args, s)})
    infos = [bench_server.release_info(app, n) for app in apps for n in range(args.releases)]

    def put(i: int) -> None:
        info = infos[i]
        store.put(info.release.key, b"deb!", info.to_metadata(), if_absent=True,
                  content_type="application/vnd.debian.binary-package")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(len(infos))))
    for s in range(args.servers):
        server = f"srv{s:04d}"
        names = tuple(bench_server.release_info(a, args.releases - 1).name for a in bench_server.app_names(args, s))
        serverfile.write(store, serverfile.ServerFile(server, names))
        report = status.AgentStatus(server=server, agent_version="bench", time=timestamps.now_text(), hostname=server,
                                    in_sync=True)
        status.write(store, report)


# -- processes ---------------------------------------------------------------------------------


def env_for(src: Path | None, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra, "PYTHONPATH": str(src or ROOT / "src")}
    env.pop("PUSH_STORE", None)
    return env


def push_releases(store_url: str, conf: Path, app: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "push.cli", "releases", app, "--store", store_url, "--config",
                        str(conf)], env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t
    if r.returncode != 0 or app not in r.stdout:
        raise SystemExit(f"push releases failed ({r.returncode}): {r.stderr[-2000:]}")
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (what its start costs whatever the load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push_serve(store_url: str, conf: Path, env: dict[str, str], log_path: Path) -> tuple[float, float, float]:
    """Seconds from starting `push serve` until /healthz answers 200, its RSS then (MB) and
    the CPU seconds it had used."""
    port = free_port()
    with open(log_path, "wb") as log:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "push.cli", "serve", "--store", store_url, "--config",
                                 str(conf), "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", proc, timeout=900, interval=0.05, log=log_path)
            elapsed = time.perf_counter() - t
            return elapsed, rss_mb(proc.pid), cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the run -------------------------------------------------------------------------------------


def listing_and_first_write(store: Store, rows: list[tuple[str, str]]) -> tuple[float, int]:
    """Before the index: a cold load lists debs/ and reads every release's metadata. Then the
    first index write, which a push server makes once on a bucket without one."""
    hidden = Counting(store, hide_index=True)
    cat = Catalog(hidden)  # type: ignore[arg-type]
    seconds, _ = timed(cat.refresh)
    total = len(cat)
    rows.append((f"cold load by listing debs/ (before the index): {total:,} releases",
                 f"{seconds:.1f} s ({hidden.stats:,} metadata reads, {cat.list_pages:,} list pages)"))
    with contextlib.suppress(NotFound):
        store.delete(INDEX)
    cat.store = store
    cat.writes_index = True
    write_seconds, _ = timed(lambda: cat.write_index(force=True))
    size = store.stat(INDEX).size
    rows.append(("first index write (every app encoded, compressed, one put)", f"{write_seconds:.1f} s"))
    rows.append(("index size", f"{size / 1e6:.1f} MB ({size / total:.0f} bytes per release)"))
    return seconds, total


def from_the_index(store: Store, args: argparse.Namespace, listing_seconds: float, total: int,
                   rows: list[tuple[str, str]]) -> str:
    """The cold load from the index, and the first questions a fleet view asks; returns an app."""
    seconds, got = timed(lambda: store.get(INDEX))
    assert got is not None
    parse_seconds, _ = timed(lambda: CatalogIndex.decode(got[0], INDEX))
    rows.append(("index read (one get) / header parse", f"{seconds * 1000:.0f} ms / {parse_seconds * 1000:.0f} ms"))

    counting = Counting(store)
    cat = Catalog(counting)  # type: ignore[arg-type]
    seconds, _ = timed(cat.refresh)
    rows.append(("cold load from the index (+ the journal's tail)",
                 f"{seconds:.2f} s ({counting.gets} object read, {counting.stats} metadata reads, "
                 f"{cat.list_pages} list page); {listing_seconds / seconds:.0f}x faster than listing"))
    assert len(cat) == total, (len(cat), total)

    apps = cat.apps()
    seconds, newest = timed(lambda: [cat.newest(a) for a in apps])
    assert len(apps) == args.servers * args.apps and all(newest)
    rows.append((f"first questions: the newest release of each of {len(apps):,} apps",
                 f"{seconds:.2f} s ({seconds / len(apps) * 1e6:.0f} µs each)"))
    deployed = [r.name for s in range(args.servers) for r in serverfile.read(store, f"srv{s:04d}").releases.values()]
    seconds, _ = timed(lambda: [cat.get(n) for n in deployed])
    rows.append((f"first questions: each of {len(deployed):,} deployed releases",
                 f"{seconds:.2f} s ({seconds / len(deployed) * 1e6:.0f} µs each, {counting.stats} metadata reads)"))
    app = apps[len(apps) // 2]
    seconds, releases = timed(lambda: cat.releases(app))
    rows.append((f"releases(APP) of one app ({len(releases)} releases), first time", f"{seconds * 1000:.1f} ms"))

    stats = counting.stats
    seconds, new = timed(lambda: cat.refresh(full=True))
    keys_only = " (keys only: no object opened)" if store.listing_reads_objects else ""
    rows.append((f"full re-list with the index{keys_only}",
                 f"{seconds:.1f} s ({counting.stats - stats} metadata reads, {len(new)} new)"))
    return apps[0]


def rewrite_after_one_release(store: Store, app: str, args: argparse.Namespace,
                              rows: list[tuple[str, str]]) -> None:
    writer = Catalog(store, writes_index=True)
    writer.refresh()
    one = bench_server.release_info(app, args.releases + int(time.time()) % 100_000)
    catalog_mod.publish(store, one, b"deb!")
    writer.refresh()
    seconds, _ = timed(lambda: writer.write_index(force=True))
    rows.append(("index rewrite after one new release (one app re-encoded, the rest copied)", f"{seconds:.2f} s"))


def in_process(store: Store, args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    listing_seconds, total = listing_and_first_write(store, rows)
    gc.collect()
    app = from_the_index(store, args, listing_seconds, total, rows)
    gc.collect()
    rewrite_after_one_release(store, app, args, rows)
    gc.collect()


def processes(store_url: str, conf: Path, app: str, args: argparse.Namespace, extra_env: dict[str, str],
              workdir: Path, rows: list[tuple[str, str]]) -> None:
    trees: list[tuple[str, Path | None]] = [("now", None)]
    if args.before is not None:
        trees.append(("before", args.before))
    results: dict[tuple[str, str], list[float]] = {}
    rss: dict[str, list[float]] = {}
    for i in range(args.repeat):
        for label, src in trees:
            env = env_for(src, extra_env)
            results.setdefault((label, "releases"), []).append(push_releases(store_url, conf, app, env))
            seconds, mb, cpu = push_serve(store_url, conf, env, workdir / f"serve-{label}-{i}.log")
            results.setdefault((label, "serve"), []).append(seconds)
            results.setdefault((label, "serve CPU"), []).append(cpu)
            rss.setdefault(label, []).append(mb)
            print(f"  run {i + 1} {label}: push releases {results[(label, 'releases')][-1]:.2f} s, "
                  f"push serve {seconds:.2f} s ({cpu:.2f} CPU-s), {mb:,.0f} MB", flush=True)

    def line(label: str, what: str) -> str:
        values = results[(label, what)]
        return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"

    for label, _ in trees:
        rows.append((f"`push releases {app}` as a process ({label})", line(label, "releases")))
        rows.append((f"`push serve` start until /healthz is 200 ({label})", line(label, "serve")))
        rows.append((f"`push serve` CPU seconds until /healthz is 200 ({label})", line(label, "serve CPU")))
        rows.append((f"`push serve` RSS at /healthz 200 ({label})", f"{statistics.median(rss[label]):,.0f} MB"))
    if args.before is not None:
        for what, name in (("releases", f"`push releases {app}`"), ("serve", "`push serve` to /healthz 200")):
            ratio = statistics.median(results[("before", what)]) / statistics.median(results[("now", what)])
            rows.append((f"{name}: before / now (medians)", f"{ratio:.1f}x"))


@contextlib.contextmanager
def gcs_bucket(workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on a fake-gcs-server started here (and stopped by its pid), and the environment to reach it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    emulator = start_fake_gcs(workdir)
    try:
        env = {"STORAGE_EMULATOR_HOST": emulator.url}
        os.environ.update(env)
        client = storage.Client(project="push-bench", credentials=AnonymousCredentials())
        client.create_bucket("bench-catalog")
        client.close()
        yield "gs://bench-catalog", env
    finally:
        emulator.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=None, help="servers (default 1000; 20 with --gcs)")
    ap.add_argument("--apps", type=int, default=20, help="apps per server")
    ap.add_argument("--releases", type=int, default=50, help="releases per app")
    ap.add_argument("--gcs", action="store_true", help="on fake-gcs-server instead of the local store")
    ap.add_argument("--dir", type=Path, help="local store: make the bucket here, or reuse the one made before")
    ap.add_argument("--before", type=Path, metavar="SRC", help="also run push from this src/ tree")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--processes-only", action="store_true",
                    help="skip the in-process figures (the no-index listing takes minutes at a million): "
                         "write the index with this tree, then time the processes")
    args = ap.parse_args()
    args.servers = args.servers or (20 if args.gcs else 1000)
    args.shared_apps = False
    if args.before is not None and not (args.before / "push" / "__init__.py").exists():
        ap.error(f"--before {args.before}: no push package there")

    workdir = Path(tempfile.mkdtemp(prefix="push-bench-catalog-"))
    root = args.dir or workdir
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "skiapush.conf"
    conf.write_text(bench_server.config_text(args))
    rows: list[tuple[str, str]] = []
    load = os.getloadavg()[0]
    app = bench_server.app_names(args, 0)[0]
    try:
        with contextlib.ExitStack() as stack:
            if args.gcs:
                store_url, env = stack.enter_context(gcs_bucket(workdir))
                store = open_store(store_url)
                seconds, _ = timed(lambda: generate_via_api(args, store))
                print(f"made {args.servers * args.apps * args.releases:,} releases on fake-gcs-server "
                      f"in {seconds:.0f} s", flush=True)
            else:
                env = {}
                store = LocalStore(root / "bucket")
                store_url = str(root / "bucket")
                if not (root / "bucket" / "objects" / "server").exists():
                    print(f"making {args.servers * args.apps * args.releases:,} releases in {root} ...", flush=True)
                    figures = bench_server.generate(args, store)
                    print(f"  written raw in {figures['raw_write_s']:.0f} s; the fleet in "
                          f"{figures['fleet_write_s']:.0f} s", flush=True)
            if args.processes_only:
                writer = Catalog(store, writes_index=True)
                writer.refresh()
                seconds, _ = timed(lambda: writer.write_index(force=True))
                rows.append(("index rewrite by this tree (every app's newest row into the header)", f"{seconds:.1f} s"))
            else:
                in_process(store, args, rows)
                print("in-process done", flush=True)
            processes(store_url, conf, app, args, env, workdir, rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    total = args.servers * args.apps * args.releases
    print()
    print(f"| {total:,} releases ({args.servers:,} servers x {args.apps} apps x {args.releases}), "
          f"{'fake-gcs-server' if args.gcs else 'local store'} | result |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print(f"\nload average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
