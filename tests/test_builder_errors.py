"""Bad input to `push release`: one clear line on stderr, a non-zero exit, nothing in the catalogue."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildapp import Result, commit, git, make_repo, push
from push.catalog import Catalog
from push.store import open_store


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def assert_refused(result: Result, *fragments: str, code: int = 1) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("push: error:") or line.startswith("usage:")]
    assert errors, result.err
    if code != 2:  # argparse prints its usage before the one error line
        assert len([ln for ln in lines if not ln.startswith("push: warning:")]) == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err
    assert result.out == ""


def assert_nothing_uploaded(store: Path) -> None:
    """No release in the catalogue, no package file, no half-written upload."""
    if not store.exists():
        return
    assert Catalog(open_store(str(store))).releases() == []
    assert [p for p in store.rglob("*") if p.is_file() and p.parent.name != ".locks"] == []


def release(repo: Path, *args: str | os.PathLike[str]) -> Result:
    return push("release", "hello", "--note", "test", "--store", repo.parent / "store", *args, cwd=repo)


def test_missing_root_directory(repo: Path) -> None:
    assert_refused(release(repo, "--root", "no-such-dir"), "root directory", "no-such-dir", "does not exist")
    assert_nothing_uploaded(repo.parent / "store")


def test_bad_unit_file(repo: Path) -> None:
    unit = repo / "stage/etc/systemd/system/hello.service"
    unit.write_text(unit.read_text().replace("ExecStart=/usr/local/bin/hello", "ExecStart=usr/local/bin/hello"))
    commit(repo, "break the unit")
    assert_refused(release(repo, "--root", "stage"), "unit file check failed", "hello.service")
    assert_nothing_uploaded(repo.parent / "store")


def test_unit_without_a_command(repo: Path) -> None:
    unit = repo / "stage/etc/systemd/system/hello.service"
    unit.write_text("[Unit]\nDescription=no command\n\n[Service]\nRestart=always\n")
    commit(repo, "unit without ExecStart")
    assert_refused(release(repo, "--root", "stage"), "no ExecStart")
    assert_nothing_uploaded(repo.parent / "store")


@pytest.mark.parametrize(("app", "extra", "fragment"), [
    ("../etc", [], "invalid app name"),
    ("Hello_World", [], "cannot be a Debian package name"),
    ("a", ["--package-prefix", ""], "cannot be a Debian package name"),
])
def test_bad_app_name(repo: Path, app: str, extra: list[str], fragment: str) -> None:
    result = push("release", app, "--root", "stage", "--note", "test", "--store", repo.parent / "store", *extra,
                  cwd=repo)
    assert_refused(result, fragment)
    assert_nothing_uploaded(repo.parent / "store")


def test_app_name_and_prefix_make_the_package_name(repo: Path, tmp_path: Path) -> None:
    deb = tmp_path / "x.deb"
    result = push("release", "hello", "--root", "stage", "--note", "t", "--package-prefix", "acme-",
                  "--no-upload", "-o", deb, "--no-lintian", cwd=repo)
    assert result.code == 0, result.err
    assert subprocess.run(["dpkg-deb", "--field", str(deb), "Package"], capture_output=True,
                          text=True).stdout.strip() == "acme-hello"


def test_unreadable_file(repo: Path) -> None:
    """As root every file is readable: drop the capabilities that make it so, as a normal user has none."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run without DAC capabilities")
    secret = repo / "stage/etc/hello/secret.conf"
    secret.write_text("password\n")
    secret.chmod(0)
    commit(repo, "unreadable")
    store = repo.parent / "store"
    args = ["--root", "stage", "--note", "test", "--store", str(store)]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        argv = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    else:
        argv = []
    proc = subprocess.run([*argv, sys.executable, "-m", "push.cli", "release", "hello", *args], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert_refused(Result(proc.returncode, proc.stdout, proc.stderr), "cannot read", "secret.conf",
                   "Permission denied")
    assert_nothing_uploaded(store)


def test_outside_git_needs_hash(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo")
    outside = tmp_path / "outside"
    shutil.copytree(tmp_path / "repo" / "stage", outside / "stage")
    store = tmp_path / "store"
    result = push("release", "hello", "--root", "stage", "--note", "t", "--store", store, cwd=outside)
    assert_refused(result, "not in a git repository", "--hash")
    assert_nothing_uploaded(store)
    bad = push("release", "hello", "--root", "stage", "--note", "t", "--store", store, "--hash", "abc", cwd=outside)
    assert_refused(bad, "40-hex")
    commit_hash = "0123456789abcdef0123456789abcdef01234567"
    ok = push("release", "hello", "--root", "stage", "--note", "t", "--store", store, "--hash", commit_hash,
              "--no-lintian", cwd=outside)
    assert ok.code == 0, ok.err
    assert ok.last_line.endswith(f":{commit_hash}.deb")


def test_unreachable_store(repo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "-m", "push.cli", "release", "hello", "--root", "stage", "--note", "t",
                           "--store", "s3://push-test-bucket", "-o", str(tmp_path / "kept.deb")],
                          cwd=repo, capture_output=True, text=True, timeout=120, env=env)
    assert_refused(Result(proc.returncode, proc.stdout, proc.stderr), "127.0.0.1:1", code=4)
    # Refused before building: the store is asked first.
    assert not (tmp_path / "kept.deb").exists()


@pytest.mark.slow
def test_failed_upload_leaves_nothing(repo: Path) -> None:
    store = repo.parent / "store"
    # A file where the app's directory of releases must go: the upload fails at its very end.
    (store / "objects" / "debs").mkdir(parents=True)
    (store / "objects" / "debs" / "hello").write_text("in the way\n")
    assert_refused(release(repo, "--root", "stage"), "cannot write", "debs/hello/", code=4)
    (store / "objects" / "debs" / "hello").unlink()
    assert_nothing_uploaded(store)


@pytest.mark.slow
def test_lintian_error_blocks_the_upload(repo: Path) -> None:
    script = repo / "stage/usr/local/bin/hello"
    script.write_text("#!/usr/bin/python3\nprint('hello')\n")  # python3, which the package does not depend on
    commit(repo, "python")
    assert_refused(release(repo, "--root", "stage"), "lintian found", "python3-script-but-no-python3-dep")
    assert_nothing_uploaded(repo.parent / "store")
    fixed = release(repo, "--root", "stage", "--depends", "python3")
    assert fixed.code == 0, fixed.err


def test_require_clean_refuses_a_dirty_tree(repo: Path) -> None:
    (repo / "stage/etc/hello/hello.conf").write_text("version = uncommitted\n")
    assert_refused(release(repo, "--root", "stage", "--require-clean"), "dirty", "uncommitted changes")
    assert_nothing_uploaded(repo.parent / "store")
    allowed = release(repo, "--root", "stage", "--no-lintian")
    assert allowed.code == 0, allowed.err
    assert Catalog(open_store(str(repo.parent / "store"))).releases("hello")[0].dirty is True


@pytest.mark.parametrize(("args", "fragment", "code"), [
    (["--root", "stage", "--note", ""], "the note is empty", 1),
    (["--root", "stage", "--note", "two\nlines"], "the note must be one line", 1),
    (["--root", "stage"], "one of the arguments --note --note-from-git is required", 2),
    (["--root", "stage", "--note", "t", "--depends", "python3 (>> )"], "bad dependency", 1),
    (["--root", "stage", "--note", "t", "--depends", "Python3"], "bad dependency", 1),
    (["--root", "stage", "--note", "t", "--no-upload"], "--no-upload needs -o FILE", 2),
    (["--root", "stage", "--note", "t", "-o", "no-dir/x.deb"], "does not exist", 2),
    (["--root", "stage", "--note", "t", "--compression-level", "30"], "out of range", 1),
    (["--note", "t"], "nothing to build", 2),
    (["--deb", "missing.deb", "--note", "t"], "does not exist", 1),
    (["--deb", "stage/etc/hello/hello.conf", "--note", "t"], "dpkg-deb --field", 1),
    (["--deb", "x.deb", "--note", "t", "--depends", "python3"], "--depends: a prebuilt package", 1),
])
def test_bad_arguments(repo: Path, args: list[str], fragment: str, code: int) -> None:
    result = push("release", "hello", "--store", repo.parent / "store", *args, cwd=repo)
    assert_refused(result, fragment, code=code)
    assert_nothing_uploaded(repo.parent / "store")


def test_debian_dir_in_the_root_is_refused(repo: Path) -> None:
    (repo / "stage/DEBIAN").mkdir()
    (repo / "stage/DEBIAN/control").write_text("Package: mine\n")
    assert_refused(release(repo, "--root", "stage"), "DEBIAN", "--deb")
    assert_nothing_uploaded(repo.parent / "store")


def test_empty_root_is_refused(repo: Path) -> None:
    (repo / "empty").mkdir()
    assert_refused(release(repo, "--root", "empty"), "holds no files")


@pytest.mark.parametrize(("manifest", "fragment"), [
    ('app = "hello"\n[files]\n"/usr/local/bin/hello" = "nope"\n', "source 'nope' does not exist"),
    ('app = "hello"\ndependz = ["x"]\n[files]\n"/usr/local/bin/hello" = "hello.sh"\n', "unknown key(s) dependz"),
    ('app = "other"\n[files]\n"/usr/local/bin/hello" = "hello.sh"\n', "manifest of app 'other'"),
    ('[files]\n"usr/local/bin/hello" = "hello.sh"\n', "must be an absolute path"),
    ('[files]\n"/usr/local/bin/hello" = { src = "hello.sh", mode = "rwx" }\n', "is not octal"),
    ('[files]\n"/DEBIAN/postinst" = "hello.sh"\n', "inside DEBIAN/"),
    ('units = ["not a unit"]\n[files]\n"/usr/local/bin/hello" = "hello.sh"\n', "not a systemd unit name"),
    ('app = "hello"\n', "nothing to package"),
    ('app = "hello\n', "not valid TOML"),
])
def test_bad_manifest_names_the_file_and_the_mistake(repo: Path, manifest: str, fragment: str) -> None:
    (repo / "hello.sh").write_text("#!/bin/sh\n")
    (repo / "push.toml").write_text(manifest)
    result = release(repo, "--manifest", "push.toml")
    assert_refused(result, str(repo / "push.toml"), fragment)
    assert_nothing_uploaded(repo.parent / "store")


def test_note_from_git_takes_the_last_commit_subject(repo: Path) -> None:
    commit_hash = git(repo, "rev-parse", "HEAD")
    result = push("release", "hello", "--root", "stage", "--note-from-git", "--no-lintian",
                  "--store", repo.parent / "store", cwd=repo)
    assert result.code == 0, result.err
    info = Catalog(open_store(str(repo.parent / "store"))).get(result.last_line)
    assert info.note == "hello 1"
    assert info.release.hash == commit_hash


def test_unit_command_from_elsewhere_is_a_warning_not_an_error(repo: Path) -> None:
    """A command neither in the package nor on this machine may come from a dependency."""
    unit = repo / "stage/etc/systemd/system/hello.service"
    unit.write_text(unit.read_text().replace("ExecStart=/usr/local/bin/hello", "ExecStart=/usr/sbin/not-here-at-all"))
    commit(repo, "command from a dependency")
    result = release(repo, "--root", "stage", "--no-lintian")
    assert result.code == 0, result.err
    assert "push: warning: hello.service: /usr/sbin/not-here-at-all is neither in the package nor on this machine" \
        in result.err
