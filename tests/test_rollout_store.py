"""Rollouts on a local store without agents: the lease, one active rollout per app, the
refusal of plain changes, the driver's loop (agents' reports written by the test), and the
pages. The end-to-end tests with real agents are tests/test_rollouts.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fleetdata import make_config, make_release
from push import changes, config, fleet, serverfile, status
from push.fleet import Context
from push.release import ReleaseInfo
from push.rollout import control, model
from push.rollout.control import RolloutRequest
from push.rollout.driver import Driver
from push.rollout.lease import Leases, holder_of
from push.rollout.model import Rollout, RolloutActive
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.store.counting import CountingStore
from push.store.local import LocalStore


def healthy(ctx: Context, server: str, app: str, installed: str | None, health: str = "healthy",
            reverted_from: str | None = None) -> None:
    """An agent's report: `installed` of `app`, with `health`; journaled, as pulld's are."""
    st = status.AgentStatus(server=server, agent_version="test", time=status.timestamps.now_text())
    st.apps[app] = status.AppStatus(desired=installed, installed=installed, health=health,
                                    reverted_from=reverted_from)
    status.write(ctx.store, st)
    changes.record(ctx.store, changes.STATUS, server)


@pytest.fixture
def started(ctx: Context, rels: list[ReleaseInfo]) -> Iterator[tuple[Context, list[ReleaseInfo]]]:
    for s in ("web-1", "web-2"):
        fleet.deploy(ctx, "ann", s, "hello", rels[0].name)
        healthy(ctx, s, "hello", rels[0].name)
    yield ctx, rels


def test_one_lease_holder_at_a_time_and_a_takeover_after_expiry(bucket: LocalStore) -> None:
    rid = "01764676800000000000-0a1b2c3d"
    a, b = Leases(bucket, "a", ttl=0.3), Leases(bucket, "b", ttl=0.3)
    assert a.hold(rid) and not b.hold(rid)
    assert a.hold(rid)  # renewed
    holder = holder_of(bucket, rid)
    assert holder is not None and holder.holder == "a"
    time.sleep(0.35)
    assert b.hold(rid) and not a.hold(rid)
    b.release(rid)
    assert holder_of(bucket, rid) is None and a.hold(rid)


def test_one_active_rollout_per_app_and_plain_changes_refused(started: tuple[Context, list[ReleaseInfo]]) -> None:
    ctx, rels = started
    r = control.start(ctx, "ann", RolloutRequest(app="hello", release="latest", servers=["web-1"], bake=0))
    assert r.plan.servers == ["web-1"] and r.servers["web-1"].before == rels[0].name
    with pytest.raises(RolloutActive, match=r.id):
        control.start(ctx, "bob", RolloutRequest(app="hello", release=rels[1].name))
    with pytest.raises(RolloutActive, match=f"web-1 is in rollout {r.id}"):
        fleet.deploy(ctx, "bob", "web-1", "hello", rels[1].name)
    with pytest.raises(RolloutActive):
        fleet.rollback(ctx, "bob", "web-1", "hello")
    fleet.deploy(ctx, "bob", "web-2", "hello", rels[1].name)  # not in the rollout
    assert [x.id for x in control.listing(ctx)] == [r.id]
    # Ended (as a driver would end it): the pointer is cleared at the next look.
    model.update(ctx.store, r.id, lambda x: setattr(x, "state", "aborted"))
    assert model.active_of(ctx.store, "hello") is None
    fleet.deploy(ctx, "bob", "web-1", "hello", rels[1].name)


def test_bad_requests_are_refused_with_one_line(started: tuple[Context, list[ReleaseInfo]]) -> None:
    ctx, _ = started
    for req, match in ((RolloutRequest(app="hello", release="previous"), "previous"),
                       (RolloutRequest(app="hello", release="latest", waves="0"), "invalid wave"),
                       (RolloutRequest(app="hello", release="latest", servers=["db-1"]), "db-1"),
                       (RolloutRequest(app="hello", release="latest", servers=["nope-*"]), "matches"),
                       (RolloutRequest(app="nope", release="latest"), "no such app")):
        with pytest.raises(Exception, match=match):
            control.start(ctx, "ann", req)
    assert model.list_ids(ctx.store) == []


def test_the_driver_completes_a_healthy_rollout_and_rolls_back_a_reverted_canary(
        started: tuple[Context, list[ReleaseInfo]]) -> None:
    ctx, rels = started
    one, two = Driver.straight(ctx, holder="one"), Driver.straight(ctx, holder="two")
    r = control.start(ctx, "ann", RolloutRequest(app="hello", release=rels[1].name, bake=0))
    assert r.plan.waves == [1, 2]
    two.leases.ttl = one.leases.ttl = 30
    one.round()
    two.round()  # holds no lease: does nothing
    assert serverfile.read(ctx.store, "web-1").release_of("hello").name == rels[1].name  # type: ignore[union-attr]
    assert serverfile.read(ctx.store, "web-2").release_of("hello").name == rels[0].name  # type: ignore[union-attr]
    healthy(ctx, "web-1", "hello", rels[1].name)
    one.round()
    healthy(ctx, "web-2", "hello", rels[1].name)
    one.round()
    r = model.read(ctx.store, r.id)
    assert r.state == "completed" and sum("driven by" in e for e in r.events) == 1, (r.events, r.servers)
    record = ctx.history.records("web-2", "hello", limit=1)[0]
    assert record.rollout == r.id and record.note == f"rollout {r.id}"
    assert model.active_of(ctx.store, "hello") is None and holder_of(ctx.store, r.id) is None

    r = control.start(ctx, "ann", RolloutRequest(app="hello", release=rels[2].name, bake=0))
    one.round()
    healthy(ctx, "web-1", "hello", rels[1].name, health="unhealthy", reverted_from=rels[2].name)
    one.round()
    one.round()
    r = model.read(ctx.store, r.id)
    assert r.state == "rolled_back" and r.servers["web-2"].phase == "pending"
    assert serverfile.read(ctx.store, "web-1").release_of("hello").name == rels[1].name  # type: ignore[union-attr]
    assert [x.action for x in ctx.history.records("web-1", "hello", limit=2)] == ["rollback", "deploy"]


def test_the_pages_show_the_plan_start_it_and_control_it(bucket: LocalStore, tmp_path,
                                                         started: tuple[Context, list[ReleaseInfo]]) -> None:
    _, rels = started
    app = create_app(bucket, make_config(tmp_path), auth=AuthSettings(no_auth=True), poll_interval=0.05,
                     catalog_interval=0.1, rollout_interval=0.1)
    with TestClient(app) as client:
        page = client.get(f"/apps/hello/rollout?release={rels[1].name}")
        assert page.status_code == 200 and "Roll" in page.text and "web-2" in page.text and "(canary)" in page.text
        csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = client.post("/apps/hello/rollout", data={"release": rels[1].name, "servers": "web-1,web-2",
                                                     "waves": "1,100%", "bake": "600", "wave_deadline": "60",
                                                     "rollback": "1", "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303, r.text
        url = r.headers["location"]
        rid = url.rsplit("/", 1)[1]
        page = client.get(url)
        assert page.status_code == 200 and 'hx-trigger="every 1s"' in page.text and "web-1" in page.text
        assert client.get(url + "?part=body").text.count("<tr") >= 3
        assert rid in client.get("/rollouts").text
        assert client.post(f"{url}/pause", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        deadline = time.monotonic() + 10
        while model.read(bucket, rid).state != "paused" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model.read(bucket, rid).state == "paused"
        assert "Resume" in client.get(url).text
        history = client.get("/history?server=web-1").text
        assert f'href="/rollouts/{rid}"' in history


WAITING = 100  # servers of one wave waiting on their health


@pytest.fixture
def waiting_wave(tmp_path) -> Iterator[tuple[Context, CountingStore, str]]:
    """A rollout whose one wave of WAITING servers is written and waits on their health (their
    agents report the release installed, health `starting`), on a counted local store."""
    conf = tmp_path / "many.conf"
    conf.write_text("".join(f'[servers.s{i:03}]\nappNames = ["hello"]\n\n' for i in range(WAITING)))
    counted = CountingStore(LocalStore(tmp_path / "many-bucket"))
    ctx = fleet.Context.open(counted, config.load(conf), via="test")
    one, two = make_release(counted, "hello", 1), make_release(counted, "hello", 2)
    servers = [f"s{i:03}" for i in range(WAITING)]
    for s in servers:
        fleet.deploy(ctx, "ann", s, "hello", one.name)
    r = control.start(ctx, "ann", RolloutRequest(app="hello", release=two.name, waves="100%", bake=0,
                                                 wave_deadline=600))
    for s in servers:
        healthy(ctx, s, "hello", two.name, health="starting")
    yield ctx, counted, r.id


def operations_per_second(counted: CountingStore, seconds: float) -> float:
    before = sum(counted.counts().values())
    time.sleep(seconds)
    return (sum(counted.counts().values()) - before) / seconds


def test_a_wave_waiting_on_health_costs_few_bucket_operations_in_push_serve(
        waiting_wave: tuple[Context, CountingStore, str]) -> None:
    """The push server's driver observes the wave through its fleet view (the change journal),
    not by reading each server's report and file at every round."""
    ctx, counted, rid = waiting_wave
    app = create_app(counted, ctx.config, auth=AuthSettings(no_auth=True), rollout_interval=1.0)
    with TestClient(app):
        deadline = time.monotonic() + 20
        while model.read(counted, rid).servers["s099"].phase != "changed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert model.read(counted, rid).servers["s099"].phase == "changed"
        time.sleep(0.5)
        rate = operations_per_second(counted, 3.0)
        print(f"push serve, a wave of {WAITING} waiting: {rate:.1f} store operations/s")
        assert rate < 20, rate
        healthy(ctx, "s000", "hello", model.read(counted, rid).release)  # news: seen within a poll
        while model.read(counted, rid).servers["s000"].phase != "healthy" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert model.read(counted, rid).servers["s000"].phase == "healthy"


def test_a_wave_waiting_on_health_costs_few_bucket_operations_straight_to_the_bucket(
        waiting_wave: tuple[Context, CountingStore, str]) -> None:
    ctx, counted, rid = waiting_wave
    seen: list[Rollout] = []
    driver = Driver.straight(ctx)
    thread = threading.Thread(target=lambda: seen.append(driver.follow(rid, 0.5, seen.append)), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not (seen and seen[-1].servers["s099"].phase == "changed") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        rate = operations_per_second(counted, 3.0)
        print(f"--wait straight to the bucket, a wave of {WAITING} waiting: {rate:.1f} store operations/s")
        assert rate < 20, rate
        for s in model.read(counted, rid).plan.servers:
            healthy(ctx, s, "hello", model.read(counted, rid).release)
        thread.join(20)
        assert seen[-1].state == "completed"
    finally:
        control.control(ctx, "ann", rid, "abort") if seen and seen[-1].active else None
        thread.join(10)


def test_the_rollouts_listing_reads_only_what_changed(tmp_path, started: tuple[Context, list[ReleaseInfo]]) -> None:
    """GET /api/v1/rollouts and /rollouts: one listing, and a read only of the rollouts whose
    generation changed since the last request (not up to 50 reads a request)."""
    ctx, rels = started
    ids = []
    for _ in range(5):
        r = control.start(ctx, "ann", RolloutRequest(app="hello", release=rels[1].name, servers=["web-1"]))
        model.update(ctx.store, r.id, lambda x: setattr(x, "state", "aborted"))
        ids.append(r.id)
    counted = CountingStore(ctx.store)
    app = create_app(counted, ctx.config, auth=AuthSettings(no_auth=True), rollout_interval=0, poll_interval=600,
                     catalog_interval=600)
    with TestClient(app) as client:
        client.get("/api/v1/fleet")  # the first look at the bucket made

        def reads_of(path: str) -> tuple[int, int]:
            before = counted.counts()
            assert client.get(path).status_code == 200
            after = counted.counts()
            return after["read"] - before["read"], after["list"] - before["list"]

        assert [x["id"] for x in client.get("/api/v1/rollouts").json()] == ids[::-1]
        assert reads_of("/api/v1/rollouts") == (0, 1)
        assert reads_of("/rollouts")[0] == 0
        model.update(ctx.store, ids[2], lambda x: x.note("2026-12-02 05:00:00Z", "a note"))
        assert reads_of("/api/v1/rollouts") == (1, 1)
        assert client.get("/api/v1/rollouts?limit=2").json()[1]["id"] == ids[3]
        assert "a note" in client.get("/api/v1/rollouts").json()[2]["events"][-1]
