"""Build one release, check it, name it, and upload it: the steps of `push release`, in order.

Cheap checks come first (app name, source state, the store answers and the name is free),
then the scan or staging of the files, the package (push.builder.debarchive, or dpkg-deb where
the compressor's command is missing) with the unit check running meanwhile, and lintian,
which reads the package while it is hashed from the page cache and flushed to disk. Only a
package that passed everything is uploaded, create-only, and journalled through
`catalog.publish`; a local store adopts the file (written in its `adoption_dir()`) instead
of copying it.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from push import catalog
from push.builder import checks, control, debarchive, dpkgdeb, git, manifest, python, staging
from push.builder.background import Background
from push.builder.errors import BuildError
from push.errors import Conflict, NotFound
from push.names import check_app
from push.release import Release, ReleaseInfo
from push.store import ObjectInfo, Store

if TYPE_CHECKING:  # push.signing loads cryptography: imported only for a signed build
    from push.signing import SigningKey

_HASH_RE = re.compile(r"[0-9a-f]{40}")
_HOST_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class BuildRequest:
    """What to build: an app and exactly one of a staged root, a manifest, or a prebuilt .deb."""

    app: str
    root: Path | None = None
    manifest: Path | None = None
    deb: Path | None = None
    note: str | None = None
    note_from_git: bool = False
    depends: Sequence[str] = ()
    package_prefix: str | None = None
    architecture: str | None = None
    maintainer: str | None = None
    description: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    repo: Path | None = None
    git_hash: str | None = None
    require_clean: bool = False
    lintian: bool = True
    # Signs the release statement into the metadata (docs/trust.md); None: an unsigned release.
    signing_key: SigningKey | None = None
    # Who and when; taken from the environment and the clock when not given.
    user: str | None = None
    host: str | None = None
    now: datetime | None = None


@dataclass
class BuiltRelease:
    """A checked package on disk and the release it will be."""

    info: ReleaseInfo
    path: Path
    warnings: list[str] = field(default_factory=list)
    # Whether `path` is the builder's own file, which an upload may hand over to the store
    # (False for a prebuilt --deb, which stays the user's).
    owned: bool = True

    @property
    def name(self) -> str:
        return self.info.name


def current_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def current_host() -> str:
    """This machine's name (fully qualified when it can be), kept to the characters a release name may hold."""
    name = socket.getfqdn()
    if name.split(".")[0] in ("localhost", "") or name.endswith(".localdomain"):
        name = socket.gethostname()  # /etc/hosts names only loopback: the plain hostname says more
    return _HOST_CHARS.sub("", name) or "localhost"


def default_maintainer(user: str, host: str) -> str:
    """`USER <USER@HOST>`; a host that is no mail domain gets the reserved .invalid suffix, honestly."""
    domain = host
    if "." not in host or host.endswith((".local", ".localdomain")) or host.startswith("localhost"):
        domain = f"{host}.invalid"
    return f"{user} <{user}@{domain}>"


def _source_state(req: BuildRequest, loaded: manifest.Manifest | None) -> git.SourceState | None:
    if req.git_hash is not None:
        if not _HASH_RE.fullmatch(req.git_hash):
            raise BuildError(f"--hash {req.git_hash!r} is not a 40-hex git commit hash (lowercase)")
        return None
    if req.repo is not None:
        repo = git.find_repo([req.repo])
        if repo is None:
            raise BuildError(f"{req.repo} is not in a git repository")
    else:
        candidates = [p for p in (loaded.directory if loaded else None, req.root, req.deb) if p is not None]
        candidates.append(Path.cwd())
        repo = git.find_repo(candidates)
        if repo is None:
            looked = ", ".join(dict.fromkeys(str(p) for p in candidates))
            raise BuildError(f"not in a git repository (looked at {looked}): build from the app's repository, "
                             "or name it with --repo DIR, or give the commit with --hash")
    return git.source_state(repo)


def _note(req: BuildRequest, source: git.SourceState | None) -> str:
    if req.note_from_git:
        if source is None:
            raise BuildError("--note-from-git needs a git repository, and --hash was given instead")
        note = git.last_subject(source.repo)
    else:
        note = req.note or ""
    note = control.one_line(note, "the note")
    if not note:
        raise BuildError("the note is empty: say what this release is with --note TEXT")
    return note


def _name_taken(release: Release, store: Store) -> Conflict:
    return Conflict(f"release {release.name} already exists in {store.url}: two builds in the same second? "
                    "Build again")


def _check_name_free(store: Store, release: Release) -> None:
    """Fail now, not after the build, when the store is unreachable or the name is taken."""
    try:
        store.stat(release.key)
    except NotFound:
        return
    raise _name_taken(release, store)


@dataclass(frozen=True)
class _PackageSettings:
    """How to build the package: the request's options over the manifest's, checked before any work."""

    package: str
    compression: str
    level: int | None
    depends: list[str]
    architecture: str | None
    maintainer: str | None
    synopsis: str
    declared_units: tuple[str, ...]
    restart_units: bool
    python_target: str | None

    @classmethod
    def resolve(cls, req: BuildRequest, loaded: manifest.Manifest | None) -> _PackageSettings:
        def setting(name: str) -> Any:  # the command line wins over the manifest
            value = getattr(req, name)
            return value if value is not None or loaded is None else getattr(loaded, name)

        compression = setting("compression") or dpkgdeb.DEFAULT_COMPRESSION
        level = setting("compression_level")
        dpkgdeb.check_compression(compression, level)
        prefix = setting("package_prefix")
        architecture = setting("architecture")
        if architecture is not None:
            control.check_architecture(architecture)
        maintainer = setting("maintainer")
        return cls(
            package=control.package_name(req.app, control.DEFAULT_PREFIX if prefix is None else prefix),
            compression=compression,
            level=level,
            depends=control.parse_depends([*(loaded.depends if loaded else ()), *req.depends]),
            architecture=architecture,
            maintainer=control.one_line(maintainer, "the maintainer") if maintainer else None,
            synopsis=control.one_line(setting("description") or f"{req.app}, released with Push", "the description"),
            declared_units=loaded.units if loaded else (),
            restart_units=loaded.restart_units if loaded else True,
            python_target=loaded.python.target if loaded and loaded.python else None,
        )


def _quiet(stage: str) -> None:
    pass


def build(req: BuildRequest, workdir: Path, store: Store | None = None, *, adoptable: bool = False,
          on_stage: Callable[[str], None] = _quiet) -> BuiltRelease:
    """Build and check the release `req` describes, in `workdir` (which the caller removes).

    With `store`, first make sure it answers and the release's name is free there. With
    `adoptable`, the package is written where `store` can adopt it (its adoption_dir(), if it
    has one) for `upload(..., adopt=True)`; it is removed if the build fails, and is the
    caller's otherwise. `on_stage` hears each stage as it starts (`push release` shows them
    on a terminal, so a long build is never silent).
    """
    check_app(req.app)
    if len([p for p in (req.root, req.manifest, req.deb) if p is not None]) != 1:
        raise BuildError("give exactly one of --root DIR, --manifest FILE or --deb FILE")
    loaded = manifest.load(req.manifest) if req.manifest is not None else None
    if loaded is not None and loaded.app is not None and loaded.app != req.app:
        raise BuildError(f"{loaded.path} is the manifest of app {loaded.app!r}, not {req.app!r}")
    if req.deb is not None:
        shaping = [name for name in ("package_prefix", "architecture", "maintainer", "description", "compression",
                                     "compression_level") if getattr(req, name) is not None]
        if req.depends:
            shaping.insert(0, "depends")
        if shaping:
            options = ", ".join("--" + name.replace("_", "-") for name in shaping)
            raise BuildError(f"{options}: a prebuilt package (--deb) is uploaded as it is, and cannot be changed")
    settings = _PackageSettings.resolve(req, loaded) if req.deb is None else None

    warnings: list[str] = []
    source = _source_state(req, loaded)
    if source is not None and source.dirty:
        if req.require_clean:
            raise BuildError(f"{source.repo} is dirty ({', '.join(source.reasons)}) and --require-clean was given")
        warnings.append(f"{source.repo} is dirty ({', '.join(source.reasons)}): the release is marked dirty")
    note = _note(req, source)
    now = (req.now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    release = Release(app=req.app, user=req.user or current_user(), host=req.host or current_host(), time=now,
                      hash=source.hash if source is not None else str(req.git_hash))
    if store is not None:
        _check_name_free(store, release)

    if settings is None:
        assert req.deb is not None
        path, extra, services = _use_prebuilt(req.deb, workdir, warnings)
    else:
        direct = debarchive.can_write(settings.compression, settings.level)
        on_stage(f"staging the files of {req.app}")
        if loaded is not None:
            tree = staging.stage_manifest(loaded, workdir / "tree")
        else:
            assert req.root is not None
            # The archive writer reads a --root directory where it lies; dpkg-deb needs a copy
            # with DEBIAN/ inside.
            tree = staging.scan_root(req.root) if direct else staging.stage_root(req.root, workdir / "tree")
        dirty = source is not None and source.dirty
        on_stage(f"staged {tree.files} files ({tree.installed_kib} KiB); compressing ({settings.compression}) "
                 f"and checking {len(tree.units)} unit(s)")
        package_dir = (store.adoption_dir() if store is not None and adoptable else None) or workdir
        path, extra, services = _build_package(settings, tree, release, now, dirty, note, workdir,
                                               package_dir, direct, warnings)
    lint = None
    try:
        sealing = _Sealing(path, durable=settings is not None)  # the user's own --deb needs no fsync
        # lintian reads the package while it is hashed and flushed.
        on_stage(f"checking {path.name} ({path.stat().st_size // 1024} KiB)" + (" with lintian" if req.lintian else ""))
        lint = Background(checks.lintian, path) if req.lintian else None
        sha256, size = sealing.finish()
        if lint is not None:
            lint.result()
    except BaseException:
        if lint is not None:
            lint.join()  # no lintian left running on a file about to go
        if settings is not None:
            path.unlink(missing_ok=True)
        raise
    info = ReleaseInfo(release=release, dirty=bool(source and source.dirty), note=note, services=services,
                       sha256=sha256, size=size, extra=extra)
    if req.signing_key is not None:
        from push.signing import sign_release

        info = sign_release(info, req.signing_key)
    return BuiltRelease(info=info, path=path, warnings=warnings, owned=settings is not None)


class _Sealing:
    """The package's sha256 and size, taken while the file is flushed to disk (`durable`) in a thread.

    The hash cannot be taken while the package is written (the data member's size, in the
    header before the data, is known only at the end), so it reads the fresh file back from
    the page cache (3-4 GB/s with SHA extensions), while the disk finishes the fsync's work.
    """

    def __init__(self, path: Path, durable: bool) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in finish()
        self._sync = Background(os.fsync, self._file.fileno()) if durable else None

    def finish(self) -> tuple[str, int]:
        try:
            sha256 = hashlib.file_digest(self._file, "sha256").hexdigest()
            size = os.fstat(self._file.fileno()).st_size
        finally:
            if self._sync is not None:
                self._sync.join()  # before the file it syncs is closed
            self._file.close()
        if self._sync is not None:
            self._sync.result()
        return sha256, size


def _check_control(expect: dict[str, str]) -> Callable[[Path], None]:
    """A check that dpkg reads `expect`'s fields back from a package's control member."""
    def check(path: Path) -> None:
        fields = dpkgdeb.fields(path)
        for name, value in expect.items():
            if fields.get(name) != value:
                raise BuildError(f"dpkg-deb reads {name} {fields.get(name)!r} from {path.name}, not {value!r}: "
                                 "the package is malformed")
    return check


def _build_package(settings: _PackageSettings, tree: staging.StagedTree, release: Release, now: datetime,
                   dirty: bool, note: str, workdir: Path, package_dir: Path, direct: bool,
                   warnings: list[str]) -> tuple[Path, dict[str, str], tuple[str, ...]]:
    """Check the tree's units, write DEBIAN/ and the package: (package file, metadata, units).

    `direct`: the archive writer, with DEBIAN/ in the work directory; else dpkg-deb, with
    DEBIAN/ in the staged tree.
    """
    units = control.Units(
        shipped=tuple(tree.units),
        declared=tuple(u for u in settings.declared_units if u not in tree.units),
        installable=tuple(tree.installable),
        restart=settings.restart_units,
    )
    # systemd-analyze runs while the package is written; a bad unit still fails the build.
    unit_check = Background(checks.verify_units, tree.units, tree.ships_executable)
    depends = settings.depends
    if settings.python_target is not None:
        depends = control.parse_depends([*python.depends(), *depends])
    if tree.has_machine_code:
        # Machine code needs the C library; libc6 is on every Debian system, so saying so
        # costs nothing, and a static binary loses nothing by it.
        depends = control.parse_depends([*depends, "libc6"])
    architecture = settings.architecture or (dpkgdeb.native_architecture() if tree.has_machine_code else "all")
    version = control.version_for(now, release.hash)
    fields = control.Control(
        package=settings.package,
        version=version,
        architecture=architecture,
        maintainer=settings.maintainer or default_maintainer(release.user, release.host),
        synopsis=settings.synopsis,
        description=[f"Released with Push by {release.user}@{release.host} at {release.timestamp}",
                     f"from commit {release.hash}{' (dirty)' if dirty else ''}.", "", *textwrap.wrap(note, 78)],
        depends=depends,
        installed_size_kib=tree.installed_kib,
    )
    python_dirs = [settings.python_target] if settings.python_target else []
    path = package_dir / f"{settings.package}_{version}_{architecture}.deb"
    extra = {"package": settings.package, "version": version, "architecture": architecture}
    try:
        if direct:
            control_root = workdir / "control"
            control_root.mkdir()
            control.write_debian_dir(control_root, fields, units, list(tree.conffiles), python_dirs)
            # As dpkg-deb: the build time, or SOURCE_DATE_EPOCH for a reproducible build.
            mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
            debarchive.write(path, control_root / "DEBIAN", tree.path, tree.entries, mtime, settings.compression,
                             settings.level, check_control=_check_control(extra))
        else:
            control.write_debian_dir(tree.path, fields, units, list(tree.conffiles), python_dirs)
            dpkgdeb.build(tree.path, path, settings.compression, settings.level)
        warnings += unit_check.result()
    except BaseException:
        unit_check.join()
        path.unlink(missing_ok=True)
        raise
    return path, extra, units.names


def _use_prebuilt(deb: Path, workdir: Path, warnings: list[str]) -> tuple[Path, dict[str, str], tuple[str, ...]]:
    prebuilt = staging.inspect_deb(deb, workdir)
    warnings += checks.verify_units(prebuilt.units, prebuilt.ships_executable)
    extra = {"package": prebuilt.package, "version": prebuilt.version, "architecture": prebuilt.architecture}
    return deb, extra, tuple(prebuilt.units)


class _CountingReader:
    """A file that reports how many bytes have been read from it, for a progress bar."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._f = f
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._on_bytes(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # seek, tell, fileno... for clients that use them
        return getattr(self._f, name)


def upload(store: Store, built: BuiltRelease, on_bytes: Callable[[int], None] | None = None,
           adopt: bool = False) -> ObjectInfo:
    """Upload `built` create-only, streaming it from disk; `on_bytes(n)` after each chunk read.

    With `adopt` (only for the builder's own file), the store may take the file instead of
    copying it (a local store does, for a file in its adoption_dir()); it is gone afterwards.
    """
    try:
        if adopt and built.owned and store.adoption_dir() is not None:
            return catalog.publish(store, built.info, built.path, adopt=True)
        with open(built.path, "rb") as f:
            stream: BinaryIO = _CountingReader(f, on_bytes) if on_bytes else f  # type: ignore[assignment]
            return catalog.publish(store, built.info, stream)
    except Conflict:
        raise _name_taken(built.info.release, store) from None
