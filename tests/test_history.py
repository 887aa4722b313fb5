"""History records: keys, views per server / app / fleet, paging, and the rollback rule."""

import json
from pathlib import Path

import pytest

from push.errors import InvalidData, NotFound
from push.history import History, Record, new_record
from push.store.local import LocalStore

A, B, C, D = (f"hello/hello:u@h:2026-01-0{i}T00:00:00Z:{'a' * 40}.deb" for i in (1, 2, 3, 4))


@pytest.fixture
def history(tmp_path):
    return History(LocalStore(tmp_path / "bucket"))


def add(history, server, app, action, frm, to, ns):
    return history.write(new_record("alice@example.com", server, app, action, from_=frm, to=to, now_ns=ns))


def test_record_keys_sort_newest_first_and_name_server_and_app(history):
    old = add(history, "web-1", "hello", "deploy", None, A, 1_000)
    new = add(history, "web-1", "hello", "deploy", A, B, 2_000)
    assert sorted(new.bucket_keys()[0:1] + old.bucket_keys()[0:1]) == [new.bucket_keys()[0], old.bucket_keys()[0]]
    assert new.bucket_keys()[0].startswith("history/server/web-1/") and new.bucket_keys()[0].endswith("~hello.json")
    assert new.bucket_keys()[1].startswith("history/app/hello/") and new.bucket_keys()[1].endswith("~web-1.json")
    assert new.bucket_keys()[2].startswith("history/all/") and new.bucket_keys()[2].endswith("~web-1~hello.json")
    body = json.loads(history.store.get(new.bucket_keys()[2])[0])
    assert body["from"] == A and body["to"] == B and body["who"] == "alice@example.com"
    assert set(body) >= {"id", "time", "who", "server", "app", "from", "to", "action", "note", "result"}
    assert Record.from_json(body) == new


def test_views_per_server_per_app_and_fleet(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    writer = History(store)
    add(writer, "web-1", "hello", "deploy", None, A, 1)
    add(writer, "web-2", "hello", "deploy", None, A, 2)
    add(writer, "web-1", "pulld", "remove", "x", None, 3)
    reader = History(store)  # a second push server: nothing cached
    assert [r.ns for r in reader.records()] == [3, 2, 1]
    assert [r.ns for r in reader.records(server="web-1")] == [3, 1]
    assert [r.ns for r in reader.records(app="hello")] == [2, 1]
    assert [r.ns for r in reader.records(server="web-1", app="hello")] == [1]
    assert [r.ns for r in reader.records(limit=2)] == [3, 2]


def test_paging_with_before(history):
    ids = [add(history, "web-1", "hello", "deploy", None, A, n).id for n in range(1, 8)]
    page1 = history.records(limit=3)
    assert [r.id for r in page1] == ids[::-1][:3]
    page2 = history.records(limit=3, before=page1[-1].id)
    assert [r.id for r in page2] == ids[::-1][3:6]
    page3 = history.records(limit=3, before=page2[-1].id)
    assert [r.id for r in page3] == ids[::-1][6:]


def test_records_are_read_once_then_cached(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    add(History(store), "web-1", "hello", "deploy", None, A, 1)
    reader = History(store)
    reader.records()
    reader.records()
    reader.records(server="web-1")
    assert reader.reads == 1


def test_previous_release_is_from_history_not_second_newest(history):
    add(history, "web-1", "hello", "deploy", None, C, 1)   # newest release first
    add(history, "web-1", "hello", "deploy", C, A, 2)      # then an older one
    assert history.previous_release("web-1", "hello", A)[0] == C


def test_rollbacks_undo_like_a_stack(history):
    add(history, "web-1", "hello", "deploy", None, A, 1)
    add(history, "web-1", "hello", "deploy", A, B, 2)
    add(history, "web-1", "hello", "deploy", B, C, 3)
    assert history.previous_release("web-1", "hello", C)[0] == B
    add(history, "web-1", "hello", "rollback", C, B, 4)
    assert history.previous_release("web-1", "hello", B)[0] == A
    add(history, "web-1", "hello", "rollback", B, A, 5)
    assert history.previous_release("web-1", "hello", A)[0] is None  # A was the first
    add(history, "web-1", "hello", "deploy", A, D, 6)
    assert history.previous_release("web-1", "hello", D)[0] == A


def test_other_apps_and_servers_do_not_count(history):
    add(history, "web-1", "hello", "deploy", A, B, 1)
    add(history, "web-1", "pulld", "deploy", None, "pulld/x", 2)
    add(history, "web-2", "hello", "deploy", B, C, 3)
    assert history.previous_release("web-1", "hello", B)[0] == A


def test_change_outside_push_falls_back_to_last_known(history):
    add(history, "web-1", "hello", "deploy", A, B, 1)
    # Someone wrote C with the original tools: before C it ran B.
    target, basis = history.previous_release("web-1", "hello", C)
    assert target == B and basis.to == B


def test_no_history_is_not_found(history):
    with pytest.raises(NotFound, match="no history"):
        history.previous_release("web-1", "hello", A)


def test_unit_requests_are_not_changes(history):
    add(history, "web-1", "hello", "deploy", A, B, 1)
    history.write(new_record("bob", "web-1", "hello", "unit-restart", unit="hello.service", result="requested",
                             now_ns=2))
    assert history.previous_release("web-1", "hello", B)[0] == A
    assert history.last_change("web-1", "hello").to == B


def test_history_and_paging_on_every_store(store):
    """Keys with '~' and newest-first listing hold on local, GCS and S3 alike."""
    h = History(store)
    ids = [add(h, "web-1", "hello", "deploy", None, A, n).id for n in range(1, 5)]
    add(h, "web-2", "pulld", "deploy", None, B, 9)
    reader = History(store)
    assert [r.id for r in reader.records(server="web-1", app="hello", limit=2)] == ids[::-1][:2]
    assert [r.id for r in reader.records(server="web-1", before=ids[2])] == ids[:2][::-1]
    assert [r.app for r in reader.records(limit=1)] == ["pulld"]


FORMATS = Path(__file__).parent / "formats"


@pytest.mark.parametrize("name", ["history-deploy.json", "history-unit-restart.json"])
def test_records_in_todays_format_read_unchanged(tmp_path, name):
    """The fixtures are what Push wrote before its model was typed: every key reads back the
    same, through the store as the history reads it."""
    data = (FORMATS / name).read_bytes()
    doc = json.loads(data)
    store = LocalStore(tmp_path / "bucket")
    record = Record.from_bytes(data)
    for key in record.bucket_keys():
        store.put(key, data)
    [got] = History(store).records()
    assert got == record and got.from_ == doc["from"] and got.via == doc["via"]
    assert got.unit == doc.get("unit") and got.extra == {}
    written = got.to_json()
    assert {k: written[k] for k in doc} == doc
    # What Push writes now names every field, whatever their values.
    assert set(written) == {"id", "time", "who", "server", "app", "action", "from", "to", "note", "result",
                            "unit", "via", "extra", "rollout"}


def test_old_records_without_via_and_with_extra_still_read():
    old = {"id": "01772600767123456789-fd1cf502", "time": "2026-03-04T05:06:07Z", "who": "bob",
           "server": "web-1", "app": "hello", "action": "remove", "from": A, "to": None, "note": "",
           "result": "ok", "extra": {"ticket": "OPS-1"}, "written_by_a_newer_push": True}
    record = Record.from_json(old)
    assert (record.via, record.unit, record.extra, record.from_) == ("", None, {"ticket": "OPS-1"}, A)


def test_a_damaged_record_is_invalid_data():
    with pytest.raises(InvalidData, match="history record"):
        Record.from_bytes(b'{"id": "x"}', "history/all/x.json")
