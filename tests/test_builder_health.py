"""`[health]` in push.toml and `push release --health-*`: the check a release declares, in its
metadata under `health`, checked at build time, and covered by a release signature."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from buildapp import commit, make_repo, push
from push import signing
from push.catalog import Catalog
from push.health import HEALTH_METADATA, HealthCheck
from push.release import ReleaseInfo
from push.signing import Keyring, PublicKey, Untrusted
from push.store import open_store
from test_builder_errors import assert_nothing_uploaded, assert_refused

MANIFEST = """\
app = "hello"
[files]
"/usr/local/bin/hello" = "stage/usr/local/bin/hello"
[health]
http = "http://127.0.0.1:${PORT}/health"
within = 20
revert = false
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def release(repo: Path, *args: str | Path) -> tuple[int, str, str]:
    r = push("release", "hello", "--note", "test", "--no-lintian", "--store", repo.parent / "store", *args, cwd=repo)
    return r.code, r.out.strip().splitlines()[-1] if r.out.strip() else "", r.err


def bump(repo: Path) -> None:
    """A new commit, so the next release's name differs even within the same second."""
    (repo / "CHANGES").write_text((repo / "CHANGES").read_text() + "x" if (repo / "CHANGES").exists() else "x")
    commit(repo, "another change")


def stored(repo: Path, name: str) -> ReleaseInfo:
    return Catalog(open_store(str(repo.parent / "store"))).get(name)


def test_the_manifest_declares_the_check_and_flags_override_it(repo: Path) -> None:
    (repo / "push.toml").write_text(MANIFEST)
    code, name, err = release(repo, "--manifest", "push.toml")
    assert code == 0, err
    raw = stored(repo, name).extra[HEALTH_METADATA]
    assert json.loads(raw) == {"http": "http://127.0.0.1:${PORT}/health", "within": 20, "interval": 30,
                               "timeout": 10, "revert": False}
    assert " " not in raw  # compact: it shares S3's 2 KB with the rest of the metadata
    bump(repo)
    code, name, err = release(repo, "--manifest", "push.toml", "--health-within", "5",
                              "--health-command", "/usr/local/bin/hello --check 'a b'")
    assert code == 0, err
    check = HealthCheck.of_release(stored(repo, name))
    assert check == HealthCheck(http="http://127.0.0.1:${PORT}/health", command=("/usr/local/bin/hello", "--check",
                                                                                  "a b"), within=5, revert=False)


def test_flags_without_a_manifest_and_none_at_all(repo: Path) -> None:
    code, name, err = release(repo, "--root", "stage", "--health-http", "http://127.0.0.1:8080/", "--no-revert",
                              "--health-timeout", "2.5")
    assert code == 0, err
    assert HealthCheck.of_release(stored(repo, name)) == HealthCheck(http="http://127.0.0.1:8080/", timeout=2.5,
                                                                     revert=False)
    bump(repo)
    code, name, err = release(repo, "--root", "stage")
    assert code == 0, err
    assert HEALTH_METADATA not in stored(repo, name).extra  # no check declared: none stored


@pytest.mark.parametrize(("args", "fragment"), [
    (["--health-http", "localhost:80"], "http must be an http:// or https:// URL"),
    (["--health-within", "0"], "within must be a number of seconds"),
    (["--health-command", "/bin/true " + "x" * 1100], "over the 1024 allowed"),
])
def test_a_bad_check_is_refused_before_any_work(repo: Path, args: list[str], fragment: str) -> None:
    code, out, err = release(repo, "--root", "stage", *args)
    assert code == 1 and fragment in err and out == "", err
    assert_nothing_uploaded(repo.parent / "store")


@pytest.mark.parametrize(("table", "fragment"), [
    ('command = "/usr/bin/check"', "command must be a list of arguments"),
    ("every = 3", "unknown key(s) every"),
    ("revert = 1", "revert must be true or false"),
])
def test_a_bad_health_table_names_the_file(repo: Path, table: str, fragment: str) -> None:
    (repo / "push.toml").write_text(MANIFEST.split("[health]")[0] + "[health]\n" + table + "\n")
    result = push("release", "hello", "--note", "t", "--store", repo.parent / "store", "--manifest", "push.toml",
                  cwd=repo)
    assert_refused(result, str(repo / "push.toml"), "[health]", fragment)


def test_the_note_and_the_check_together_must_fit_s3s_metadata(repo: Path) -> None:
    long_note = "n" * 1200
    check = ["--health-command", "/bin/true " + "x" * 800]
    result = push("release", "hello", "--note", long_note, "--no-lintian", "--store", repo.parent / "store",
                  "--root", "stage", *check, cwd=repo)
    assert_refused(result, "over the 2048 that S3 allows", "shorten the note or the health check")
    assert_nothing_uploaded(repo.parent / "store")


def test_a_signature_covers_the_check(repo: Path, tmp_path: Path) -> None:
    _, key_path, pub_path = signing.write_key_pair(tmp_path / "keys", "release-1")
    code, name, err = release(repo, "--root", "stage", "--health-http", "http://127.0.0.1:8080/",
                              "--signing-key", key_path)
    assert code == 0, err
    keyring = Keyring([PublicKey.load(pub_path)])
    info = stored(repo, name)
    assert signing.verify_release(info, keyring).health == info.extra[HEALTH_METADATA]
    for tampered in (HealthCheck(http="http://127.0.0.1:8080/", revert=False).encode(), None):
        extra = {k: v for k, v in info.extra.items() if k != HEALTH_METADATA}
        if tampered is not None:
            extra[HEALTH_METADATA] = tampered
        with pytest.raises(Untrusted):
            signing.verify_release(dataclasses.replace(info, extra=extra), keyring)
