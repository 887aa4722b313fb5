"""push.unitrequests: requests as stored in the bucket, created, completed and pruned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from push import layout, unitrequests
from push.errors import Conflict, InvalidData, InvalidRequest
from push.store import Store
from push.unitrequests import UnitRequest

FORMATS = Path(__file__).parent / "formats"


def test_a_request_in_todays_format_reads_unchanged(store: Store) -> None:
    """unit-request.json is what Push wrote before its model was typed."""
    data = (FORMATS / "unit-request.json").read_bytes()
    doc = json.loads(data)
    store.put(layout.request_key("web-1", doc["id"]), data)
    [got] = unitrequests.list_requests(store, "web-1")
    assert (got.unit, got.action, got.state, got.done_by) == ("hello.service", "restart", "done",
                                                              "web-1.example.com")
    assert got.generation is not None and got.to_json() == doc  # the generation is not JSON


def test_create_and_complete(store: Store) -> None:
    req = unitrequests.create(store, "web-1", "hello", "hello.service", "stop", "ops", history_id="h1")
    assert req.state == "pending" and req.generation is not None and not req.is_expired()
    [pending] = unitrequests.pending(store, "web-1")
    assert pending == req
    done = unitrequests.complete(store, pending, "failed", "unit not loaded", "web-1")
    assert (done.state, done.result, done.done_by) == ("failed", "unit not loaded", "web-1")
    assert unitrequests.pending(store, "web-1") == []
    with pytest.raises(Conflict):  # the object changed since `pending` was read
        unitrequests.complete(store, pending, "done", "ok", "web-1")
    with pytest.raises(InvalidRequest):
        unitrequests.complete(store, done, "pending", None, "web-1")


def test_unreadable_requests_are_skipped(store: Store) -> None:
    store.put(layout.request_key("web-1", "01-00000000"), b"not json")
    bad = {**json.loads((FORMATS / "unit-request.json").read_bytes()), "action": "reboot"}
    store.put(layout.request_key("web-1", "02-00000000"), json.dumps(bad).encode())
    assert unitrequests.list_requests(store, "web-1") == []
    with pytest.raises(InvalidData, match="unknown unit action"):
        UnitRequest.from_json(bad)
