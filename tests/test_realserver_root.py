"""The systemd tier's own machinery, fast: the root cache is used only when complete, the
mirror comes from this machine's apt sources, and a machine that cannot boot a server skips
the tier except in CI, where it fails. (The tier itself is tests/test_realserver.py.)
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import realserver

pytestmark = pytest.mark.systemd


def _fake_debootstrap(bin_dir: Path, exit_code: int) -> None:
    """A debootstrap that lays out a sliver of a root (its 4th argument) and exits `exit_code`."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "debootstrap"
    tool.write_text('#!/bin/sh\nmkdir -p "$4/etc/apt/apt.conf.d" && echo built > "$4/etc/hostname"\n'
                    f"exit {exit_code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(realserver, "check_machine", lambda: None)  # no root or nspawn needed here
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return tmp_path / "cache"


def test_a_failed_build_leaves_nothing_and_a_good_one_is_renamed_into_place(cache: Path, tmp_path: Path) -> None:
    _fake_debootstrap(tmp_path / "bin", exit_code=1)
    with pytest.raises(realserver.CannotBoot, match=r"debootstrap from \S+ failed \(exit 1\)"):
        realserver.debian_root(tmp_path / "log", cache=cache)
    roots = cache / "roots"
    assert [p.name for p in roots.iterdir() if not p.name.endswith(".lock")] == []

    # A build killed half-way (no rename) is left as KEY.tmp-*: never used, removed by the next.
    key = realserver.root_key()
    (roots / f"{key}.tmp-killed/etc").mkdir(parents=True)
    _fake_debootstrap(tmp_path / "bin", exit_code=0)
    root = realserver.debian_root(tmp_path / "log", cache=cache)
    assert root == roots / key
    assert sorted(p.name for p in roots.iterdir()) == [key, f"{key}.lock"]
    assert not (root / "etc/hostname").exists()  # the build machine's name is not every server's
    assert "localhost" in (root / "etc/hosts").read_text()
    assert stat.S_IMODE(root.stat().st_mode) == 0o755

    # Once there, it is used as it is: debootstrap does not even run.
    (tmp_path / "bin/debootstrap").unlink()
    assert realserver.debian_root(tmp_path / "log", cache=cache) == root


def test_the_mirror_is_this_machines(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
                       "Components: main\n\nTypes: deb\n# a comment\nURIs: http://mirror.example/debian\n"
                       "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert realserver.debian_mirror(sources, tmp_path / "none") == "http://mirror.example/debian"
    legacy = tmp_path / "sources.list"
    legacy.write_text("# old style\ndeb http://old.example/debian bookworm main\n")
    assert realserver.debian_mirror(tmp_path / "none", legacy) == "http://old.example/debian"
    assert realserver.debian_mirror(tmp_path / "none", tmp_path / "none") == realserver.DEFAULT_MIRROR


def test_cannot_boot_skips_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot boot a real server here: no nspawn"):
        realserver.cannot_boot("no nspawn")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true forbids skipping"):
        realserver.cannot_boot("no nspawn")
