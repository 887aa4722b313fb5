"""One bad object affects only itself: a damaged release, a malformed server file, a bad
report, a foreign history key are each skipped, counted, logged with their key and listed as
problems in the bucket; every other server, release and record keeps working."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from fleetdata import conf_text, make_config, make_release, report
from push import fleet, serverfile
from push.catalog import Catalog
from push.cli import main
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.store.local import LocalStore
from waiting import wait_for

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def broken(bucket, tmp_path):
    """A bucket where web-1 is fine and one object of every kind is bad."""
    rels = [make_release(bucket, "hello", n) for n in range(1, 4)]
    ctx = fleet.Context.open(bucket, make_config(tmp_path), via="test")
    fleet.deploy(ctx, "alice", "web-1", "hello", rels[1].name)
    fleet.deploy(ctx, "alice", "web-2", "hello", rels[1].name)
    report(bucket, "web-1", {"hello": rels[1].name})
    # A release whose local header is damaged (a torn write, a disk error).
    (bucket.root / "objects" / rels[2].release.key).write_bytes(b"{not a header\nDEB")
    # server/web-2.json nested deeper than any parser goes.
    bucket.put("server/web-2.json", DEEP)
    # A report that is not one, and history keys that hold no record.
    bucket.put("status/db-1.json", b"\xff\xfe not json")
    bucket.put("history/all/\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2"
               "\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2-ab~web-1~hello.json", b"{}")
    bucket.put("history/all/abc~web-1~hello.json", b"{}")
    return rels


BAD_KEYS = {"server/web-2.json", "status/db-1.json"}


def test_the_catalogue_skips_a_damaged_release_and_counts_it(bucket, broken, caplog):
    caplog.set_level(logging.WARNING)
    catalog = Catalog(bucket)
    assert [r.name for r in catalog.releases("hello")] == [broken[1].name, broken[0].name]
    assert list(catalog.skipped) == [broken[2].release.key] and "damaged" in catalog.skipped[broken[2].release.key]
    assert broken[2].release.key in caplog.text


def test_a_damaged_release_stays_skipped_and_counted_when_the_catalogue_loads_from_its_index(bucket, broken,
                                                                                             tmp_path):
    """The catalogue index (a push server's) keeps what it skipped: a catalogue that starts
    from it, a push server that does, and a full re-list all still skip, count and list it."""
    writer = Catalog(bucket, writes_index=True)
    writer.releases("hello")
    assert writer.write_index(force=True)
    key = broken[2].release.key
    reader = Catalog(bucket)
    assert [r.name for r in reader.releases("hello")] == [broken[1].name, broken[0].name]
    assert reader.index_reads == 1 and list(reader.skipped) == [key] and "damaged" in reader.skipped[key]
    reader.refresh(full=True)
    assert [r.name for r in reader.releases("hello")] == [broken[1].name, broken[0].name]
    assert list(reader.skipped) == [key]
    app = create_app(bucket, make_config(tmp_path), auth=AuthSettings(no_auth=True), poll_interval=0.05)
    with TestClient(app) as client:
        assert key in {p["key"] for p in client.get("/api/v1/problems").json()}
        assert client.get("/api/v1/apps/hello/releases").status_code == 200


def test_a_deeply_nested_server_file_is_one_invalid_file(bucket, broken):
    with pytest.raises(Exception) as e:
        serverfile.read(bucket, "web-2")
    assert type(e.value).__name__ == "InvalidServerFile" and "nested too deeply" in str(e.value)


def test_the_push_server_works_around_every_bad_object(bucket, broken, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    app = create_app(bucket, make_config(tmp_path), auth=AuthSettings(no_auth=True), poll_interval=0.05)
    with TestClient(app) as client:
        # The first look at the bucket runs in the background (503 until then, on a busy machine too).
        health = wait_for(lambda: (r := client.get("/healthz")).status_code == 200 and r, 30.0, "a 200 from /healthz")
        problems = {p["key"]: p["error"] for p in client.get("/api/v1/problems").json()}
        assert BAD_KEYS | {broken[2].release.key} <= problems.keys()
        assert health.json()["unreadable"] == len(problems) >= 3
        fleet_state = {s["server"]: s for s in client.get("/api/v1/fleet").json()["servers"]}
        assert fleet_state["web-1"]["file_error"] is None
        assert [a["desired"] for a in fleet_state["web-1"]["apps"] if a["app"] == "hello"] == [broken[1].name]
        assert "nested too deeply" in fleet_state["web-2"]["file_error"]
        assert client.get("/api/v1/apps/hello/releases").status_code == 200
        history = client.get("/api/v1/history")
        assert history.status_code == 200 and len(history.json()) == 2
        problems = {p["key"] for p in client.get("/api/v1/problems").json()}
        assert "history/all/abc~web-1~hello.json" in problems  # found by the listing, skipped, counted
        assert client.get("/healthz").json()["unreadable"] == len(problems)
        for page in ("/", "/servers/web-1", "/servers/web-2", "/apps/hello", "/history"):
            r = client.get(page, headers={"accept": "text/html"})
            assert r.status_code == 200, (page, r.text[:300])
        front = client.get("/", headers={"accept": "text/html"}).text
        assert "Problems in the bucket" in front and "server/web-2.json" in front
        # A change to a healthy server still goes through.
        r = client.post("/api/v1/servers/web-1/apps/hello/deploy", json={"release": broken[0].name})
        assert r.status_code == 200, r.text
    assert "server/web-2.json" in caplog.text and "status/db-1.json" in caplog.text


def test_push_status_of_the_bad_server_prints_one_clear_line(bucket, broken, tmp_path, monkeypatch, capsys):
    conf = tmp_path / "skiapush.conf"
    conf.write_text(conf_text())
    monkeypatch.setenv("PUSH_STORE", str(bucket.root))
    monkeypatch.setenv("PUSH_CONFIG", str(conf))
    assert main(["status", "web-2"]) == 0
    out, err = capsys.readouterr()
    assert "RecursionError" not in out + err and "internal error" not in out + err
    assert "server/web-2.json: not a JSON array of release names (nested too deeply)" in out
    assert main(["status", "--json"]) == 0
    servers = {s["server"]: s for s in json.loads(capsys.readouterr().out)["servers"]}
    assert servers["web-1"]["file_error"] is None and servers["web-2"]["file_error"]
    assert main(["releases", "hello"]) == 0
    assert broken[1].name in capsys.readouterr().out


# -- an operator's bad day: a typo, an empty store ---------------------------------------------


def test_a_wrong_or_empty_store_is_said_so(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "skiapush.conf"
    conf.write_text(conf_text())
    monkeypatch.setenv("PUSH_CONFIG", str(conf))
    # A store that does not exist is an error (everyday CLI); one that exists but holds
    # nothing (a mount that failed, a wrong bucket) is read, with a warning.
    assert main(["status", "--store", str(tmp_path / "typo")]) == 4
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()  # reading never creates a store
    (tmp_path / "unmounted").mkdir()
    assert main(["status", "--store", str(tmp_path / "unmounted")]) == 0
    err = capsys.readouterr().err
    assert "holds no server files, agent reports or releases: is --store / PUSH_STORE right?" in err
    assert main(["status", "--store", "s3:/bucket"]) == 2
    assert "missing a slash: use s3://" in capsys.readouterr().err
    app = create_app(LocalStore(tmp_path / "empty"), make_config(tmp_path), auth=AuthSettings(no_auth=True))
    with TestClient(app) as client:
        assert client.get("/healthz").json()["empty"] is True
        assert "holds nothing" in client.get("/", headers={"accept": "text/html"}).text


def test_a_bad_object_found_through_the_change_journal_is_one_problem(bucket, broken, tmp_path):
    """Between full re-lists the fleet view reads only what the journal names: a server file
    or report damaged meanwhile is a problem of its own there too, and never stops the poll."""
    from push import changes
    from push.fleetview import FleetView

    ctx = fleet.Context.open(bucket, make_config(tmp_path), via="test")
    view = FleetView(ctx)
    view.refresh(full=True)
    assert "server/web-1.json" not in view.problems()
    (bucket.root / "objects" / "server/web-1.json").write_bytes(b"{not a header\n[]")
    bucket.put("status/web-1.json", DEEP)
    changes.record(bucket, changes.SERVER, "web-1")
    changes.record(bucket, changes.STATUS, "web-1")
    view.refresh()  # the journal's tail, not a full re-list
    problems = view.problems()
    assert {"server/web-1.json", "status/web-1.json"} <= problems.keys(), problems
    assert view.state().servers  # every other server is still there
    (bucket.root / "objects" / "server/web-1.json").unlink()  # the damaged file is taken away
    report(bucket, "web-1", {"hello": broken[1].name})
    changes.record(bucket, changes.SERVER, "web-1")
    view.refresh()
    assert not {"server/web-1.json", "status/web-1.json"} & view.problems().keys()
