"""The DEBIAN/ directory of a release: control file, conffiles, and the maintainer scripts.

Package names carry a prefix (`push-` by default) so an app never collides with a Debian
package. Versions grow with build time, so dpkg orders releases and a rollback is a plain
downgrade. The maintainer scripts (re)start the package's systemd units after install and
stop them before removal, and do nothing under a sandbox root (DPKG_ROOT) or without systemd.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from push.builder.errors import BuildError
from push.debian import InvalidRelation, parse_relations
from push.units import is_template, units_to_start

DEFAULT_PREFIX = "push-"

_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_ARCH_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def package_name(app: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The Debian package name of `app`; BuildError if it cannot be one."""
    name = f"{prefix}{app}"
    if not _PACKAGE_RE.fullmatch(name):
        raise BuildError(
            f"app {app!r} cannot be a Debian package name ({name!r}): package names use only lowercase "
            "letters, digits and + - . (rename the app, or change the prefix with --package-prefix)"
        )
    return name


def version_for(built: datetime, git_hash: str) -> str:
    """`1.YYYYMMDD.HHMMSS.micros+g<hash7>`: ordered by build time (UTC) in dpkg's comparison.

    The microseconds keep two builds of the same second apart and in order; the hash is
    there for people reading `dpkg -l`.
    """
    t = built.astimezone(timezone.utc)
    return f"1.{t:%Y%m%d}.{t:%H%M%S}.{t.microsecond:06d}+g{git_hash[:7]}"


def check_architecture(arch: str) -> str:
    if not _ARCH_RE.fullmatch(arch):
        raise BuildError(f"invalid architecture {arch!r}: use a Debian architecture such as all, amd64 or arm64")
    return arch


def parse_depends(specs: Iterable[str]) -> list[str]:
    """Dependency relations from `--depends` values (each may hold several, comma-separated).

    Keeps versions and alternatives intact: "python3 (>= 3.11), libc6 | musl" is two relations,
    the second with two alternatives. Returns one normalised string per relation.
    """
    relations: list[str] = []
    for spec in specs:
        try:
            parsed = parse_relations(spec, strict=True)
        except InvalidRelation as e:
            raise BuildError(str(e)) from None
        for relation in map(str, parsed):
            if relation not in relations:
                relations.append(relation)
    return relations


def one_line(text: str, what: str) -> str:
    """`text` with surrounding space removed; BuildError if it spans lines or holds control characters."""
    text = text.strip()
    if "\n" in text or "\r" in text or _CONTROL_CHARS.search(text):
        raise BuildError(f"{what} must be one line of text without control characters")
    return text


@dataclass(frozen=True)
class Units:
    """The systemd units a package ships (`shipped`) or restarts without shipping (`declared`)."""

    shipped: tuple[str, ...] = ()
    declared: tuple[str, ...] = ()
    # Shipped units that have an [Install] section, so `systemctl enable` means something.
    installable: tuple[str, ...] = ()
    # False for a program that replaces itself (pulld): postinst then only starts units that
    # are stopped, and leaves a running one to restart itself.
    restart: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.shipped + self.declared))

    def to_start(self) -> list[str]:
        """Units to (re)start after install: not templates, and not services something activates."""
        return units_to_start(self.names)

    def to_enable(self) -> list[str]:
        return [n for n in self.installable if not is_template(n)]


@dataclass(frozen=True)
class Control:
    """The fields of DEBIAN/control that Push writes."""

    package: str
    version: str
    architecture: str
    maintainer: str
    synopsis: str
    description: Sequence[str] = ()
    depends: Sequence[str] = ()
    installed_size_kib: int | None = None

    def text(self) -> str:
        lines = [
            f"Package: {self.package}",
            f"Version: {self.version}",
            f"Architecture: {self.architecture}",
            f"Maintainer: {self.maintainer}",
        ]
        if self.installed_size_kib is not None:
            lines.append(f"Installed-Size: {self.installed_size_kib}")
        if self.depends:
            lines.append(f"Depends: {', '.join(self.depends)}")
        lines += ["Section: misc", "Priority: optional"]
        lines.append(f"Description: {self.synopsis}")
        # Extended description: one space before each line, " ." for an empty one.
        lines += [f" {line}" if line.strip() else " ." for line in self.description]
        return "\n".join(lines) + "\n"


_SYSTEMD = '[ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1'


def _script(purpose: str, body: str) -> str:
    return (
        "#!/bin/sh\n"
        f"# Written by `push release`: {purpose}\n"
        "# Under a sandbox root (DPKG_ROOT set) or without systemd it leaves the system alone.\n"
        "set -e\n"
        f"{body}"
        "exit 0\n"
    )


def maintainer_scripts(units: Units, python_dirs: Sequence[str] = ()) -> dict[str, str]:
    """postinst, prerm and postrm for a package with `units` and vendored Python in `python_dirs`.

    None at all for a package that has neither.
    """
    start = " ".join(units.to_start())
    enable = " ".join(units.to_enable())
    stop = " ".join(u for u in units.shipped if not is_template(u))
    pydirs = " ".join(python_dirs)
    postinst = prerm = postrm = ""
    if pydirs:
        # Bytecode is made on the server, as Debian's own Python packages do, and removed
        # before the files it was made from go away, so dpkg leaves no directory behind.
        postinst += (f'if [ "$1" = configure ] && [ -z "${{DPKG_ROOT:-}}" ]; then\n'
                     f"    python3 -m compileall -q {pydirs} >/dev/null || true\nfi\n")
        prerm += (f"for dir in {pydirs}; do\n"
                  '    [ -d "${DPKG_ROOT:-}$dir" ] && find "${DPKG_ROOT:-}$dir" -name __pycache__ -type d -prune '
                  "-exec rm -rf {} + || true\ndone\n")
    if units.names:
        postinst += f'if [ "$1" = configure ] && {_SYSTEMD}; then\n    systemctl daemon-reload\n'
        if enable:
            postinst += f"    systemctl enable {enable}\n"
        if start:
            # restart starts a stopped unit too; a unit that fails to start fails the install.
            postinst += f"    systemctl {'restart' if units.restart else 'start'} {start}\n"
        postinst += "fi\n"
        if stop or enable:
            # Only on removal: through an upgrade or downgrade the units keep running until
            # postinst restarts them, which is the shortest interruption.
            prerm += f'if [ "$1" = remove ] && {_SYSTEMD}; then\n'
            if stop:
                prerm += f"    systemctl stop {stop} || true\n"
            if enable:
                prerm += f"    systemctl disable {enable} || true\n"
            prerm += "fi\n"
        postrm += (f'if {{ [ "$1" = remove ] || [ "$1" = purge ]; }} && {_SYSTEMD}; then\n'
                   "    systemctl daemon-reload || true\nfi\n")
    scripts = {}
    what = (["Python bytecode"] if pydirs else []) + (["systemd units"] if units.names else [])
    for name, body, purpose in (("postinst", postinst, "after install"), ("prerm", prerm, "before removal"),
                                ("postrm", postrm, "after removal")):
        if body:
            scripts[name] = _script(f"looks after this package's {' and '.join(what)} {purpose}.", body)
    return scripts


def write_debian_dir(tree: Path, control: Control, units: Units, conffiles: Sequence[str],
                     python_dirs: Sequence[str] = ()) -> None:
    """Write DEBIAN/ (control, conffiles, maintainer scripts) into the staged `tree`."""
    debian = tree / "DEBIAN"
    debian.mkdir(mode=0o755)
    debian.chmod(0o755)
    (debian / "control").write_text(control.text())
    (debian / "control").chmod(0o644)
    if conffiles:
        (debian / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
        (debian / "conffiles").chmod(0o644)
    for name, text in maintainer_scripts(units, python_dirs).items():
        path = debian / name
        path.write_text(text)
        path.chmod(0o755)
