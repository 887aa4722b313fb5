"""systemd units: which unit types exist, where packages put unit files, which units to start.

The one place that knows them, for every front end: the builder (which files of a package
are units, and what its maintainer scripts start), pulld (which units to restart after an
install, and which a unit request may touch) and the push server and CLI (through
`push.names.check_unit`, which unit names a request may carry).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# The unit types a package can ship as files. (device and scope units are made by the
# kernel and at run time, never by a package.)
UNIT_TYPES = ("service", "socket", "timer", "path", "mount", "automount", "swap", "target", "slice")
UNIT_SUFFIXES = tuple(f".{t}" for t in UNIT_TYPES)
# A service with one of these beside it (same name) is started by it, not directly.
ACTIVATOR_SUFFIXES = (".socket", ".timer", ".path")
# Where systemd looks for admin and packaged units, relative to the root.
UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
# What a unit request may ask of a unit.
ACTIONS = ("start", "stop", "restart")


def is_template(name: str) -> bool:
    """`foo@.service`: cannot be started without an instance name."""
    return "@." in name


def unit_of_path(path: str) -> str | None:
    """The unit name when `path` (absolute, or relative to the root) is a unit file that
    systemd reads, templates included; else None."""
    parent, _, name = path.lstrip("/").rpartition("/")
    if parent in UNIT_DIRS and name.endswith(UNIT_SUFFIXES):
        return name
    return None


def units_in(paths: Iterable[str]) -> list[str]:
    """The units among a package's files, in order, templates left out (none can be started)."""
    units: list[str] = []
    for path in paths:
        name = unit_of_path(path)
        if name is not None and not is_template(name) and name not in units:
            units.append(name)
    return units


def units_to_start(units: Sequence[str]) -> list[str]:
    """The units to (re)start after an install: activators, and units nothing activates."""
    activated = {u.rsplit(".", 1)[0] + ".service" for u in units if u.endswith(ACTIVATOR_SUFFIXES)}
    return [u for u in units if u.endswith(UNIT_SUFFIXES) and not is_template(u) and u not in activated]
