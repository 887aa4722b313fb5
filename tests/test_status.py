"""push.status: agent reports in the bucket, read by the push server and `push status`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from push import status, timestamps
from push.errors import InvalidData
from push.status import AgentStatus, AppStatus
from push.store import Store


def report(step: int) -> AgentStatus:
    return AgentStatus(server="web-1", agent_version="1", time=timestamps.now_text(), step=step,
                       apps={"web": AppStatus(desired="d", installed="d")})


def test_roundtrip_and_missing(store: Store) -> None:
    assert status.read(store, "web-1") is None
    status.write(store, report(1))
    got = status.read(store, "web-1")
    assert got is not None and got.step == 1 and got.apps["web"].installed == "d"
    assert not got.is_stale()


def test_a_report_rewritten_while_it_is_read_is_read_whole(store: Store) -> None:
    # An agent rewrites its report after every step; `push status` and the push server
    # read it meanwhile. This once failed on GCS with "changed while it was being read".
    status.write(store, report(0))
    stop = threading.Event()

    def agent() -> None:
        step = 0
        while not stop.wait(0.005):
            step += 1
            status.write(store, report(step))

    writer = threading.Thread(target=agent)
    writer.start()
    try:
        steps = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            got = status.read(store, "web-1")
            assert got is not None
            steps.append(got.step)
    finally:
        stop.set()
        writer.join()
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_old_whole_second_times_still_read() -> None:
    old = AgentStatus(server="web-1", agent_version="0", time="2026-01-02T03:04:05Z")
    assert old.reported_at == timestamps.parse("2026-01-02T03:04:05.000000Z")


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"server": "web-1", "apps": []}'])
def test_a_damaged_report_is_invalid_data(data: bytes) -> None:
    with pytest.raises(InvalidData) as e:
        status.parse(data, "status/web-1.json")
    assert e.value.key == "status/web-1.json"


def test_trust_field_roundtrip_and_reports_without_it() -> None:
    rep = report(1)
    rep.trust = status.TrustStatus(releases="verified", server_files="off", refused=[
        {"subject": "hello/x", "reason": "unsigned", "message": "release hello/x is not signed", "app": "hello"}])
    doc = rep.to_json()
    assert doc["trust"]["refused"][0]["reason"] == "unsigned"  # type: ignore[index]
    back = AgentStatus.from_json(doc)
    assert back.trust == rep.trust and back.trust is not None and back.trust.mode == "releases only"
    # A report from an agent before signatures has none; a newer agent's extra trust fields are ignored.
    assert AgentStatus.from_json({k: v for k, v in doc.items() if k != "trust"}).trust is None
    newer = AgentStatus.from_json({**doc, "trust": {"releases": "off", "server_files": "off", "later": 1}})
    assert newer.trust is not None and newer.trust.mode == "off"
FORMATS = Path(__file__).parent / "formats"


def test_a_report_in_todays_format_reads_unchanged() -> None:
    """status-report.json is byte for byte what pulld wrote before the model was typed."""
    data = (FORMATS / "status-report.json").read_bytes()
    got = status.parse(data, "status/web-1.json")
    assert got.step == 42 and got.server_file_generation == "1772600767123456789"
    hello = got.apps["hello"]
    assert (hello.state, hello.attempts, hello.units) == ("failed", 2, {"hello.service": "active",
                                                                        "hello.timer": "inactive"})
    assert got.apps["pulld"].desired == "pulld/" and got.apps["pulld"].installed is None
    # Written back, it is the same JSON: same keys, same values, plus the fields added since
    # (at their defaults: the old agent did not know them; `journaled`: push.changes).
    written = got.to_json()
    assert {k: v for k, v in written.items() if k in json.loads(data)} == {**json.loads(data), "apps": written["apps"]}
    assert {k: v for k, v in written.items() if k not in json.loads(data)} == {"trust": None, "journaled": False,
                                                                                     "report_interval": None}
    health = {"health": "unknown", "health_detail": None, "reverted_from": None, "health_since": None,
              "health_deadline": None}
    assert written["apps"] == {app: {**fields, **health} for app, fields in json.loads(data)["apps"].items()}


def test_keys_a_newer_pulld_adds_are_ignored() -> None:
    doc = json.loads((FORMATS / "status-report.json").read_bytes())
    doc["health"] = {"hello": "ok"}
    doc["apps"]["hello"]["rollout"] = "something"
    got = status.parse(json.dumps(doc).encode(), "status/web-1.json")
    assert got.apps["hello"].state == "failed" and "health" not in got.to_json()
