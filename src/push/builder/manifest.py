"""push.toml: an app's declarative build, kept in its repository, so it needs no build script.

    app = "hello"                                   # optional; must match `push release APP`
    description = "Hello, the example service"      # the package's one-line synopsis
    depends = ["python3 (>= 3.11)", "libc6 | musl"] # Debian relations, versions and | kept
    units = ["nginx.service"]                       # extra units to restart (not shipped here)
    restart_units = true                            # false: start stopped units, leave running ones
    compression = "zstd"                            # zstd (default), xz, gzip or none

    [files]                                         # destination = source (relative to push.toml)
    "/usr/local/bin/hello" = "build/hello"
    "/etc/hello/" = "config/"                       # a directory is copied whole
    "/etc/systemd/system/hello.service" = { src = "hello.service", mode = "0644" }

    [python]                                        # pip install --target TARGET PROJECT
    project = "."
    target = "/usr/lib/hello"

    [health]                                        # how pulld tells that the release works
    http = "http://127.0.0.1:${PORT}/health"        # 2xx = healthy; ${VAR} from /etc/default/APP
    command = ["/usr/local/bin/hello", "--check"]   # exit 0 = healthy
    within = 30                                     # seconds after the units start (default 30)
    interval = 30                                   # seconds between checks while it runs
    timeout = 10                                    # seconds one check may take
    revert = true                                   # not healthy in time: go back (default true)

Every mistake is reported with the file and what is wrong in it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from push.builder.errors import BuildError
from push.errors import InvalidName, InvalidRelease
from push.health import HealthCheck
from push.names import check_unit

MANIFEST_NAME = "push.toml"

_TOP_KEYS = frozenset({
    "app", "description", "package_prefix", "architecture", "maintainer", "depends", "units",
    "restart_units", "compression", "compression_level", "files", "python", "health",
})
_PATH_RE = re.compile(r"/[A-Za-z0-9._+/-]*")


@dataclass(frozen=True)
class FileSpec:
    """One `[files]` entry: copy `src` (file or directory) to `dest` in the package."""

    dest: str
    src: Path
    mode: int | None = None


@dataclass(frozen=True)
class PythonSpec:
    """`[python]`: install `project` and its dependencies with pip into `target`."""

    project: Path
    target: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    app: str | None = None
    description: str | None = None
    package_prefix: str | None = None
    architecture: str | None = None
    maintainer: str | None = None
    depends: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    restart_units: bool = True
    compression: str | None = None
    compression_level: int | None = None
    files: tuple[FileSpec, ...] = ()
    python: PythonSpec | None = None
    health: HealthCheck | None = None

    @property
    def directory(self) -> Path:
        return self.path.parent


def find(path: Path) -> Path:
    """The manifest file named by `path`: the file itself, or push.toml in that directory."""
    candidate = path / MANIFEST_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise BuildError(f"no manifest at {candidate}")
    return candidate


def load(path: Path) -> Manifest:
    """Read and check a push.toml; BuildError naming the file and the mistake."""
    path = find(path).absolute()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BuildError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise BuildError(f"cannot read manifest {path}: {e.strerror}") from None
    return _parse(path, data)


def _fail(path: Path, what: str) -> BuildError:
    return BuildError(f"{path}: {what}")


def _string(path: Path, data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise _fail(path, f"{key} must be a non-empty string, got {value!r}")
    return value


def _strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _dest(path: Path, dest: str) -> str:
    pure = PurePosixPath(dest)
    if not dest.startswith("/") or ".." in pure.parts or "\\" in dest:
        raise _fail(path, f"files: destination {dest!r} must be an absolute path without '..'")
    if len(pure.parts) > 1 and pure.parts[1] == "DEBIAN":
        raise _fail(path, f"files: destination {dest!r} is inside DEBIAN/, which the builder writes")
    return dest


def _mode(path: Path, dest: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise _fail(path, f"files: {dest!r}: mode {value!r} is not octal (e.g. \"0755\")") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o7777:
        raise _fail(path, f"files: {dest!r}: mode must be an octal string such as \"0755\"")
    return value


def _files(path: Path, value: Any) -> tuple[FileSpec, ...]:
    if not isinstance(value, dict):
        raise _fail(path, "[files] must be a table of \"/destination\" = \"source\"")
    specs = []
    for dest, spec in value.items():
        _dest(path, dest)
        mode = None
        if isinstance(spec, dict):
            unknown = set(spec) - {"src", "mode"}
            if unknown:
                raise _fail(path, f"files: {dest!r}: unknown key(s) {', '.join(sorted(unknown))} (use src, mode)")
            if "mode" in spec:
                mode = _mode(path, dest, spec["mode"])
            spec = spec.get("src")
        if not isinstance(spec, str) or not spec:
            raise _fail(path, f"files: {dest!r}: source must be a path relative to the manifest")
        src = (path.parent / spec).absolute()
        if not src.exists() and not src.is_symlink():
            raise _fail(path, f"files: {dest!r}: source {spec!r} does not exist ({src})")
        specs.append(FileSpec(dest=dest, src=src, mode=mode))
    return tuple(specs)


def _python(path: Path, value: Any) -> PythonSpec:
    if not isinstance(value, dict) or set(value) != {"project", "target"}:
        raise _fail(path, "[python] must have exactly project = \"DIR\" and target = \"/usr/lib/NAME\"")
    project, target = value["project"], value["target"]
    if not isinstance(project, str) or not isinstance(target, str):
        raise _fail(path, "[python] project and target must be strings")
    project_dir = (path.parent / project).absolute()
    if not (project_dir / "pyproject.toml").is_file() and not (project_dir / "setup.py").is_file():
        raise _fail(path, f"[python] project {project!r} is not a Python project (no pyproject.toml in {project_dir})")
    if not _PATH_RE.fullmatch(target):
        raise _fail(path, f"[python] target {target!r} must be an absolute path of letters, digits and . _ + - /")
    return PythonSpec(project=project_dir, target=_dest(path, target))


def _health(path: Path, value: Any) -> HealthCheck:
    if not isinstance(value, dict):
        raise _fail(path, "[health] must be a table (http, command, within, interval, timeout, revert)")
    try:
        check = HealthCheck.from_dict(value, "[health]")
        check.encode()  # its size in the release's metadata
    except InvalidRelease as e:
        raise _fail(path, str(e)) from None
    return check


def _parse(path: Path, data: dict[str, Any]) -> Manifest:
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS))
        raise _fail(path, f"unknown key(s) {', '.join(sorted(unknown))} (known: {known})")
    level = data.get("compression_level")
    if level is not None and (not isinstance(level, int) or isinstance(level, bool)):
        raise _fail(path, f"compression_level must be an integer, got {level!r}")
    restart = data.get("restart_units", True)
    if not isinstance(restart, bool):
        raise _fail(path, f"restart_units must be true or false, got {restart!r}")
    units = _strings(path, data, "units")
    for unit in units:
        try:
            check_unit(unit)
        except InvalidName:
            raise _fail(path, f"units: {unit!r} is not a systemd unit name (such as app.service)") from None
    prefix = data.get("package_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise _fail(path, f"package_prefix must be a string, got {prefix!r}")
    manifest = Manifest(
        path=path,
        app=_string(path, data, "app"),
        description=_string(path, data, "description"),
        package_prefix=prefix,
        architecture=_string(path, data, "architecture"),
        maintainer=_string(path, data, "maintainer"),
        depends=_strings(path, data, "depends"),
        units=units,
        restart_units=restart,
        compression=_string(path, data, "compression"),
        compression_level=level,
        files=_files(path, data.get("files", {})),
        python=_python(path, data["python"]) if "python" in data else None,
        health=_health(path, data["health"]) if "health" in data else None,
    )
    if not manifest.files and manifest.python is None:
        raise _fail(path, "nothing to package: add a [files] table (or [python])")
    return manifest
