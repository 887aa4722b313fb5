"""Debian control files, relation fields and versions: one reading for the builder and pulld.

Control paragraphs (what `dpkg-deb --field` prints) and version comparison come from
python-debian, which implements dpkg's own rules in Python: pulld compares the versions
of a package's Depends without a `dpkg --compare-versions` process per clause. Relations
(Depends, Pre-Depends) are parsed here: strictly for what a user gives the builder with
`--depends` (only what a binary package may say), leniently for what a .deb says
(architecture restrictions and build profiles are skipped). Both keep versions and
alternatives intact, where the original's split on ',' broke on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from debian.debian_support import version_compare

from push.errors import InvalidInput

_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")
_RELATION_RE = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9+.-]+)(?::(?P<arch>[a-z0-9-]+))?"
    r"\s*(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^\s()]+)\s*\))?"
    r"\s*(?P<restrictions>(?:\[[^\]]*\]\s*)?(?:<[^>]*>\s*)*)"
)
# '<' and '>' are the deprecated spellings of '<=' and '>='.
_DEPRECATED_OPS = {"<": "<=", ">": ">="}


class InvalidRelation(InvalidInput):
    """A dependency that is not a Debian relation, or a version that is not a Debian version."""


@dataclass(frozen=True)
class Dependency:
    """One package a relation names, with its optional version constraint."""

    name: str
    op: str | None = None
    version: str | None = None
    arch: str | None = None

    def __str__(self) -> str:
        name = f"{self.name}:{self.arch}" if self.arch else self.name
        return f"{name} ({self.op} {self.version})" if self.op else name


@dataclass(frozen=True)
class Relation:
    """One comma-separated item of Depends: alternatives, any one of which satisfies it."""

    alternatives: tuple[Dependency, ...]

    def __str__(self) -> str:
        return " | ".join(str(a) for a in self.alternatives)


def parse_relations(text: str, *, strict: bool = False) -> list[Relation]:
    """Parse a Depends value. `strict` (for packages we build) refuses deprecated
    operators, restrictions and malformed versions instead of reading past them."""
    relations = []
    for item in " ".join(text.split()).split(","):
        if not item.strip():
            continue
        alternatives = []
        for alt in item.split("|"):
            m = _RELATION_RE.fullmatch(alt.strip())
            bad = m is None or (strict and (
                bool(m["restrictions"]) or m["op"] in _DEPRECATED_OPS
                or (m["version"] is not None and not _VERSION_RE.fullmatch(m["version"]))))
            if bad or m is None:
                raise InvalidRelation(
                    f"bad dependency {alt.strip()!r} in {text!r}: expected NAME or NAME (OP VERSION), "
                    "OP one of << <= = >= >>, alternatives separated by |")
            op = _DEPRECATED_OPS.get(m["op"], m["op"]) if m["op"] else None
            alternatives.append(Dependency(m["name"], op, m["version"], m["arch"]))
        relations.append(Relation(tuple(alternatives)))
    return relations


def parse_control(text: str) -> dict[str, str]:
    """The fields of one control paragraph, names lowercased. A value continued over
    several lines keeps them, joined by newlines (Debian policy 5.1)."""
    from debian.deb822 import Deb822  # here: it takes a tenth of a second to import

    return {name.lower(): value.strip() for name, value in Deb822(text.splitlines()).items()}


_OPS = {"<<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0,
        ">=": lambda c: c >= 0, ">>": lambda c: c > 0}


def version_satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether `version` OP `wanted` holds in dpkg's ordering (OP one of << <= = >= >>)."""
    try:
        return bool(_OPS[op](version_compare(version, wanted)))
    except KeyError:
        raise InvalidRelation(f"unknown version operator {op!r}: use one of << <= = >= >>") from None
    except ValueError as e:
        raise InvalidRelation(f"cannot compare Debian versions {version!r} and {wanted!r}: {e}") from None
