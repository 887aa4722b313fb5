"""Checks a package passes before it is uploaded: `systemd-analyze verify` on its units, lintian.

lintian judges packages by what the Debian archive wants. A handful of its errors do not fit
packages that a fleet installs from its own bucket; LINTIAN_EXCUSED lists them, each with
the reason, and matched as narrowly as the tag allows. Every other error fails the build.

Only errors decide, so lintian is asked for its error tags only (`--tags`, read from its own
tag descriptions): it then runs only the checks that can report one, which skips the
slowest per-file scans (embedded JavaScript and PHP libraries: warnings at most) and halves
its time on a package of thousands of files, with the same verdict. Warnings are not
collected.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from push.builder.errors import BuildError, stderr_summary

log = logging.getLogger(__name__)

VERIFY_TIMEOUT = 120.0
LINTIAN_TIMEOUT = 3600.0
# Where lintian keeps its checks and tag descriptions (its LINTIAN_BASE).
LINTIAN_BASE = Path("/usr/share/lintian")


@dataclass(frozen=True)
class Excuse:
    tag: str
    # The tag's context (what follows the tag on lintian's line) must match this.
    context: re.Pattern[str]
    reason: str


LINTIAN_EXCUSED = (
    Excuse("malformed-deb-archive", re.compile(r".*\.tar\.zst\b.*"),
           "zstd members: Push's default compression; Debian 12's dpkg reads them (the archive does not take them)"),
    Excuse("file-in-usr-local", re.compile(r"\[usr/local/.*\]"),
           "apps are the admin's local software: /usr/local is where the original Push put them"),
    Excuse("dir-in-usr-local", re.compile(r"\[usr/local/.*\]"),
           "as file-in-usr-local"),
    Excuse("systemd-service-in-odd-location", re.compile(r"\[etc/systemd/system/[^/]+\]"),
           "admin units live in /etc/systemd/system, as the original Push's did"),
    Excuse("no-copyright-file", re.compile(r".*"),
           "a release is not distributed beyond its own fleet"),
    Excuse("no-changelog", re.compile(r".*"),
           "a release's history is its metadata (note, commit, dirty) in the bucket"),
    Excuse("unstripped-binary-or-object", re.compile(r".*"),
           "symbols in deployed binaries help debugging; stripping is the app's own choice"),
    Excuse("root-in-contact", re.compile(r".*"),
           "the Maintainer is whoever built the release, which on a build machine may be root"),
)

# lintian errors whose fix is known, and how to make it: said with the error, so a failed
# build tells the user what to change, not only what is wrong.
LINTIAN_FIXES = {
    "python3-script-but-no-python3-dep":
        "a script runs python3, which the package does not depend on: add --depends python3 "
        "(or depends = [\"python3\"] in push.toml)",
    "python-script-but-no-python-dep":
        "a script runs python, which the package does not depend on: point its #! at /usr/bin/python3 "
        "and add --depends python3",
    "perl-script-but-no-perl-dep":
        "a script runs perl, which the package does not depend on: add --depends perl",
    "missing-dep-for-interpreter":
        "a script's #! interpreter comes from a package this one does not depend on: add it with "
        "--depends PACKAGE (lintian names the interpreter)",
    "wrong-path-for-interpreter":
        "a script's #! line names its interpreter at the wrong path: use the path lintian gives",
    "package-contains-vcs-control-file":
        "the root holds version-control files (.git, .gitignore, ...): leave them out of the staged files",
    "script-not-executable":
        "a file starting with #! is not executable: chmod +x it, or drop the #! line",
}


def fixes_for(errors: list[str]) -> list[str]:
    """How to fix each of `errors` (lintian's "tag context" lines) whose tag has a known fix."""
    tags = dict.fromkeys(e.split(" ", 1)[0] for e in errors)
    return [f"{tag}: {LINTIAN_FIXES[tag]}" for tag in tags if tag in LINTIAN_FIXES]


_LINTIAN_LINE = re.compile(
    r"(?P<severity>[EWIPXOCN]): (?P<package>[^:\s]+)(?: \([^)]*\))?: (?P<tag>\S+)(?: (?P<context>.*))?")
_NOT_EXECUTABLE = re.compile(r"^(?P<unit>\S+): Command (?P<path>/\S+) is not executable: No such file or directory$")


@dataclass(frozen=True)
class LintianReport:
    errors: list[str]
    excused: list[str]
    warnings: list[str]  # only from a run of every check, when the error tags could not be read
    checked_tags: int = 0  # how many error tags lintian was asked for; 0: every check ran


def verify_units(units: Mapping[str, Path], ships_executable: Callable[[str], bool]) -> list[str]:
    """`systemd-analyze verify` every unit; BuildError if one is bad. Returns warnings.

    The units' commands are not installed on this machine yet: "not executable" for a
    command the package itself ships is expected and passes. A command that is neither in
    the package nor here is a warning, since a dependency may bring it.
    """
    if not units:
        return []
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return ["systemd-analyze is not installed: unit files were not verified"]
    args = [tool, "verify", "--man=no", "--generators=no", "--recursive-errors=no",
            *(str(path) for path in units.values())]
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=VERIFY_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        raise BuildError(f"systemd-analyze verify took longer than {VERIFY_TIMEOUT:.0f} s: gave up") from None
    problems, warnings, expected = [], [], 0
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if not line:
            continue
        m = _NOT_EXECUTABLE.match(line)
        if m and ships_executable(m["path"]):
            expected += 1
            continue
        if m:
            warnings.append(f"{m['unit']}: {m['path']} is neither in the package nor on this machine")
            continue
        problems.append(_unit_relative(line, units))
    if problems:
        raise BuildError(f"unit file check failed (systemd-analyze verify): {' / '.join(problems)}")
    if proc.returncode != 0 and not (warnings or expected):
        raise BuildError(f"systemd-analyze verify failed: {stderr_summary(proc.stderr)}")
    return warnings


def _unit_relative(line: str, units: Mapping[str, Path]) -> str:
    """systemd names the staged copy of a unit by its full path; name it by the unit instead."""
    for name, path in units.items():
        line = line.replace(str(path), name)
    return line


def lintian_error_tags(base: Path | None = None) -> list[str]:
    """Every tag lintian can report as an error, from its tag descriptions under `base`
    (name-spaced tags by their full name, as --tags takes them); [] if there are none to read."""
    tags = []
    for path in ((base or LINTIAN_BASE) / "tags").rglob("*.tag"):
        fields: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    name, colon, value = line.partition(":")
                    if name == "Explanation" or not colon:
                        break  # the fields that matter come first
                    fields[name] = value.strip()
        except OSError:
            continue
        if fields.get("Severity") == "error" and fields.get("Tag"):
            namespaced = fields.get("Name-Spaced") == "yes" and fields.get("Check")
            tags.append(f"{fields['Check']}/{fields['Tag']}" if namespaced else fields["Tag"])
    return sorted(tags)


def _run_lintian(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=LINTIAN_TIMEOUT, env={**os.environ, "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise BuildError(f"lintian took longer than {LINTIAN_TIMEOUT:.0f} s: gave up") from None


def lintian(deb: Path) -> LintianReport:
    """Run lintian on `deb`; BuildError listing the errors that are not excused. Returns the report."""
    tool = shutil.which("lintian")
    if tool is None:
        raise BuildError("lintian is not installed: apt-get install lintian (or skip the check with --no-lintian)")
    # --fail-on none: the verdict is ours (errors minus excuses), lintian's exit status only
    # says whether it managed to run.
    args = [tool, "--fail-on", "none", "--tag-display-limit", "0", str(deb)]
    tags = lintian_error_tags()
    proc = _run_lintian([*args[:-1], "--tags", ",".join(tags), args[-1]]) if tags else None
    if proc is None or proc.returncode != 0:
        # No tag descriptions where they are expected, or a lintian that refuses one of them
        # ("Unknown tag"): every check, as lintian runs by default.
        if tags:
            log.warning("lintian refused its own error tags (%s): running every check",
                        stderr_summary(proc.stderr) if proc is not None else "")
        proc = _run_lintian(args)
    if proc.returncode != 0:
        raise BuildError(f"lintian could not check {deb.name}: {stderr_summary(proc.stderr)}")
    report = LintianReport(errors=[], excused=[], warnings=[], checked_tags=len(tags))
    for line in proc.stdout.splitlines():
        m = _LINTIAN_LINE.fullmatch(line.strip())
        if m is None:
            continue
        context = m["context"] or ""
        shown = f"{m['tag']} {context}".strip()
        if m["severity"] == "E":
            if any(e.tag == m["tag"] and e.context.fullmatch(context) for e in LINTIAN_EXCUSED):
                report.excused.append(shown)
            else:
                report.errors.append(shown)
        elif m["severity"] == "W":
            report.warnings.append(shown)
    if report.errors:
        more = len(report.errors) - 5
        shown = "; ".join(report.errors[:5]) + (f"; and {more} more" if more > 0 else "")
        fixes = fixes_for(report.errors)
        how = f". To fix: {'; '.join(fixes)}" if fixes else ""
        raise BuildError(f"lintian found {len(report.errors)} error(s) in {deb.name}: {shown}{how}")
    if report.checked_tags:
        log.info("lintian: no errors (%d excused) among its %d error tags", len(report.excused),
                 report.checked_tags)
    else:
        log.info("lintian: %d warning(s), %d excused error(s)", len(report.warnings), len(report.excused))
    return report
