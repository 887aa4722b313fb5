"""The staged tree dpkg-deb builds from, laid out from a root directory or a manifest's files.

Files are hard-linked into a private staging directory when they can be (the same
filesystem), else copied, so the user's tree is never written to and a large tree costs
little to stage. Every file is opened while staging, so an unreadable one is reported here,
by name, and not deep inside dpkg-deb. The walk also notes what the package needs to know:
its systemd units, its files under /etc (conffiles), its size, and whether it holds
machine code (then it is not Architecture: all).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from push.builder import dpkgdeb, python
from push.builder.errors import BuildError
from push.builder.manifest import Manifest
from push.units import unit_of_path

_ELF_MAGIC = b"\x7fELF"


@dataclass
class StagedTree:
    """A directory laid out as the target filesystem, and what was learnt while filling it."""

    path: Path
    conffiles: dict[str, None] = field(default_factory=dict)  # "/etc/..." in order
    units: dict[str, Path] = field(default_factory=dict)  # unit name -> its file in the tree
    installable: dict[str, None] = field(default_factory=dict)  # units with an [Install] section
    has_machine_code: bool = False
    installed_kib: int = 0
    files: int = 0

    def ships_executable(self, path: str) -> bool:
        """Whether the package puts an executable file at `path` (absolute, as on the target)."""
        try:
            target = self._target(path)
        except BuildError:
            return False
        return target.is_file() and os.access(target, os.X_OK)

    # -- filling ---------------------------------------------------------------------------

    def add_tree(self, src: Path, dest: str, *, skip_caches: bool = False) -> None:
        """Mirror the directory `src` at `dest` (an absolute path in the package)."""
        try:
            st = src.stat()
        except OSError as e:
            raise BuildError(f"cannot read {src}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{src} is not a directory")
        target = self._target(dest)
        self._make_dirs(target, stat.S_IMODE(st.st_mode) if target != self.path else 0o755)
        self._copy_dir(src, target, skip_caches)

    def add_file(self, src: Path, dest: str, mode: int | None = None) -> None:
        """Put the file (or symlink) `src` at `dest`; `mode` forces its permissions."""
        target = self._target(dest)
        self._make_dirs(target.parent, 0o755)
        try:
            st = src.lstat()
        except OSError as e:
            raise BuildError(f"cannot read {src}: {e.strerror}") from None
        self._copy_entry(src, target, st, mode)

    def account_tree(self, subtree: Path) -> None:
        """Take note of files something else (pip) wrote into the tree, as if staged here."""
        for dirpath, dirnames, filenames in os.walk(subtree):
            self.installed_kib += len(dirnames)
            for name in filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        self._note_file(path, f.read(4), st.st_size)
                else:
                    self.installed_kib += 1

    # -- internals ---------------------------------------------------------------------------

    def _target(self, dest: str) -> Path:
        pure = PurePosixPath(dest)
        if not pure.is_absolute() or ".." in pure.parts:
            raise BuildError(f"package path {dest!r} must be absolute, without '..'")
        return self.path.joinpath(*pure.parts[1:])

    def _make_dirs(self, target: Path, mode: int) -> None:
        missing = []
        p = target
        while p != self.path and not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            d.chmod(0o755 if d != target else mode)
            self.installed_kib += 1
        if target == self.path:
            target.chmod(0o755)

    def _copy_dir(self, src: Path, target: Path, skip_caches: bool) -> None:
        try:
            entries = sorted(os.scandir(src), key=lambda e: e.name)
        except OSError as e:
            raise BuildError(f"cannot read directory {src}: {e.strerror}") from None
        for entry in entries:
            path = Path(entry.path)
            if skip_caches and entry.name == "__pycache__":
                continue
            if target == self.path and entry.name == "DEBIAN":
                raise BuildError(f"{path} exists: Push writes DEBIAN/ itself (use --deb for a prebuilt package)")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = target / entry.name
                if not sub.is_dir():
                    sub.mkdir()
                    self.installed_kib += 1
                self._copy_dir(path, sub, skip_caches)
                # After its contents: a read-only directory must not stop us filling it.
                sub.chmod(stat.S_IMODE(st.st_mode))
            else:
                self._copy_entry(path, target / entry.name, st, None)

    def _copy_entry(self, src: Path, target: Path, st: os.stat_result, mode: int | None) -> None:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise BuildError(f"cannot package {src}: not a regular file, directory or symlink")
        head = b""
        if stat.S_ISREG(st.st_mode):
            # Opened here so an unreadable file is named now, not deep in dpkg-deb's output;
            # the first bytes tell machine code apart. (os.open: thousands of files, no buffers.)
            try:
                fd = os.open(src, os.O_RDONLY)
                try:
                    head = os.read(fd, 4)
                finally:
                    os.close(fd)
            except OSError as e:
                raise BuildError(f"cannot read {src}: {e.strerror}") from None
        try:
            self._place(src, target, st, mode)
        except FileExistsError:
            # A manifest entry over an earlier one: the later wins, as in a copy.
            if target.is_dir() and not target.is_symlink():
                raise BuildError(f"cannot put {src} at /{self._rel(target)}: a directory is there") from None
            target.unlink()
            self._forget(target)
            self._place(src, target, st, mode)
        if stat.S_ISREG(st.st_mode):
            self._note_file(target, head, st.st_size)
        else:
            self.installed_kib += 1

    @staticmethod
    def _place(src: Path, target: Path, st: os.stat_result, mode: int | None) -> None:
        """Symlink, hard link or copy `src` to `target` (which must not exist)."""
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
            return
        if mode is None:
            try:
                os.link(src, target)
                return
            except FileExistsError:
                raise
            except OSError as e:
                # Another filesystem, or a link the kernel refuses: a copy does as well.
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                    raise BuildError(f"cannot stage {src}: {e.strerror}") from None
        if target.exists() or target.is_symlink():
            raise FileExistsError(target)
        try:
            shutil.copy2(src, target)
        except OSError as e:
            raise BuildError(f"cannot copy {src}: {e.strerror}") from None
        if mode is not None:
            target.chmod(mode)  # a copy, never the user's own file

    def _forget(self, path: Path) -> None:
        rel = self._rel(path)
        self.conffiles.pop("/" + rel, None)
        name = rel.rpartition("/")[2]
        if self.units.get(name) == path:
            del self.units[name]
            self.installable.pop(name, None)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    def _note_file(self, path: Path, head: bytes, size: int) -> None:
        self.files += 1
        self.installed_kib += (size + 1023) // 1024 or 1
        self.has_machine_code |= head == _ELF_MAGIC
        rel = self._rel(path)
        if rel.startswith("etc/"):
            self.conffiles["/" + rel] = None
        name = unit_of_path(rel)
        if name is not None:
            self.units[name] = path
            try:
                text = path.read_text(errors="replace")
            except OSError as e:
                raise BuildError(f"cannot read unit {path}: {e.strerror}") from None
            if any(line.strip() == "[Install]" for line in text.splitlines()):
                self.installable[name] = None


def stage_root(src: Path, tree: Path) -> StagedTree:
    """Stage the directory `src`, laid out as the target filesystem, into the new directory `tree`."""
    if not src.exists():
        raise BuildError(f"root directory {src} does not exist")
    if not src.is_dir():
        raise BuildError(f"root {src} is not a directory")
    staged = StagedTree(tree)
    tree.mkdir(mode=0o755)
    staged.add_tree(src, "/")
    if staged.files == 0 and not staged.units:
        raise BuildError(f"root directory {src} holds no files: nothing to package")
    return staged


def stage_manifest(manifest: Manifest, tree: Path) -> StagedTree:
    """Stage what `manifest` lists into the new directory `tree`: its [files], then its [python]."""
    staged = StagedTree(tree)
    tree.mkdir(mode=0o755)
    tree.chmod(0o755)
    for spec in manifest.files:
        if spec.src.is_dir() and not spec.src.is_symlink():
            if spec.mode is not None:
                raise BuildError(f"{manifest.path}: files: {spec.dest!r}: mode applies to files, not directories")
            # Bytecode caches are the builder's leftovers, never part of an app.
            staged.add_tree(spec.src, spec.dest, skip_caches=True)
        else:
            dest = spec.dest + spec.src.name if spec.dest.endswith("/") else spec.dest
            staged.add_file(spec.src, dest, spec.mode)
    if manifest.python is not None:
        target = staged.path / manifest.python.target.lstrip("/")
        python.vendor(manifest.python, target)
        staged.account_tree(target)
    return staged


@dataclass(frozen=True)
class PrebuiltDeb:
    """What the builder needs to know of a .deb built elsewhere."""

    package: str
    version: str
    architecture: str
    units: dict[str, Path]  # unit name -> a copy of its file, for the checks
    executables: frozenset[str]  # "/usr/bin/x": files it ships with an execute bit

    def ships_executable(self, path: str) -> bool:
        return path in self.executables


def inspect_deb(deb: Path, workdir: Path) -> PrebuiltDeb:
    """Read a prebuilt .deb: its control fields, and its units (copied into `workdir` for checking)."""
    if not deb.is_file():
        raise BuildError(f"package {deb} does not exist" if not deb.exists() else f"{deb} is not a file")
    try:
        with open(deb, "rb"):
            pass
    except OSError as e:
        raise BuildError(f"cannot read {deb}: {e.strerror}") from None
    fields = dpkgdeb.fields(deb)
    for key in ("package", "version", "architecture"):
        if not fields.get(key):
            raise BuildError(f"{deb} has no {key.capitalize()} field")
    units: dict[str, Path] = {}
    executables = set()
    unit_dir = workdir / "units"
    unit_dir.mkdir()
    with dpkgdeb.data_members(deb) as tar:
        for member in tar:
            rel = member.name.removeprefix("./")
            if member.isfile() and member.mode & 0o111:
                executables.add("/" + rel)
            name = unit_of_path(rel)
            if member.isfile() and name is not None:
                source = tar.extractfile(member)
                assert source is not None
                path = unit_dir / name
                path.write_bytes(source.read())
                units[name] = path
    return PrebuiltDeb(fields["package"], fields["version"], fields["architecture"], units,
                       frozenset(executables))
