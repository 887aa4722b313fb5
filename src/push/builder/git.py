"""The one module that runs git for the builder: the source's commit hash and whether it is dirty.

Dirty, as the original Push had it: uncommitted changes, or a HEAD that no upstream main
branch (origin/main or origin/master, or any remote's main/master) contains yet. A repository
with no such remote branch has no upstream to compare with, so only uncommitted changes count.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from push.builder.errors import BuildError, stderr_summary

GIT_TIMEOUT = 60.0
_HASH_RE = re.compile(r"[0-9a-f]{40}")
_MAIN_BRANCHES = ("main", "master")


@dataclass(frozen=True)
class SourceState:
    """What the builder records of the source: its repository, commit and cleanliness."""

    repo: Path
    hash: str
    dirty: bool
    # Why it is dirty, in words, for the user (empty when clean).
    reasons: tuple[str, ...] = ()


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=GIT_TIMEOUT, env=env)
    except FileNotFoundError:
        raise BuildError("git not found: install git, or give the commit with --hash") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"git {args[0]} in {repo} took longer than {GIT_TIMEOUT:.0f} s: gave up") from None
    if check and proc.returncode != 0:
        raise BuildError(f"git {args[0]} in {repo} failed: {stderr_summary(proc.stderr)}")
    return proc


def find_repo(candidates: Iterable[Path]) -> Path | None:
    """The top of the first git work tree among `candidates` (directories), or None."""
    for candidate in candidates:
        directory = candidate if candidate.is_dir() else candidate.parent
        if not directory.is_dir():
            continue
        proc = _git(directory, "rev-parse", "--show-toplevel", check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
        if "dubious ownership" in proc.stderr:
            # A real repository git refuses to read: say so rather than "not a repository".
            raise BuildError(f"git refuses {directory}: {stderr_summary(proc.stderr)}")
    return None


def source_state(repo: Path) -> SourceState:
    """Commit hash and dirtiness of the work tree at `repo`."""
    head = _git(repo, "rev-parse", "--verify", "HEAD", check=False)
    if head.returncode != 0:
        raise BuildError(f"git repository {repo} has no commit yet: commit, or give the hash with --hash")
    commit = head.stdout.strip()
    if not _HASH_RE.fullmatch(commit):
        raise BuildError(f"git rev-parse HEAD in {repo} gave {commit!r}, not a 40-hex SHA-1 commit")
    reasons = []
    if _git(repo, "status", "--porcelain").stdout.strip():
        reasons.append("uncommitted changes")
    upstreams = _main_branches(repo)
    if upstreams:
        containing = {line.strip() for line in _git(repo, "branch", "-r", "--contains", "HEAD").stdout.splitlines()}
        if not containing.intersection(upstreams):
            reasons.append(f"HEAD is not on {' or '.join(upstreams)}")
    return SourceState(repo=repo, hash=commit, dirty=bool(reasons), reasons=tuple(reasons))


def _main_branches(repo: Path) -> list[str]:
    """Remote main branches, origin's first: origin/main, origin/master, then other remotes'."""
    names = [line.strip() for line in _git(repo, "branch", "-r", "--format=%(refname:short)").stdout.splitlines()]
    mains = [n for n in names if "/" in n and n.split("/", 1)[1] in _MAIN_BRANCHES]
    return sorted(mains, key=lambda n: (not n.startswith("origin/"), n))


def last_subject(repo: Path) -> str:
    """The subject line of the last commit."""
    return _git(repo, "log", "-1", "--format=%s").stdout.strip()
