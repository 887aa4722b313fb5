"""Release builder benchmark: `push release` of a 200 MB app against plain dpkg-deb.

The app is one large file and many small ones (default 150 MB + 5,000 x 10 KB), staged as
a root directory, once with incompressible data and once with text. For each, in one run:

  default   plain `dpkg-deb --build` of the same tree (xz, dpkg's default)
  zstd      `dpkg-deb -Zzstd --build` of it (the floor for a zstd package: no upload)
  build     `push release APP --root DIR --no-lintian --no-upload -o FILE`: stage, check
            units, dpkg-deb, sha256 (what the builder adds to dpkg-deb, without the upload)
  push      `push release APP --root DIR --no-lintian`: the same, then the streamed,
            create-only upload to a local store on the same disk
  push+lint the same with lintian (the default of `push release`)

Each fast measurement is the best of --repeat runs (3); the xz and lintian runs are run once.

and prints seconds, package size and ratios. Peak memory: of the builder's own Python
process (its VmHWM, sampled while it runs), and of the largest process of its run
(dpkg-deb or lintian). The builder is also run at a quarter of the size, to show its
memory does not grow with the package.

    .venv/bin/python benchmarks/bench_build.py [--large-mb 150] [--small-files 5000] [--skip-xz]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
GIT_HASH = "0" * 40
UNIT = ("[Unit]\nDescription=bench\n\n[Service]\nExecStart=/usr/local/bin/bench\n\n"
        "[Install]\nWantedBy=multi-user.target\n")


@dataclass
class Run:
    seconds: float
    size: int
    builder_peak_mb: float | None = None  # the push process itself
    tree_peak_mb: float | None = None  # largest process of the run (self or a child)


def _text_block(rng: random.Random, words: list[str], size: int) -> bytes:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(words, k=12)) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def make_tree(root: Path, kind: str, large_mb: int, small_files: int) -> None:
    """A staged root: /usr/local/bin/bench, its unit, one large data file and many small ones."""
    rng = random.Random(42)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]

    def data(size: int) -> bytes:
        return os.urandom(size) if kind == "random" else _text_block(rng, words, size)

    share = root / "usr/local/share/bench"
    share.mkdir(parents=True)
    with open(share / "large.dat", "wb") as f:
        for _ in range(large_mb):
            f.write(data(MB))
    for i in range(small_files):
        d = share / "small" / f"{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.dat").write_bytes(data(10 * 1024))
    binary = root / "usr/local/bin/bench"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexec sleep infinity\n")
    binary.chmod(0o755)
    unit = root / "etc/systemd/system/bench.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(UNIT)


def debian_copy(tree: Path, dest: Path) -> Path:
    """The same tree with a DEBIAN/control, for plain dpkg-deb (hard links: no extra data)."""
    shutil.copytree(tree, dest, copy_function=os.link)
    (dest / "DEBIAN").mkdir()
    (dest / "DEBIAN/control").write_text(
        "Package: bench\nVersion: 1.0\nArchitecture: all\nMaintainer: Bench <bench@example.com>\n"
        "Description: benchmark package\n")
    dest.chmod(0o755)
    return dest


def _vmhwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def timed(argv: list[str], output: Path | None = None, watch: bool = False) -> Run:
    """Run `argv`; its wall time, the size of `output`, and peak memory (see the module doc)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample() -> None:
        while proc.returncode is None:
            kb = _vmhwm_kb(proc.pid)
            if kb:
                peak[0] = max(peak[0], kb)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    if watch:
        sampler.start()
    # wait4 gives the rusage of this child and its descendants: ru_maxrss is the largest of them.
    _, status, rusage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if watch:
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {stderr}")
    size = output.stat().st_size if output is not None and output.exists() else 0
    return Run(seconds, size, peak[0] / 1024 if watch else None, rusage.ru_maxrss / 1024)


def push_release(tree: Path, store: Path, *extra: str) -> Run:
    shutil.rmtree(store, ignore_errors=True)
    argv = [sys.executable, "-m", "push.cli", "release", "bench", "--root", str(tree), "--note", "benchmark",
            "--hash", GIT_HASH, "--store", str(store), *extra]
    run = timed(argv, watch=True)
    # The local store keeps each object as one file: a one-line header, then the package.
    objects = [p for p in (store / "objects" / "debs").rglob("*") if p.is_file()]
    run.size = objects[0].stat().st_size if objects else 0
    return run


def warm(tree: Path) -> None:
    """Read the whole tree once, so that every run finds it in the page cache."""
    for path in tree.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(8 * MB):
                    pass


def best(repeat: int, measure: Callable[[], Run]) -> Run:
    """The fastest of `repeat` runs: the machine's other work only ever adds time."""
    return min((measure() for _ in range(repeat)), key=lambda run: run.seconds)


def bench(kind: str, work: Path, large_mb: int, small_files: int, skip_xz: bool, repeat: int) -> dict[str, Run]:
    tree = work / f"{kind}-tree"
    make_tree(tree, kind, large_mb, small_files)
    plain = debian_copy(tree, work / f"{kind}-plain")
    warm(tree)
    store = work / f"{kind}-store"
    runs: dict[str, Run] = {}
    if not skip_xz:
        runs["default"] = timed(["dpkg-deb", "--build", str(plain), str(work / "default.deb")], work / "default.deb")
    runs["zstd"] = best(repeat, lambda: timed(["dpkg-deb", "-Zzstd", "--build", str(plain), str(work / "zstd.deb")],
                                              work / "zstd.deb"))
    build_deb = work / "build.deb"
    runs["build"] = best(repeat, lambda: push_release(tree, store, "--no-lintian", "--no-upload", "-o", str(build_deb)))
    runs["build"].size = build_deb.stat().st_size
    runs["push"] = best(repeat, lambda: push_release(tree, store, "--no-lintian"))
    runs["push+lint"] = push_release(tree, store)
    for name in ("default.deb", "zstd.deb", "build.deb"):
        (work / name).unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(plain)
    shutil.rmtree(tree)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=int, default=150)
    parser.add_argument("--small-files", type=int, default=5000, help="of 10 KB each")
    parser.add_argument("--skip-xz", action="store_true", help="skip plain dpkg-deb (xz), the slow baseline")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fast measurement; the best counts")
    args = parser.parse_args()
    total_mb = args.large_mb + args.small_files * 10 / 1024
    print(f"app: 1 file of {args.large_mb} MB + {args.small_files} files of 10 KB = {total_mb:.0f} MB")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        work = Path(tmp)
        for kind in ("random", "text"):
            results[kind] = runs = bench(kind, work, args.large_mb, args.small_files, args.skip_xz, args.repeat)
            print(f"\n{kind} data")
            print(f"  {'':10} {'seconds':>8} {'package MB':>11} {'builder peak MB':>16} {'largest process MB':>19}")
            for name, run in runs.items():
                builder = f"{run.builder_peak_mb:.0f}" if run.builder_peak_mb is not None else "-"
                print(f"  {name:10} {run.seconds:8.2f} {run.size / MB:11.1f} {builder:>16} {run.tree_peak_mb:19.0f}")
            if "default" in runs:
                ratio = runs['default'].seconds / runs['push'].seconds
                print(f"  push is {ratio:.1f}x faster than plain dpkg-deb (xz); "
                      f"push+lint {runs['default'].seconds / runs['push+lint'].seconds:.1f}x")
            zstd = runs["zstd"].seconds
            print(f"  against dpkg-deb -Zzstd: build {runs['build'].seconds / zstd:.2f}x, "
                  f"push {runs['push'].seconds / zstd:.2f}x, push+lint {runs['push+lint'].seconds / zstd:.2f}x")
        # Memory against size: the same build at a quarter of the size.
        (work / "quarter").mkdir()
        small = bench("random", work / "quarter", args.large_mb // 4, args.small_files // 4, True, args.repeat)
        print(f"\nbuilder peak memory (push, no lintian): {small['push'].builder_peak_mb:.0f} MB at "
              f"{total_mb / 4:.0f} MB, {results['random']['push'].builder_peak_mb:.0f} MB at {total_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
