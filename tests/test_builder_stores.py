"""`push release` into each kind of store (local, and the GCS and S3 emulators on 127.0.0.1),
and its upload progress bar on a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from buildapp import make_repo, push, push_on_a_terminal
from push.release import Release
from push.store import open_store


def test_release_reaches_every_store_intact(store_url: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    built = push("release", "hello", "--root", "stage", "--note", "to the bucket", "--no-lintian",
                 "--store", store_url, cwd=repo)
    assert built.code == 0, built.err
    listed = push("releases", "hello", "--json", "--store", store_url)
    assert listed.code == 0, listed.err
    [entry] = json.loads(listed.out)
    assert entry["name"] == built.last_line
    assert entry["extra"]["package"] == "push-hello"
    store = open_store(store_url)
    try:
        with store.open(Release.parse(built.last_line).key) as reader:
            data = b"".join(reader)
    finally:
        store.close()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["size"]
    assert data.startswith(b"!<arch>\ndebian-binary")


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "stage/usr/local/share/hello").mkdir(parents=True)
    (repo / "stage/usr/local/share/hello/data").write_bytes(os.urandom(3 * 1024 * 1024))
    # With -o the package is kept and the upload copies it (without, a local store adopts the
    # file at once and there is nothing to show).
    argv = ["release", "hello", "--root", "stage", "--note", "progress", "--no-lintian",
            "-o", str(tmp_path / "kept.deb")]
    code, terminal, stdout = push_on_a_terminal([*argv, "--store", str(tmp_path / "tty-store")], repo)
    assert code == 0, terminal
    assert "uploading [" in terminal and "100%" in terminal
    assert stdout.strip().startswith("hello/hello:")
    piped = subprocess.run([sys.executable, "-m", "push.cli", *argv, "--store", str(tmp_path / "pipe-store")],
                           cwd=repo, capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert b"uploading" not in piped.stderr
