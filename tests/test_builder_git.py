"""The source state a release records: commit hash, and dirty as the original Push meant it."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildapp import commit, git, make_repo
from push.builder import BuildError
from push.builder.git import find_repo, last_subject, source_state


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_clean_repository_without_upstream(repo: Path) -> None:
    state = source_state(repo)
    assert state.hash == git(repo, "rev-parse", "HEAD")
    assert not state.dirty
    assert state.reasons == ()


def test_uncommitted_and_untracked_changes_are_dirty(repo: Path) -> None:
    (repo / "stage/etc/hello/hello.conf").write_text("changed\n")
    assert source_state(repo).reasons == ("uncommitted changes",)
    git(repo, "checkout", "--", ".")
    assert not source_state(repo).dirty
    (repo / "new-file").write_text("untracked\n")
    assert source_state(repo).dirty


@pytest.mark.parametrize("main_branch", ["main", "master"])
def test_head_not_on_the_upstream_main_branch_is_dirty(tmp_path: Path, main_branch: str) -> None:
    upstream = tmp_path / "upstream.git"
    upstream.mkdir()
    git(upstream, "init", "-q", "--bare")
    repo = make_repo(tmp_path / "repo")
    if main_branch != "main":
        git(repo, "branch", "-m", "main", main_branch)
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "push", "-q", "origin", main_branch)
    git(repo, "fetch", "-q", "origin")
    assert not source_state(repo).dirty  # pushed: on origin/main
    (repo / "stage/etc/hello/hello.conf").write_text("local commit\n")
    commit(repo, "not pushed yet")
    state = source_state(repo)
    assert state.dirty
    assert state.reasons == (f"HEAD is not on origin/{main_branch}",)
    git(repo, "push", "-q", "origin", main_branch)
    assert not source_state(repo).dirty


def test_find_repo_takes_the_first_candidate_in_a_repository(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    assert find_repo([outside, repo / "stage" / "etc", tmp_path]) == repo
    assert find_repo([outside]) is None


def test_repository_without_commits(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(BuildError, match="no commit yet"):
        source_state(empty)


def test_last_subject(repo: Path) -> None:
    (repo / "x").write_text("x\n")
    commit(repo, "Fix the greeting\n\nA longer body that is not the subject.")
    assert last_subject(repo) == "Fix the greeting"
