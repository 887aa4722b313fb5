"""The tree a package is built from: a --root directory as it lies, or a manifest's files staged.

A --root directory is only scanned (`scan_root`): the package is archived from it directly,
with DEBIAN/ written elsewhere, so nothing is copied or linked and the user's tree is never
written to. A manifest's files are staged into a private directory, hard-linked when they can
be (the same filesystem), else copied (`stage_manifest`; `stage_root` does the same for a
root, for the dpkg-deb fallback that needs DEBIAN/ inside the tree). Every file is opened on
the way, so an unreadable one is reported here, by name, and not deep inside tar or dpkg-deb.
The walk also notes what the package needs to know: its entries in archive order, its systemd
units, its files under /etc (conffiles), its size, and whether it holds machine code (then it
is not Architecture: all).
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
    # Paths relative to `path` in dpkg-deb's order: by name, each directory's contents right after
    # it, and every symlink last (so that none is unpacked before its target).
    entries: list[str] = field(default_factory=list)
    _symlinks: list[str] = field(default_factory=list)

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

    def scan(self) -> None:
        """Take note of the tree at `path` as it lies, staging nothing."""
        self._scan_dir(self.path, "")
        self.entries = _archive_order(self.entries, self._symlinks)

    def list_entries(self) -> None:
        """Fill `entries` from what is staged at `path` (after a manifest's files are in)."""
        others: list[str] = []
        symlinks: list[str] = []
        _walk(self.path, "", others, symlinks)
        self.entries = _archive_order(others, symlinks)

    # -- internals ---------------------------------------------------------------------------

    def _scan_dir(self, directory: Path, rel: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            raise BuildError(f"cannot read directory {directory}: {e.strerror}") from None
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if not rel and entry.name == "DEBIAN":
                raise BuildError(f"{entry.path} exists: Push writes DEBIAN/ itself (use --deb for a prebuilt package)")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise BuildError(f"cannot read {entry.path}: {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                self.entries.append(name)
                self.installed_kib += 1
                self._scan_dir(Path(entry.path), name)
            elif stat.S_ISREG(st.st_mode):
                self.entries.append(name)
                self._note(name, _read_head(entry.path), st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                self._symlinks.append(name)
                self.installed_kib += 1
            else:
                raise BuildError(f"cannot package {entry.path}: not a regular file, directory or symlink")

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
        head = _read_head(src) if stat.S_ISREG(st.st_mode) else b""
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
        self._note(self._rel(path), head, size)

    def _note(self, rel: str, head: bytes, size: int) -> None:
        """Take note of the regular file at `rel` (relative to the tree, as in the package)."""
        self.files += 1
        self.installed_kib += (size + 1023) // 1024 or 1
        self.has_machine_code |= head == _ELF_MAGIC
        if rel.startswith("etc/"):
            self.conffiles["/" + rel] = None
        name = unit_of_path(rel)
        if name is not None:
            path = self.path / rel
            self.units[name] = path
            try:
                text = path.read_text(errors="replace")
            except OSError as e:
                raise BuildError(f"cannot read unit {path}: {e.strerror}") from None
            if any(line.strip() == "[Install]" for line in text.splitlines()):
                self.installable[name] = None


def _read_head(path: str | Path) -> bytes:
    """The first bytes of a file (machine code starts with ELF's magic); BuildError naming it if unreadable.

    os.open and os.read: this runs for thousands of files, and needs no buffers.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, 4)
        finally:
            os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None


def _archive_order(others: list[str], symlinks: list[str]) -> list[str]:
    """dpkg-deb's order: each directory in name order, its contents right after it; symlinks last."""
    def by_path(name: str) -> list[str]:
        return name.split("/")

    return sorted(others, key=by_path) + sorted(symlinks, key=by_path)


def _walk(root: Path, rel: str, others: list[str], symlinks: list[str]) -> None:
    for entry in os.scandir(root / rel if rel else root):
        name = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_symlink():
            symlinks.append(name)
        else:
            others.append(name)
            if entry.is_dir(follow_symlinks=False):
                _walk(root, name, others, symlinks)


def scan_root(src: Path) -> StagedTree:
    """The directory `src`, laid out as the target filesystem, taken as it lies (nothing is staged)."""
    if not src.exists():
        raise BuildError(f"root directory {src} does not exist")
    if not src.is_dir():
        raise BuildError(f"root {src} is not a directory")
    scanned = StagedTree(src.absolute())
    scanned.scan()
    if scanned.files == 0 and not scanned.units:
        raise BuildError(f"root directory {src} holds no files: nothing to package")
    return scanned


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
    staged.list_entries()
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
    staged.list_entries()
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
