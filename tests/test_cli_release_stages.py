"""`push release` as people run it: the stages on a terminal, a missing --root said first,
and no upload to the default store when only PUSH_URL is set."""

from __future__ import annotations

import os
import subprocess
import sys

from buildapp import make_repo, push, push_on_a_terminal


def test_stages_show_on_a_terminal_only(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSH_")}
    argv = ["release", "hello", "--root", "stage", "--note", "x", "--no-lintian", "--store", str(tmp_path / "b")]
    code, shown, _ = push_on_a_terminal(argv, repo, env)
    assert code == 0, shown
    lines = [line.strip() for line in shown.replace("\r", "\n").splitlines() if line.startswith("push: ")]
    assert lines[0] == "push: staging the files of hello"
    assert lines[1].startswith("push: staged 3 files (") and "compressing (zstd) and checking 1 unit(s)" in lines[1]
    assert lines[2].startswith("push: checking push-hello_") and lines[2].endswith(" KiB)")
    assert lines[3] == f"push: uploading to file://{tmp_path / 'b'}"
    # Not on a terminal (a pipe, CI's log): only the release name, as before. Another store:
    # a second build within the same second has the same release name, which one store refuses.
    argv[argv.index("x")] = "y"
    argv[argv.index(str(tmp_path / "b"))] = str(tmp_path / "piped")
    piped = subprocess.run([sys.executable, "-m", "push.cli", *argv], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=120)
    assert piped.returncode == 0 and "staging" not in piped.stderr and piped.stdout.startswith("hello/hello:")


def test_a_missing_root_is_said_before_anything_else(tmp_path):
    # No git repository, a signing key that does not exist, a store nobody could open: the
    # root is still the one thing said.
    r = push("release", "hello", "--root", tmp_path / "missing", "--note", "x",
             "--signing-key", tmp_path / "no.key", "--store", "ftp://nowhere", cwd=tmp_path)
    assert r.code == 1
    assert r.err.strip() == f"push: error: root directory {tmp_path}/missing does not exist (--root {tmp_path}/missing)"


def test_only_push_url_set_uploads_nowhere(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.delenv("PUSH_STORE", raising=False)
    monkeypatch.setenv("PUSH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    r = push("release", "hello", "--root", "stage", "--note", "x", "--no-lintian", cwd=repo)
    assert r.code == 2 and "only PUSH_URL is set: give --store URL or PUSH_STORE" in r.err
    assert not (tmp_path / "data").exists()
