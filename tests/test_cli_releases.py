"""`push releases`: the catalogue at the command line, and errors as one line with an exit code."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from push.catalog import publish
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore

H = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"


def push(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PUSH_STORE", None)
    return subprocess.run([sys.executable, "-m", "push.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_empty_store_prints_empty_json_array(tmp_path):
    (tmp_path / "empty").mkdir()
    r = push("releases", "--json", "--store", f"file://{tmp_path}/empty")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_a_store_that_does_not_exist_is_an_error(tmp_path):
    """A mistyped path is no empty fleet: exit 4, one line, and reading creates nothing."""
    r = push("releases", "--json", "--store", f"file://{tmp_path}/missing")
    assert r.returncode == 4 and r.stdout == ""
    assert r.stderr.strip() == (f"push: error: no store at {tmp_path}/missing: the directory does not exist "
                                f"(--store file://{tmp_path}/missing)")
    assert not (tmp_path / "missing").exists()


def test_lists_releases_with_metadata_newest_first(tmp_path):
    store = LocalStore(tmp_path / "b")
    for day in (1, 3, 2):
        publish(store, ReleaseInfo(Release("web", "ann", "box", datetime(2026, 1, day, tzinfo=timezone.utc), H),
                                   note=f"day {day}", dirty=day == 3, services=("web.service",),
                                   sha256="c" * 64, size=10), b"deb")
    r = push("releases", "web", "--json", "--store", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["note"] for x in out] == ["day 3", "day 2", "day 1"]
    assert out[0] | {} == out[0] and out[0]["dirty"] is True and out[0]["services"] == ["web.service"]
    assert out[0]["sha256"] == "c" * 64 and out[0]["size"] == 10 and out[0]["user"] == "ann"
    text = push("releases", "--store", str(tmp_path / "b"))
    assert text.returncode == 0 and "day 3" in text.stdout and "dirty" in text.stdout


@pytest.mark.parametrize("args, code, message", [
    (["releases", "--store", "ftp://bucket"], 2, "unknown store scheme 'ftp'"),
    (["releases", "--store", "gs://"], 2, "names no bucket"),
    (["releases", "../etc", "--store", "/tmp"], 1, "invalid app name"),
    (["releases", "--bogus"], 2, "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_an_exit_code(args, code, message):
    r = push(*args)
    assert r.returncode == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # argparse adds its usage line for usage errors


def test_unreachable_s3_store_is_one_clear_line(tmp_path):
    r = push("releases", "--store", "s3://bucket", env={
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1"})
    assert r.returncode == 4, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_unknown_app_is_a_named_error_but_a_configured_one_is_empty(tmp_path):
    r = push("releases", "nosuch", "--store", str(tmp_path / "b"), "--config", str(tmp_path / "none.conf"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    conf = tmp_path / "skiapush.conf"
    conf.write_text('[servers.s1]\nappNames = ["web"]\n')
    (tmp_path / "b").mkdir()
    r = push("releases", "nosuch", "--store", str(tmp_path / "b"), "--config", str(conf))
    assert r.returncode == 1 and "no such app 'nosuch'" in r.stderr
    r = push("releases", "wbe", "--store", str(tmp_path / "b"), "--config", str(conf))
    assert r.returncode == 1 and r.stderr.strip().endswith("did you mean web?")
    r = push("releases", "web", "--json", "--store", str(tmp_path / "b"), "--config", str(conf))
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_objects_with_bad_metadata_are_skipped_with_a_warning(tmp_path):
    store = LocalStore(tmp_path / "b")
    good = ReleaseInfo(Release("web", "ann", "box", datetime(2026, 1, 1, tzinfo=timezone.utc), H))
    publish(store, good, b"deb")
    bad = Release("web", "ann", "box", datetime(2026, 1, 2, tzinfo=timezone.utc), H)
    store.put(bad.key, b"deb", {"appname": "other"})
    r = push("releases", "web", "--json", "--store", str(tmp_path / "b"))
    assert r.returncode == 0
    assert [x["name"] for x in json.loads(r.stdout)] == [good.name]
    assert "skipped 1 object" in r.stderr and "does not match" in r.stderr
