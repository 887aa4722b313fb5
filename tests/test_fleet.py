"""push.fleet: the operations that change the fleet (deploy, rollback, remove, deploy everywhere, units)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from fleetdata import make_config, make_release
from push import fleet, serverfile, unitrequests
from push.errors import Conflict, InvalidName, NotAllowed, NotFound, PushError
from push.release import Release
from push.triggers import Triggers


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


def test_remove_writes_the_placeholder_never_drops_the_entry(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    change = fleet.remove(ctx, "a", "web-1", "hello")
    assert change.to is None and serverfile.read(ctx.store, "web-1").entries == ("hello/",)
    assert ctx.history.records()[0].action == "remove"
    assert not fleet.remove(ctx, "a", "web-1", "hello").changed  # already "hello/"


def test_remove_of_an_app_the_file_does_not_mention_writes_its_placeholder(ctx, rels):
    """How an unmanaged app (installed, not mentioned) is taken off: "APP/" says so, even
    when Push knows the app no longer (no release left, in no appNames); a name neither
    Push nor the server knows is refused (a typo), writing nothing."""
    from push import status
    from push.lookup import UnknownApp
    from push.status import AgentStatus, AppStatus

    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    with pytest.raises(UnknownApp):
        fleet.remove(ctx, "a", "web-1", "api")
    status.write(ctx.store, AgentStatus(server="web-1", agent_version="1", time="2026-01-01T00:00:00Z",
                                        apps={"api": AppStatus(installed="api/2026-01-01T00:00:00Z-x-abcdef0.deb",
                                                               package="push-api", state="unmanaged")}))
    assert fleet.remove(ctx, "a", "web-1", "api").changed
    assert serverfile.read(ctx.store, "web-1").entries == (rels[0].name, "api/")


def test_a_server_file_that_vanished_is_not_recreated_with_one_app(ctx, rels):
    """A deleted file, or an empty or wrong bucket: the history shows the server had a file."""
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    ctx.store.delete("server/web-1.json")
    with pytest.raises(fleet.ServerFileMissing) as e:
        fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    assert "server/web-1.json is missing" in str(e.value) and "its history (last: deploy hello by a" in str(e.value)
    assert isinstance(e.value, Conflict) and e.value.detail().last_change is not None
    with pytest.raises(fleet.ServerFileMissing):
        fleet.remove(ctx, "a", "web-1", "hello")
    assert serverfile.read(ctx.store, "web-1").generation is None  # nothing written


def test_a_server_file_missing_where_the_agent_reports_apps_is_not_created(ctx, rels, tmp_path):
    """A fresh (empty) bucket with no history, but the agent reports what it runs."""
    from push import status
    from push.status import AgentStatus, AppStatus

    status.write(ctx.store, AgentStatus(server="web-2", agent_version="1", time="2026-01-01T00:00:00Z",
                                        apps={"hello": AppStatus(installed=rels[0].name, package="push-hello")}))
    with pytest.raises(fleet.ServerFileMissing, match="its agent's report of hello installed"):
        fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    # A server that never had a file (no history, no apps reported) gets one.
    assert fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name).changed


def test_deploy_everywhere_each_server_on_its_own(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    result = fleet.deploy_everywhere(ctx, "a", "hello", rels[3].name,
                                     expected={"web-1": rels[0].name, "web-2": rels[0].name})
    by = {o.server: o for o in result.outcomes}
    assert isinstance(by["web-1"], fleet.Deployed) and by["web-1"].to == rels[3].name and by["web-1"].changed
    web2 = by["web-2"]  # it ran rels[1], not what was seen
    assert isinstance(web2, fleet.Refused) and web2.type == "ChangedMeanwhile" and not result.ok
    assert web2.conflict is not None and web2.conflict.current == rels[1].name
    assert web2.status is None  # the HTTP status is the server's to add
    assert [o.server for o in fleet.deploy_everywhere(ctx, "a", "hello", rels[3].name).outcomes] == ["web-1", "web-2"]


def test_a_fleet_deploy_reads_back_as_the_same_outcomes(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    result = fleet.deploy_everywhere(ctx, "a", "hello", rels[2].name, expected={"web-1": rels[0].name, "web-2": "x"})
    doc = result.to_json()
    assert [(o["server"], o["ok"]) for o in doc["outcomes"]] == [("web-1", True), ("web-2", False)]
    assert doc["outcomes"][0]["from"] == rels[0].name and doc["outcomes"][0]["history"]["to"] == rels[2].name
    assert fleet.FleetDeploy.from_json(doc) == result


def test_change_json_names_every_field(ctx, rels):
    doc = fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name).to_json()
    assert list(doc) == ["server", "app", "action", "from", "to", "changed", "history", "request"]
    assert doc["from"] is None and doc["request"] is None and doc["history"]["via"] == "test"


def test_rollback_target_says_why(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    fleet.deploy(ctx, "b", "web-1", "hello", rels[2].name, note="newer")
    plan = fleet.rollback_target(ctx, "web-1", "hello")
    assert (plan.from_, plan.to, plan.basis.who, plan.basis.note) == (rels[2].name, rels[1].name, "b", "newer")
    assert plan.to_json()["from"] == rels[2].name


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


def test_triggers_fired_from_deploy_alls_threads(bucket, tmp_path, rels, compute):
    """deploy-all's writers fire the triggers side by side: each server's watchers are
    woken and its pushrev written once, counted exactly; a trigger pool closed while a
    deploy writes (shutdown) fails no write."""
    FakeCompute.instances["web-2"] = {"fingerprint": "1", "items": []}
    gce = f'\n[gce]\nproject = "proj"\nzone = "us-a"\ncompute_endpoint = "{compute}"\n'
    config = make_config(tmp_path, gce)
    for background in (False, True):
        woken: list[str] = []
        triggers = Triggers(config, on_change=woken.append, background=background)
        ctx = fleet.Context.open(bucket, config, triggers=triggers)
        out = fleet.deploy_everywhere(ctx, "a", "hello", rels[int(background)].name,
                                      expected={"web-1": rels[0].name if background else None,
                                                "web-2": rels[0].name if background else None})
        triggers.flush()
        assert out.ok and sorted(woken) == ["web-1", "web-2"]
        assert (triggers.gce_ok, triggers.gce_failed) == (2, 0), triggers.last_gce_error
        for name in ("web-1", "web-2"):
            items = {i["key"]: i["value"] for i in FakeCompute.instances[name]["items"]}
            assert items["pushrev"].startswith(rels[int(background)].name + " ")
        triggers.close()
    triggers = Triggers(config, background=True)
    assert triggers._pool is not None
    triggers._pool.shutdown(wait=True)  # what close() does while a deploy-all may still write
    triggers.changed("web-1", "x")  # logged, not raised
    triggers.close()


def test_concurrent_deploys_of_different_apps_to_one_server_all_go_through(bucket, tmp_path):
    """8 writers, each its own app, one server file: no 409 (ChangedMeanwhile or Conflict)
    for a change that conflicts with nothing, and no update lost."""
    apps = [f"app{i}" for i in range(8)]
    config = make_config(tmp_path, f'\n[servers.busy]\nappNames = {json.dumps(apps)}\n')
    rels = {a: [make_release(bucket, a, n).name for n in (1, 2)] for a in apps}
    ctx = fleet.Context.open(bucket, config, via="test")
    serverfile.write(bucket, serverfile.ServerFile("busy"))
    errors: list[Exception] = []
    last: dict[str, str] = {}
    start = threading.Barrier(len(apps))

    def writer(app: str) -> None:
        start.wait()
        seen = None
        for i in range(12):
            target = rels[app][i % 2]
            try:
                fleet.deploy(ctx, "w", "busy", app, target, expected_from=seen)
            except Exception as e:
                errors.append(e)
                return
            seen = last[app] = target

    threads = [threading.Thread(target=writer, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert serverfile.read(bucket, "busy").releases == {a: Release.parse(n) for a, n in last.items()}
    assert len(ctx.history.records("busy", limit=None)) == 8 * 12
