"""Release builder benchmark: `push release` of a 200 MB app against dpkg-deb on the same tree.

The app is one large file and many small ones (default 150 MB + 5,000 x 10 KB), staged as
a root directory, once with incompressible data and once with text. For each, in one run:

  default   plain `dpkg-deb --build` of the same tree (xz, dpkg's default); once
  zstd      `dpkg-deb --root-owner-group -Zzstd -z3 --build` of it: the floor the builder is
            held to (1.15x); no upload
  build     `push release APP --root DIR --no-lintian --no-upload -o FILE`: scan, check
            units, write the package, sha256 (what the builder adds to dpkg-deb, no upload)
  push      `push release APP --root DIR --no-lintian`: the same, then the create-only
            upload to a local store on the same disk (which adopts the file)
  before/*  the same two with the builder of another source tree (--before SRC, e.g. an
            older commit's src/ from `git archive`), measured in the same run
  push+lint `push release` with lintian (the default); once
  lintian   lintian alone on the package: every check, and only the error tags Push asks
            for (what push+lint runs); once each

zstd, build, push (and before/*) are run in turn, --repeat times (5), so that the machine's
other work falls on all of them alike; each row shows the best and the median. The machine
is shared: the load average is printed before and after. Peak memory: of the builder's own
Python process (its VmHWM, sampled while it runs), and of the largest process of its run
(dpkg-deb or lintian). CPU is user + system time of the command and its children, which the
machine's other work disturbs less than the wall time. The builder is also run at a quarter
of the size, to show its memory does not grow with the package, and on a one-file app, for
its fixed cost (start-up, imports, git-less naming, the store), with the import time of
`push release` from `python -X importtime`. Push's bytecode is compiled first, as
`pip install` leaves it.

    .venv/bin/python benchmarks/bench_build.py [--large-mb 150] [--small-files 5000] [--skip-xz]
        [--repeat 5] [--before /tmp/old/src] [--skip-lintian]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
GIT_HASH = "0" * 40
UNIT = ("[Unit]\nDescription=bench\n\n[Service]\nExecStart=/usr/local/bin/bench\n\n"
        "[Install]\nWantedBy=multi-user.target\n")
# The installed `push` command, as a user runs it (python -m would add runpy's imports).
PUSH = [str(Path(sys.executable).with_name("push"))] if Path(sys.executable).with_name("push").exists() \
    else [sys.executable, "-m", "push.cli"]


@dataclass
class Run:
    seconds: float
    size: int
    cpu: float = 0.0  # user + system seconds, children included
    builder_peak_mb: float | None = None  # the push process itself
    tree_peak_mb: float | None = None  # largest process of the run (self or a child)


@dataclass
class Series:
    """Several runs of one measurement: the best counts, the median shows the spread."""

    runs: list[Run]

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda run: run.seconds)

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)


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


def timed(argv: list[str], output: Path | None = None, watch: bool = False, env: dict[str, str] | None = None) -> Run:
    """Run `argv`; its wall time, CPU time, the size of `output`, and peak memory (see the module doc)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
    return Run(seconds, size, rusage.ru_utime + rusage.ru_stime, peak[0] / 1024 if watch else None,
               rusage.ru_maxrss / 1024)


def _env(src: Path | None) -> dict[str, str] | None:
    """The environment that runs Push from `src` instead of the installed tree."""
    return None if src is None else {**os.environ, "PYTHONPATH": str(src)}


def push_release(tree: Path, store: Path, *extra: str, src: Path | None = None) -> Run:
    shutil.rmtree(store, ignore_errors=True)
    argv = [*PUSH, "release", "bench", "--root", str(tree), "--note", "benchmark", "--hash", GIT_HASH,
            "--store", str(store), *extra]
    run = timed(argv, watch=True, env=_env(src))
    if "--no-upload" not in extra:
        from push.store.local import LocalStore

        (info,) = LocalStore(store).list("debs/")
        run.size = info.size
    return run


def warm(tree: Path) -> None:
    """Read the whole tree once, so that every run finds it in the page cache."""
    for path in tree.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(8 * MB):
                    pass


def lintian_alone(deb: Path, every_check: bool) -> Run:
    from push.builder import checks

    args = ["lintian", "--fail-on", "none", "--tag-display-limit", "0"]
    if not every_check:
        args += ["--tags", ",".join(checks.lintian_error_tags())]
    return timed([*args, str(deb)], deb)


def bench(kind: str, work: Path, large_mb: int, small_files: int, skip_xz: bool, repeat: int,
          before: Path | None, lint: bool) -> dict[str, Series]:
    tree = work / f"{kind}-tree"
    make_tree(tree, kind, large_mb, small_files)
    plain = debian_copy(tree, work / f"{kind}-plain")
    warm(tree)
    store = work / f"{kind}-store"
    zstd_deb, build_deb = work / "zstd.deb", work / "build.deb"
    measures = {
        "zstd": lambda: timed(["dpkg-deb", "--root-owner-group", "-Zzstd", "-z3", "--build", str(plain),
                               str(zstd_deb)], zstd_deb, watch=True),
        "build": lambda: push_release(tree, store, "--no-lintian", "--no-upload", "-o", str(build_deb)),
        "push": lambda: push_release(tree, store, "--no-lintian"),
    }
    if before is not None:
        measures["before/build"] = lambda: push_release(tree, store, "--no-lintian", "--no-upload", "-o",
                                                        str(build_deb), src=before)
        measures["before/push"] = lambda: push_release(tree, store, "--no-lintian", src=before)
    series: dict[str, Series] = {}
    if not skip_xz:
        series["default"] = Series([timed(["dpkg-deb", "--build", str(plain), str(work / "default.deb")],
                                          work / "default.deb", watch=True)])
    for _ in range(repeat):  # in turn, so the machine's other work falls on all alike
        for name, measure in measures.items():
            # No run pays for deleting the previous run's 200 MB output.
            zstd_deb.unlink(missing_ok=True)
            build_deb.unlink(missing_ok=True)
            run = measure()
            if name.endswith("build"):
                run.size = build_deb.stat().st_size
            series.setdefault(name, Series([])).runs.append(run)
    if lint:
        series["push+lint"] = Series([push_release(tree, store)])
        push_release(tree, store, "--no-lintian", "--no-upload", "-o", str(build_deb))
        series["lintian/all"] = Series([lintian_alone(build_deb, every_check=True)])
        series["lintian/errors"] = Series([lintian_alone(build_deb, every_check=False)])
    for name in ("default.deb", "zstd.deb", "build.deb"):
        (work / name).unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(plain)
    shutil.rmtree(tree)
    return series


def fixed_cost(work: Path, repeat: int) -> tuple[Series, float]:
    """`push release` of a one-file app (start-up, imports, naming, the store), and the import time."""
    tree = work / "tiny"
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "usr/local/bin/tiny").write_text("#!/bin/sh\necho tiny\n")
    store = work / "tiny-store"
    series = Series([push_release(tree, store, "--no-lintian") for _ in range(repeat)])
    shutil.rmtree(store, ignore_errors=True)
    script = PUSH[1:] if PUSH[0] == sys.executable else PUSH  # python -m push.cli, or the push script
    argv = [sys.executable, "-X", "importtime", *script, "release", "tiny", "--root", str(tree), "--note", "n",
            "--hash", GIT_HASH, "--store", str(store), "--no-lintian"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    imports = sum(int(m[1]) for m in re.finditer(r"import time:\s+(\d+) \|", proc.stderr)) / 1e6
    return series, imports


def compile_bytecode(src: Path | None) -> None:
    """Write Push's bytecode as `pip install` does, so no run compiles it (this machine sets
    PYTHONDONTWRITEBYTECODE, which would otherwise make every run compile every module)."""
    import compileall

    if src is None:
        import push

        compileall.compile_dir(Path(push.__file__).parent, quiet=1)
    else:
        compileall.compile_dir(src, quiet=1)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=int, default=150)
    parser.add_argument("--small-files", type=int, default=5000, help="of 10 KB each")
    parser.add_argument("--skip-xz", action="store_true", help="skip plain dpkg-deb (xz), the slow baseline")
    parser.add_argument("--skip-lintian", action="store_true", help="skip push+lint and lintian alone")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each fast measurement, in turn")
    parser.add_argument("--before", type=Path, default=None, metavar="SRC",
                        help="also run the builder from this source tree (a src/ directory), for before/after")
    args = parser.parse_args()
    total_mb = args.large_mb + args.small_files * 10 / 1024
    compile_bytecode(None)
    if args.before is not None:
        compile_bytecode(args.before)
    print(f"app: 1 file of {args.large_mb} MB + {args.small_files} files of 10 KB = {total_mb:.0f} MB; "
          f"best of {args.repeat}; {os.cpu_count()} CPUs; {load()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        work = Path(tmp)
        for kind in ("random", "text"):
            results[kind] = series = bench(kind, work, args.large_mb, args.small_files, args.skip_xz, args.repeat,
                                           args.before, not args.skip_lintian)
            print(f"\n{kind} data ({load()})")
            print(f"  {'':14} {'best s':>7} {'median s':>9} {'CPU s':>6} {'package MB':>11} {'builder MB':>11} "
                  f"{'largest MB':>11}")
            for name, s in series.items():
                run = s.best
                builder = f"{run.builder_peak_mb:.0f}" if run.builder_peak_mb else "-"
                median = f"{s.median:9.2f}" if len(s.runs) > 1 else f"{'':9}"
                print(f"  {name:14} {run.seconds:7.2f} {median} {run.cpu:6.2f} {run.size / MB:11.1f} {builder:>11} "
                      f"{run.tree_peak_mb:11.0f}")
            zstd = series["zstd"]
            compared = [name for name in series if name not in ("zstd", "default") and not name.startswith("lintian/")]
            print("  against dpkg-deb -Zzstd, best against best: "
                  + ", ".join(f"{name} {series[name].best.seconds / zstd.best.seconds:.2f}x" for name in compared))
            print("                           median against median: "
                  + ", ".join(f"{name} {series[name].median / zstd.median:.2f}x" for name in compared
                              if len(series[name].runs) > 1)
                  + "; CPU, best runs: "
                  + ", ".join(f"{name} {series[name].best.cpu / zstd.best.cpu:.2f}x" for name in compared
                              if len(series[name].runs) > 1))
            if "default" in series:
                print(f"  push is {series['default'].best.seconds / series['push'].best.seconds:.0f}x faster than "
                      f"plain dpkg-deb (xz)")
        (work / "quarter").mkdir()
        small = bench("random", work / "quarter", args.large_mb // 4, args.small_files // 4, True, args.repeat,
                      None, False)
        print(f"\nbuilder peak memory (push, no lintian): {small['push'].best.builder_peak_mb:.0f} MB at "
              f"{total_mb / 4:.0f} MB, {results['random']['push'].best.builder_peak_mb:.0f} MB at {total_mb:.0f} MB")
        tiny, imports = fixed_cost(work, args.repeat)
        print(f"fixed cost: push release of a one-file app {tiny.best.seconds:.3f} s best, {tiny.median:.3f} s "
              f"median; imports of push release {imports:.3f} s (-X importtime, self times summed)")
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
