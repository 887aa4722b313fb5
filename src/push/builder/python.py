"""The one module that runs pip for the builder: a manifest's [python] section.

`pip install --target` puts a Python project and every dependency it declares into one
directory of the package, so the package needs only Debian's python3 and not Debian's
(older, or missing) python3-* libraries. Wheels with machine code are built for the
builder's Python, so the package depends on that minor version of python3; dpkg then
refuses it cleanly on a server whose python3 differs, instead of failing at run time.
No bytecode is shipped (Debian policy; lintian rejects it): the maintainer scripts compile
it on install and remove it before removal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from push.builder.errors import BuildError, stderr_summary
from push.builder.manifest import PythonSpec

PIP_TIMEOUT = 1800.0


def depends() -> list[str]:
    """The python3 relation vendored code needs: the builder's minor version."""
    major, minor = sys.version_info[:2]
    return [f"python3 (>= {major}.{minor})", f"python3 (<< {major}.{minor + 1})"]


def vendor(spec: PythonSpec, target: Path) -> None:
    """Install `spec.project` and its dependencies into `target` (a directory in the staged tree)."""
    target.mkdir(parents=True, exist_ok=True)
    # pip builds a local project in place by default; a private copy of the few files that
    # make the project keeps the source tree clean and lets two builds run side by side.
    with tempfile.TemporaryDirectory(prefix="push-pip-") as tmp:
        project = _copy_project(spec.project, Path(tmp) / "project")
        args = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                "--no-compile", "--no-warn-script-location", "--target", str(target), str(project)]
        env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=PIP_TIMEOUT,
                                  env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise BuildError(f"pip install of {spec.project} took longer than {PIP_TIMEOUT:.0f} s: gave up") from None
        if proc.returncode != 0:
            raise BuildError(f"pip install of {spec.project} failed: {stderr_summary(proc.stderr)}")
    # Console scripts point at the builder's interpreter: the package brings its own launchers.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    # Wheels bundle shared libraries with execute bits; libraries are loaded, never run.
    for lib in target.rglob("*.so*"):
        if lib.is_file() and not lib.is_symlink() and (lib.name.endswith(".so") or ".so." in lib.name):
            lib.chmod(lib.stat().st_mode & ~0o111)


# Left out of the copy: at the top, what is not the project's code; everywhere, caches.
_TOP_LEVEL_SKIP = {".git", ".venv", "venv", "build", "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   "node_modules", "tests", "benchmarks", "docs", "packaging"}


def _skip(directory: str, names: list[str], top: str) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}
    if directory == top:
        skipped |= _TOP_LEVEL_SKIP.intersection(names)
    return skipped


def _copy_project(src: Path, dest: Path) -> Path:
    """The files pip needs to build `src`: its metadata and sources, without caches, tests or VCS."""
    try:
        shutil.copytree(src, dest, ignore=lambda d, names: _skip(d, names, str(src)), symlinks=True)
    except OSError as e:
        raise BuildError(f"cannot copy Python project {src}: {e}") from None
    return dest
