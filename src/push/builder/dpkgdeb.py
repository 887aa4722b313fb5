"""The one module that runs dpkg-deb (and `dpkg --print-architecture`) for the builder.

Argument lists, never a shell; a timeout on every call; stderr captured into the error.
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from push.builder.errors import BuildError, stderr_summary
from push.debian import parse_control

# Compression formats dpkg-deb can write, with the level we use when none is given.
# zstd is fast and Debian 12's dpkg reads it; xz and gzip are for fleets whose dpkg is older
# (zstd support came with dpkg 1.21.18, Debian 12 / Ubuntu 21.10).
COMPRESSIONS: dict[str, int | None] = {"zstd": 3, "xz": 6, "gzip": 6, "none": None}
DEFAULT_COMPRESSION = "zstd"

BUILD_TIMEOUT = 3600.0
QUERY_TIMEOUT = 120.0


def _run(args: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise BuildError(f"{args[0]} not found: install dpkg (apt-get install dpkg)") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took longer than {timeout:.0f} s: gave up") from None
    if proc.returncode != 0:
        raise BuildError(f"{what} failed: {stderr_summary(proc.stderr)}")
    return proc.stdout.decode(errors="replace")


def check_compression(compression: str, level: int | None) -> None:
    if compression not in COMPRESSIONS:
        raise BuildError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if level is not None and compression != "none":
        top = 22 if compression == "zstd" else 9
        if not 0 <= level <= top:
            raise BuildError(f"compression level {level} is out of range for {compression} (0-{top})")


def build(tree: Path, out: Path, compression: str = DEFAULT_COMPRESSION, level: int | None = None,
          timeout: float = BUILD_TIMEOUT) -> None:
    """`dpkg-deb --build` the staged `tree` (which holds DEBIAN/control) into `out`."""
    check_compression(compression, level)
    if level is None:
        level = COMPRESSIONS[compression]
    args = ["dpkg-deb", "--root-owner-group", f"-Z{compression}"]
    if level is not None:
        args.append(f"-z{level}")
    args += ["--build", str(tree), str(out)]
    _run(args, "dpkg-deb --build", timeout)


def fields(deb: Path) -> dict[str, str]:
    """The control fields of a .deb, names lowercased (see push.debian.parse_control)."""
    return parse_control(_run(["dpkg-deb", "--field", str(deb)], f"dpkg-deb --field {deb}", QUERY_TIMEOUT))


@contextmanager
def data_members(deb: Path, timeout: float = BUILD_TIMEOUT) -> Iterator[tarfile.TarFile]:
    """Stream the filesystem tarball of a .deb (`dpkg-deb --fsys-tarfile`), one member at a time."""
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise BuildError("dpkg-deb not found: install dpkg (apt-get install dpkg)") from None
    assert proc.stdout is not None and proc.stderr is not None
    problem: str | None = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            yield tar
        # Drain the rest so dpkg-deb never blocks on a full pipe.
        while proc.stdout.read(1 << 20):
            pass
    except tarfile.TarError as e:
        problem = str(e)
        proc.kill()
    finally:
        proc.stdout.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problem = f"gave up after {timeout:.0f} s"
        err = proc.stderr.read()
        proc.stderr.close()
    if problem is not None or proc.returncode != 0:
        raise BuildError(f"cannot read {deb}: {stderr_summary(err) if err.strip() else problem}")


def native_architecture() -> str:
    """This machine's Debian architecture (amd64, arm64, ...)."""
    return _run(["dpkg", "--print-architecture"], "dpkg --print-architecture", QUERY_TIMEOUT).strip()
