"""The fleet operations (deploy, rollback, remove, units) and the fleet state."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from fleetdata import make_config, make_release, report
from push import fleet, serverfile, status, unitrequests
from push.errors import Conflict, InvalidName, NotAllowed, NotFound, PushError
from push.store.local import LocalStore
from push.triggers import Triggers


@pytest.fixture
def bucket(tmp_path):
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
def ctx(bucket, tmp_path):
    return fleet.Context.open(bucket, make_config(tmp_path), via="test")


@pytest.fixture
def rels(bucket):
    return [make_release(bucket, "hello", n) for n in range(1, 5)]


def test_deploy_writes_server_file_and_history(ctx, rels):
    change = fleet.deploy(ctx, "alice", "web-1", "hello", rels[1].name, note="why")
    assert change.changed and change.from_ is None and change.to == rels[1].name
    assert serverfile.read(ctx.store, "web-1").entries == (rels[1].name,)
    rec = ctx.history.records(server="web-1")[0]
    assert (rec.who, rec.action, rec.from_, rec.to, rec.note, rec.via) == (
        "alice", "deploy", None, rels[1].name, "why", "test")


def test_deploy_latest(ctx, rels):
    assert fleet.deploy(ctx, "alice", "web-1", "hello", latest=True).to == rels[-1].name


def test_deploy_same_release_is_no_change_and_no_history(ctx, rels):
    fleet.deploy(ctx, "alice", "web-1", "hello", rels[0].name)
    again = fleet.deploy(ctx, "alice", "web-1", "hello", rels[0].name)
    assert not again.changed and again.record is None
    assert len(ctx.history.records()) == 1


def test_config_is_enforced_whatever_the_request(ctx, bucket, rels):
    other = make_release(bucket, "secret", 1)
    with pytest.raises(NotAllowed, match="may not be deployed"):
        fleet.deploy(ctx, "alice", "db-1", "hello", rels[0].name)
    with pytest.raises(NotFound, match="not in"):
        fleet.deploy(ctx, "alice", "nowhere", "hello", rels[0].name)
    with pytest.raises(NotAllowed):
        fleet.deploy(ctx, "alice", "web-1", "secret", other.name)
    with pytest.raises(PushError, match="not a release of"):
        fleet.deploy(ctx, "alice", "web-1", "hello", other.name)
    with pytest.raises(NotFound):
        fleet.deploy(ctx, "alice", "web-1", "hello", rels[0].name.replace("2026", "2027"))
    assert serverfile.read(bucket, "web-1").entries == ()
    assert ctx.history.records() == []


def test_expected_from_detects_a_change_meanwhile(ctx, rels):
    fleet.deploy(ctx, "bob", "web-1", "hello", rels[0].name)
    # Alice looked when nothing was there; Bob deployed meanwhile.
    with pytest.raises(fleet.ChangedMeanwhile) as e:
        fleet.deploy(ctx, "alice", "web-1", "hello", rels[2].name, expected_from=None)
    assert isinstance(e.value, Conflict)
    assert e.value.current == rels[0].name and e.value.last_change.who == "bob"
    assert "bob" in str(e.value)
    assert serverfile.read(ctx.store, "web-1").entries == (rels[0].name,)
    # Retrying with what is there now works.
    assert fleet.deploy(ctx, "alice", "web-1", "hello", rels[2].name, expected_from=rels[0].name).changed


def test_concurrent_deploys_of_different_apps_both_land(ctx, bucket, rels):
    p = make_release(bucket, "pulld", 1)
    errors = []

    def go(app, name):
        try:
            for _ in range(5):
                fleet.deploy(ctx, "x", "web-1", app, name)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=("hello", rels[0].name)),
               threading.Thread(target=go, args=("pulld", p.name))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(serverfile.read(bucket, "web-1").entries) == {rels[0].name, p.name}


def test_rollback_returns_to_what_ran_before(ctx, rels):
    # Deploy the newest first, then an older one: rollback goes back to the newest,
    # not to "the second newest".
    fleet.deploy(ctx, "a", "web-1", "hello", rels[3].name)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    change = fleet.rollback(ctx, "b", "web-1", "hello", note="bad")
    assert (change.action, change.from_, change.to) == ("rollback", rels[0].name, rels[3].name)
    assert serverfile.read(ctx.store, "web-1").release_of("hello").name == rels[3].name
    rec = ctx.history.records(server="web-1", app="hello")[0]
    assert rec.action == "rollback" and rec.note == "bad"


def test_rollback_without_history_or_before_first(ctx, rels):
    with pytest.raises(NotFound):
        fleet.rollback(ctx, "a", "web-1", "hello")
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    with pytest.raises(NotFound, match="first release"):
        fleet.rollback(ctx, "a", "web-1", "hello")


def test_rollback_refuses_when_target_changed(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    with pytest.raises(fleet.ChangedMeanwhile):
        fleet.rollback(ctx, "a", "web-1", "hello", expected_from=rels[2].name)
    with pytest.raises(fleet.ChangedMeanwhile, match="rollback target"):
        fleet.rollback(ctx, "a", "web-1", "hello", expected_to=rels[3].name)
    assert fleet.rollback(ctx, "a", "web-1", "hello", expected_from=rels[1].name, expected_to=rels[0].name).changed


def test_remove(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    change = fleet.remove(ctx, "a", "web-1", "hello")
    assert change.to is None and serverfile.read(ctx.store, "web-1").entries == ()
    assert ctx.history.records()[0].action == "remove"


def test_deploy_everywhere_each_server_on_its_own(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    outcomes = fleet.deploy_everywhere(ctx, "a", "hello", rels[3].name,
                                       expected={"web-1": rels[0].name, "web-2": rels[0].name})
    by = {o.server: o for o in outcomes}
    assert by["web-1"].change.to == rels[3].name
    assert isinstance(by["web-2"].error, fleet.ChangedMeanwhile)  # it ran rels[1], not what was seen
    assert by["web-2"].to_json()["type"] == "ChangedMeanwhile"  # the HTTP status is the server's to add
    assert [o.server for o in fleet.deploy_everywhere(ctx, "a", "hello", rels[3].name)] == ["web-1", "web-2"]


def test_unit_action_records_request_and_history(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    change = fleet.unit_action(ctx, "ops", "web-1", "hello.service", "restart")
    reqs = unitrequests.pending(bucket, "web-1")
    assert [(r.unit, r.action, r.who, r.app) for r in reqs] == [("hello.service", "restart", "ops", "hello")]
    assert reqs[0].history_id == change.record.id
    assert ctx.history.records()[0].action == "unit-restart"
    with pytest.raises(NotFound, match="not a unit"):
        fleet.unit_action(ctx, "ops", "web-1", "sshd.service", "stop")
    with pytest.raises(PushError, match="unknown unit action"):
        fleet.unit_action(ctx, "ops", "web-1", "hello.service", "reboot")


def test_units_one_can_ask_for_are_the_releases_units_but_templates(ctx, bucket):
    info = make_release(bucket, "hello", 9, services=("hello.service", "worker@.service", "hello.timer"))
    fleet.deploy(ctx, "a", "web-1", "hello", info.name)
    assert fleet.units_of(ctx, "web-1") == {"hello.service": "hello", "hello.timer": "hello"}
    with pytest.raises(InvalidName, match="template"):
        fleet.unit_action(ctx, "ops", "web-1", "worker@.service", "restart")


def test_triggers_fire_after_each_change(bucket, tmp_path, rels):
    woken = []
    triggers = Triggers(make_config(tmp_path), on_change=woken.append)
    ctx = fleet.Context.open(bucket, make_config(tmp_path), triggers=triggers)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)  # no change: no trigger
    fleet.unit_action(ctx, "a", "web-1", "hello.service", "stop")
    assert woken == ["web-1", "web-1"]


class FakeCompute(BaseHTTPRequestHandler):
    """The two Compute API calls GCE metadata writes need, with fingerprints."""

    instances: ClassVar[dict[str, dict[str, object]]] = {}
    calls: ClassVar[list[object]] = []

    def log_message(self, *a):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path))
        name = self.path.rsplit("/", 1)[1]
        if name not in self.instances:
            return self._send(404, {"error": "not found"})
        self._send(200, {"name": name, "metadata": self.instances[name]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body))
        name = self.path.rsplit("/", 2)[1]
        md = self.instances[name]
        if body["fingerprint"] != md["fingerprint"]:
            return self._send(412, {"error": "fingerprint"})
        md["items"] = body["items"]
        md["fingerprint"] = str(int(md["fingerprint"]) + 1)
        self._send(200, {"kind": "compute#operation"})


@pytest.fixture
def compute():
    FakeCompute.instances = {"web-1": {"fingerprint": "1", "items": [{"key": "startup-script", "value": "x"}]}}
    FakeCompute.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompute)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_gce_pushrev_written_through_compute_api(bucket, tmp_path, rels, compute):
    gce = f'\n[gce]\nproject = "proj"\nzone = "us-a"\ncompute_endpoint = "{compute}"\n'
    config = make_config(tmp_path, gce)
    ctx = fleet.Context.open(bucket, config, triggers=Triggers(config))
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    items = {i["key"]: i["value"] for i in FakeCompute.instances["web-1"]["items"]}
    assert items["startup-script"] == "x"  # other metadata kept
    assert items["pushrev"].startswith(rels[0].name + " ")
    assert FakeCompute.calls[0] == ("GET", "/compute/v1/projects/proj/zones/us-a/instances/web-1")
    assert FakeCompute.calls[1][1] == "/compute/v1/projects/proj/zones/us-a/instances/web-1/setMetadata"
    assert FakeCompute.calls[1][2]["fingerprint"] == "1"
    # A second change gets a new value, with the new fingerprint.
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    items2 = {i["key"]: i["value"] for i in FakeCompute.instances["web-1"]["items"]}
    assert items2["pushrev"].startswith(rels[1].name + " ")
    # An instance the Compute API does not know: logged and counted, the deploy still stands.
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    assert ctx.triggers.gce_failed == 1 and ctx.triggers.gce_ok == 2


def test_fleet_state_marks(ctx, bucket, rels, tmp_path):
    dirty = make_release(bucket, "pulld", 1, dirty=True)
    make_release(bucket, "pulld", 2)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[3].name)
    fleet.deploy(ctx, "a", "web-1", "pulld", dirty.name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    report(bucket, "web-1", {"hello": rels[3].name, "pulld": dirty.name})
    report(bucket, "web-2", {"hello": rels[0].name}, failed={"hello": "dpkg: error processing package"},
           age=timedelta(hours=2))
    serverfile.write(bucket, serverfile.read(bucket, "db-1").with_release(rels[0].release))  # not allowed there
    view = fleet.FleetView(ctx)
    state = view.state()
    servers = {s["server"]: s for s in state["servers"]}
    assert list(servers) == ["web-1", "web-2", "db-1"]
    w1 = {a["app"]: a for a in servers["web-1"]["apps"]}
    assert w1["hello"]["marks"] == [] and w1["hello"]["actual"] == rels[3].name
    assert set(w1["pulld"]["marks"]) == {"out_of_date", "dirty"}
    assert servers["web-1"]["stale"] is False and servers["web-1"]["problems"] == 0
    w2 = {a["app"]: a for a in servers["web-2"]["apps"]}
    assert set(w2["hello"]["marks"]) == {"out_of_date", "drift", "failed"}
    assert w2["hello"]["error"] == "dpkg: error processing package"
    assert servers["web-2"]["stale"] is True
    d1 = {a["app"]: a for a in servers["db-1"]["apps"]}
    assert "not_allowed" in d1["hello"]["marks"] and "no_report" in d1["pulld"]["marks"]
    # Filters: substrings of server and app names.
    assert [s["server"] for s in view.state(server="web")["servers"]] == ["web-1", "web-2"]
    assert [[a["app"] for a in s["apps"]] for s in view.state(app="pull")["servers"]] == [["pulld"]] * 3


def test_fleet_state_shows_what_agents_refused_to_trust(ctx, bucket, rels):
    """A refusal (docs/trust.md) is a problem, with its reason: a mark on the app, the
    reason in the error, and the server's list of what is untrusted."""
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    error = f"untrusted (unsigned): release {rels[1].name} is not signed"
    report(bucket, "web-1", {"hello": rels[0].name}, failed={"hello": error})
    st = status.read(bucket, "web-1")
    st.trust = status.TrustStatus(releases="verified", server_files="verified", refused=[
        {"subject": rels[1].name, "reason": "unsigned", "message": error[len("untrusted (unsigned): "):],
         "app": "hello"}])
    status.write(bucket, st)
    report(bucket, "web-2", {"hello": rels[1].name})
    servers = {s["server"]: s for s in fleet.FleetView(ctx).state()["servers"]}
    w1, w2 = servers["web-1"], servers["web-2"]
    assert w1["trust"] == "verified" and w1["untrusted"] == [f"{rels[1].name}: unsigned"] and w1["problems"] == 1
    assert "untrusted" in w1["apps"][0]["marks"] and w1["apps"][0]["error"] == error
    assert w2["trust"] is None and w2["untrusted"] == [] and w2["problems"] == 0  # an agent from before


def test_fleet_view_refresh_reads_only_what_changed(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[0].name)
    view = fleet.FleetView(ctx)
    view.refresh()
    reads = view.object_reads
    rev1, rev2 = view.rev("web-1"), view.rev("web-2")
    assert view.refresh() == set() and view.object_reads == reads
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    assert view.refresh() == {"web-1"} and view.object_reads == reads + 1
    assert view.rev("web-1") != rev1 and view.rev("web-2") == rev2
    # A unit request changes the rev too; its outcome being written back does not.
    fleet.unit_action(ctx, "a", "web-2", "hello.service", "restart")
    assert view.refresh() == {"web-2"}
    req = unitrequests.pending(bucket, "web-2")[0]
    unitrequests.complete(bucket, req, "done", "ok", "web-2")
    assert view.refresh() == set()


def test_same_rev_on_every_push_server(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    a, b = fleet.FleetView(ctx), fleet.FleetView(ctx)
    a.refresh()
    b.refresh()
    assert a.rev("web-1") == b.rev("web-1") and a.rev("nowhere") == b.rev("nowhere")


def test_release_picker_lists_servers(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[2].name)
    report(bucket, "web-2", {"hello": rels[2].name})
    view = fleet.FleetView(ctx)
    got = view.releases("hello")
    assert [r["name"] for r in got] == [r.name for r in reversed(rels)]
    row = got[1]
    assert row["desired_on"] == ["web-1"] and row["running_on"] == ["web-2"]
    assert row["short_hash"] == rels[2].release.short_hash


def test_deploy_rollback_and_view_on_every_store(store, tmp_path):
    ctx = fleet.Context.open(store, make_config(tmp_path), via="test")
    rels = [make_release(store, "hello", n) for n in range(1, 4)]
    fleet.deploy(ctx, "a", "web-1", "hello", rels[2].name, expected_from=None)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name, expected_from=rels[2].name)
    with pytest.raises(fleet.ChangedMeanwhile):
        fleet.deploy(ctx, "b", "web-1", "hello", rels[1].name, expected_from=rels[2].name)
    assert fleet.rollback(ctx, "a", "web-1", "hello").to == rels[2].name
    view = fleet.FleetView(fleet.Context.open(store, ctx.config))
    assert view.refresh() == {"web-1"}
    w1 = view.state(server="web-1")["servers"][0]["apps"][0]
    assert w1["desired"] == rels[2].name and w1["marks"] == ["no_report"]


def test_poll_racing_a_local_write_never_goes_back(ctx, bucket, rels, monkeypatch):
    """A bucket poll that read a server file before this process wrote it must not undo
    what refresh_server saw after the write."""
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    view = fleet.FleetView(ctx)
    view.refresh()
    report(bucket, "web-1", {"hello": rels[0].name})  # so the poll reads a report after the files
    real_get = bucket.get

    def get_then_write(key, *a, **k):
        if key.startswith("status/"):
            fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
            view.refresh_server("web-1")
        return real_get(key, *a, **k)

    monkeypatch.setattr(bucket, "get", get_then_write)
    view.refresh(include_catalog=False)
    monkeypatch.setattr(bucket, "get", real_get)
    [state] = view.server_states("web-1")
    assert [a["desired"] for a in state.data["apps"] if a["app"] == "hello"] == [rels[1].name]


def test_new_release_marks_servers_out_of_date(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[-1].name)
    view = fleet.FleetView(ctx)
    assert view.state(server="web-1")["servers"][0]["apps"][0]["marks"] == ["no_report"]
    newer = make_release(bucket, "hello", 9)
    assert view.refresh_catalog() is True
    hello = view.state(server="web-1")["servers"][0]["apps"][0]
    assert hello["latest"] == newer.name and "out_of_date" in hello["marks"]
    assert view.releases("hello")[0]["name"] == newer.name
