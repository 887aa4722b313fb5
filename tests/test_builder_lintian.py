"""lintian, asked only for its error tags, reaches the same verdict as lintian running every check.

Push fails a build on lintian's errors alone, so checks.lintian passes lintian the tags it
can report as errors (`--tags`) and lintian skips every check that cannot report one. These
tests hold that to real lintian runs on a package with errors and one without.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from buildapp import make_repo, push
from push.builder import checks
from push.builder.errors import BuildError

# lintian takes seconds a run.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("lintian") is None, reason="scripts/test installs lintian")]


def errors_of(deb: Path, *extra: str) -> set[str]:
    out = subprocess.run(["lintian", "--fail-on", "none", "--tag-display-limit", "0", *extra, str(deb)],
                         capture_output=True, text=True, check=True).stdout
    return {line.split(": ", 2)[2] for line in out.splitlines() if line.startswith("E: ")}


def built(tmp_path: Path, python_script: bool) -> Path:
    repo = make_repo(tmp_path / "repo")
    script = repo / "stage/usr/local/bin/hello"
    if python_script:  # python3, which the package does not depend on: an error
        script.write_text("#!/usr/bin/python3\nprint('hello')\n")
    (repo / "stage/usr/local/share/hello").mkdir(parents=True)
    # A JavaScript library: lintian's slowest check looks for such files, and warns at most.
    (repo / "stage/usr/local/share/hello/jquery.js").write_text("/*! jQuery v3.6.0 | (c) OpenJS Foundation */\n")
    deb = tmp_path / "hello.deb"
    result = push("release", "hello", "--root", "stage", "--note", "lint", "--no-upload", "-o", deb, "--no-lintian",
                  cwd=repo)
    assert result.code == 0, result.err
    return deb


def test_error_tags_are_read_from_lintian_itself() -> None:
    tags = checks.lintian_error_tags()
    assert len(tags) > 300
    assert "python3-script-but-no-python3-dep" in tags and "file-in-usr-local" in tags
    assert "team/pkg-perl/xs-abi/legacy-vendorarch-directory" in tags  # name-spaced, as --tags takes it
    assert "embedded-javascript-library" not in tags  # a warning


@pytest.mark.parametrize("python_script", [True, False])
def test_same_errors_as_every_check(tmp_path: Path, python_script: bool) -> None:
    deb = built(tmp_path, python_script)
    everything = errors_of(deb)
    assert errors_of(deb, "--tags", ",".join(checks.lintian_error_tags())) == everything
    assert any(e.startswith("python3-script-but-no-python3-dep") for e in everything) == python_script
    if python_script:  # the error, and how to fix it
        with pytest.raises(BuildError, match="python3-script-but-no-python3-dep") as e:
            checks.lintian(deb)
        assert str(e.value).endswith("To fix: python3-script-but-no-python3-dep: a script runs python3, which the "
                                     "package does not depend on: add --depends python3 "
                                     '(or depends = ["python3"] in push.toml)')
    else:
        report = checks.lintian(deb)
        assert report.errors == [] and report.checked_tags == len(checks.lintian_error_tags())


def test_every_check_runs_where_the_tags_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "LINTIAN_BASE", tmp_path / "nowhere")
    deb = built(tmp_path, python_script=True)
    with pytest.raises(BuildError, match="python3-script-but-no-python3-dep"):
        checks.lintian(deb)
    report = checks.lintian(built(tmp_path / "clean", python_script=False))
    assert report.checked_tags == 0 and report.warnings  # every check ran: warnings too
