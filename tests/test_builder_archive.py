"""The archive writer (push.builder.debarchive) against dpkg-deb itself, on the same tree.

The writer replaces `dpkg-deb --build` for speed (the package is written once, not compressed
to a temporary file and copied), so it is held to the same result: the same members, the same
entries in the same order with the same modes, owners, sizes, link targets and contents, for
every compression, and a control member dpkg reads back.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import time
from pathlib import Path

import pytest

from buildapp import dpkg, installed, make_repo, push
from push.builder import BuildRequest, build, debarchive, staging
from push.builder.errors import BuildError

CONTROL = "Package: tricky\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@example.com>\nDescription: t\n"


def run(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def tricky_tree(root: Path) -> Path:
    """Names that sort differently by byte, by path and by component; links; odd modes; a future mtime."""
    root.mkdir(mode=0o700)  # a private temp dir: the package root must still be 0755
    for rel in ("a", "a-b", "a.c", "B", "a/x", "a/x/y", "z/ü", "empty"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "a/file").write_text("in a\n")
    (root / "a-b/file").write_bytes(os.urandom(100_001))  # odd size
    (root / "a.c/tool").write_text("#!/bin/sh\necho tool\n")
    (root / "a.c/tool").chmod(0o755)
    (root / "a/x/y/deep").write_text("deep\n")
    (root / "z/ü/née").write_text("unicode\n")
    (root / "B/private").write_text("0600\n")
    (root / "B/private").chmod(0o600)
    os.link(root / "a/file", root / "B/hardlink")
    os.symlink("../a/file", root / "z/link")
    future = root / "a/future"
    future.write_text("from the future\n")
    os.utime(future, (time.time() + 86400, time.time() + 86400))
    return root


def with_debian(tree: Path, dest: Path) -> Path:
    """A hard-linked copy of `tree` with DEBIAN/, for dpkg-deb."""
    run("cp", "-a", "--link", tree, dest)
    (dest / "DEBIAN").mkdir()
    (dest / "DEBIAN/control").write_text(CONTROL)
    (dest / "DEBIAN/postinst").write_text("#!/bin/sh\nexit 0\n")
    (dest / "DEBIAN/postinst").chmod(0o755)
    dest.chmod(0o755)
    return dest


def listing(deb: Path, part: str = "--fsys-tarfile") -> list[str]:
    """Every entry of a member: mode, owner, size, name and link target (mtimes left out: the
    two builds ran at different seconds)."""
    tar = subprocess.run(["dpkg-deb", part, str(deb)], check=True, capture_output=True).stdout
    out = subprocess.run(["tar", "-tvf", "-", "--numeric-owner"], input=tar, check=True, capture_output=True).stdout
    return [" ".join(line.split()[:3] + line.split()[5:]) for line in out.decode().splitlines()]


@pytest.mark.parametrize(("compression", "level"), [("zstd", None), ("zstd", 20), ("xz", None), ("xz", 0),
                                                   ("gzip", None), ("gzip", 1), ("none", None)])
def test_same_package_as_dpkg_deb(tmp_path: Path, compression: str, level: int | None) -> None:
    tree = tricky_tree(tmp_path / "tree")
    ours, theirs = tmp_path / "ours.deb", tmp_path / "theirs.deb"
    scanned = staging.scan_root(tree)
    control_dir = with_debian(tree, tmp_path / "plain") / "DEBIAN"
    debarchive.write(ours, control_dir, tree, scanned.entries, int(time.time()), compression, level)
    run("dpkg-deb", "--root-owner-group", f"-Z{compression}", *([f"-z{level}"] if level is not None else []),
        "--build", tmp_path / "plain", theirs)

    assert run("ar", "t", ours) == run("ar", "t", theirs)
    assert listing(ours) == listing(theirs)
    assert listing(ours, "--ctrl-tarfile") == listing(theirs, "--ctrl-tarfile")
    assert run("dpkg-deb", "--field", ours) == CONTROL
    for deb in (ours, theirs):
        run("dpkg-deb", "-x", deb, tmp_path / f"x-{deb.stem}")
    compared = filecmp.dircmp(tmp_path / "x-ours", tmp_path / "x-theirs")
    assert not (compared.left_only or compared.right_only or compared.diff_files)
    assert filecmp.cmp(tmp_path / "x-ours/a-b/file", tree / "a-b/file", shallow=False)
    assert (tmp_path / "x-ours/a/future").stat().st_mtime <= time.time()  # clamped to the build time
    # The source tree is read where it lies and never written to.
    assert sorted(os.listdir(tree)) == ["B", "a", "a-b", "a.c", "empty", "z"]


def test_gzip_level_0_is_left_to_dpkg_deb() -> None:
    assert not debarchive.can_write("gzip", 0)  # gzip(1) has no level 0; dpkg-deb's zlib stores
    assert debarchive.can_write("gzip", 1) and debarchive.can_write("zstd", None)


def test_a_failing_tool_names_itself_and_leaves_no_package(tmp_path: Path) -> None:
    tree = tricky_tree(tmp_path / "tree")
    control_dir = with_debian(tree, tmp_path / "plain") / "DEBIAN"
    out = tmp_path / "broken.deb"
    with pytest.raises(BuildError, match=r"making data.tar failed: tar: .*missing"):
        debarchive.write(out, control_dir, tree, ["a", "missing"], int(time.time()), "zstd", None)
    assert not out.exists()


def test_released_package_installs_and_its_root_is_0755(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "stage").chmod(0o700)
    deb = tmp_path / "hello.deb"
    result = push("release", "hello", "--root", "stage", "--note", "archive", "--no-upload", "-o", deb,
                  "--no-lintian", cwd=repo)
    assert result.code == 0, result.err
    assert listing(deb)[0] == "drwxr-xr-x 0/0 0 ./"
    assert not (repo / "stage" / "DEBIAN").exists()
    root = tmp_path / "sandbox"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    dpkg(root, "-i", deb)
    assert installed(root, "push-hello")[1] == "install ok installed"
    assert (root / "usr/local/bin/hello").read_text().startswith("#!/bin/sh")


def test_dpkg_deb_builds_where_the_compressor_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debarchive, "can_write", lambda compression, level: False)  # no zstd command
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "work").mkdir()
    built = build(BuildRequest(app="hello", root=repo / "stage", note="fallback", repo=repo, lintian=False),
                  tmp_path / "work")
    assert run("dpkg-deb", "--field", built.path, "Package").strip() == "push-hello"
    assert "./usr/local/bin/hello" in run("dpkg-deb", "-c", built.path)
    assert not (repo / "stage" / "DEBIAN").exists()
