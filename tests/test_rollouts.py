"""Rollouts end to end: `push serve` (the driver) and real pulld processes with sandbox roots,
real dpkg and units, on the local store (one fleet shared by the module's tests, in order),
and straight to the bucket on the emulated GCS (the CLI's --wait drives it).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentpkgs import make_release, set_server_file
from push.cli import main as push_main
from push.demo.fleet import LocalFleet
from push.exits import ROLLOUT_NOT_COMPLETED
from push.release import ReleaseInfo, short
from push.rollout import model
from push.rollout.model import Rollout
from push.store import Store, open_store
from pushserver import PushServerProcess
from waiting import wait_for
from webhooks import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SERVERS = ["s1", "s2", "s3", "s4"]
AGENT_ARGS = ["--settle", "0.3", "--backoff", "1", "--report-interval", "5"]
SERVER_ARGS = ["--poll-interval", "0.2", "--rollout-interval", "0.3", "--rollout-lease", "3"]
CRASH = """\
#!/bin/sh
echo "web: cannot open /var/lib/web/db: no such file"
exit 1
"""
NO_RESTART = textwrap.dedent("""\
    [Service]
    ExecStart=/usr/local/bin/web
    """)


class World:
    def __init__(self, fleet: LocalFleet, store: Store, rels: dict[str, ReleaseInfo],
                 hooks: Receiver | None = None) -> None:
        self.fleet, self.store, self.rels = fleet, store, rels
        self.hooks = hooks

    def rollout_events(self, rid: str, last: str) -> list[str]:
        """The kinds of the rollout.* notifications of `rid`, once `last` has come."""
        assert self.hooks is not None

        def mine() -> list[dict[str, Any]] | None:
            got = [e for e in self.hooks.events("ops") if e.get("rollout") == rid]
            return got if any(e["kind"] == last for e in got) else None
        return [e["kind"] for e in wait_for(mine, timeout=15, what=f"{last} of {rid}")]

    def name(self, key: str) -> str:
        return self.rels[key].name

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str, remote: bool = True) -> tuple[int, str, str]:
        where = ["--push-url", self.fleet.url] if remote else ["--store", self.fleet.store, "--config",
                                                               str(self.fleet.config)]
        code = push_main([*args, *where])
        out, err = capsys.readouterr()
        return code, out, err

    def rollout(self, rid: str) -> Rollout:
        return model.read(self.store, rid)

    def desired(self, server: str) -> str | None:
        from push import serverfile

        sf = serverfile.read(self.store, server)
        r = sf.release_of("web") if sf else None
        return r.name if r else None

    def installed(self, server: str) -> str | None:
        report = self.fleet.status(server)
        return report["apps"].get("web", {}).get("installed") if report else None  # type: ignore[union-attr]

    def healthy_on(self, release: str, servers: list[str], timeout: float = 60) -> None:
        def ok() -> bool:
            for s in servers:
                rep = self.fleet.status(s)
                app: Any = (rep or {}).get("apps", {}).get("web")  # type: ignore[union-attr]
                if not app or app.get("installed") != release or app.get("health") != "healthy":
                    return False
            return True
        self.fleet.wait_until(ok, timeout=timeout, interval=0.2, what=f"{release} healthy on {servers}")

    def wait_state(self, rid: str, pred: Any, what: str, timeout: float = 60) -> Rollout:
        def look() -> Rollout | None:
            r = self.rollout(rid)
            return r if pred(r) else None
        try:
            return self.fleet.wait_until(look, timeout=timeout, interval=0.2, what=what)
        except TimeoutError as e:
            r = self.rollout(rid)
            raise AssertionError(f"{what}: {r.state}, wave {r.wave}:\n" + "\n".join(r.events) + "\n"
                                 + "\n".join(f"{s.server} {s.phase} {s.health} {s.detail}" for s in r.servers.values())
                                 + f"\n{str(e)[-3000:]}") from None

    def reset(self, release: str) -> None:
        """Every server back to `release` by plain deploys (no rollout is active)."""
        for s in SERVERS:
            r = httpx.post(f"{self.fleet.url}/api/v1/servers/{s}/apps/web/deploy", json={"release": release},
                           timeout=30)
            assert r.status_code == 200, r.text
        self.healthy_on(release, SERVERS)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rollouts")
    store_url = f"file://{tmp / 'bucket'}"
    store = open_store(store_url)
    with Receiver() as hooks:
        rels = {"v1": make_release(store, tmp, "web", 1), "v2": make_release(store, tmp, "web", 2),
                "bad": make_release(store, tmp, "web", 3, script=CRASH, unit=NO_RESTART),
                "v4": make_release(store, tmp, "web", 4)}
        config = tmp / "skiapush.conf"
        config.write_text("".join(f'[servers.{s}]\nappNames = ["web"]\n' for s in SERVERS)
                          + f'[[notify.webhooks]]\nurl = "{hooks.url("ops")}"\nkinds = ["rollout.*"]\n')
        fleet = LocalFleet(workdir=tmp / "fleet", store=store_url, config=config, servers=SERVERS,
                           agent_args=AGENT_ARGS, server_args=SERVER_ARGS)
        try:
            fleet.start_server()
            for s in SERVERS:
                fleet.start_agent(s)
            w = World(fleet, store, rels, hooks)
            w.reset(w.name("v1"))
            yield w
        finally:
            fleet.stop()
            store.close()


def lease_takers(r: Rollout) -> list[str]:
    return [e.split("driven by ", 1)[1] for e in r.events if "driven by " in e]


def test_a_good_release_goes_through_three_waves(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = world.name("v2")
    code, out, err = world.cli(capsys, "rollout", "start", "web", v2, "--waves", "1,2,100%", "--bake", "0.5",
                               "--wave-deadline", "60", "--wait", "--json")
    assert code == 0, err
    r = Rollout.model_validate(json.loads(out))
    assert r.state == "completed" and r.plan.waves == [1, 2, 4] and r.plan.servers[0] == "s1"
    assert all(s.phase == "healthy" and len(s.history) == 1 for s in r.servers.values())
    assert [w.done is not None for w in r.waves] == [True, True, True]
    assert "wave 1 of 3" in err and "completed" in err  # the live lines
    assert len(lease_takers(r)) == 1
    assert all(world.desired(s) == v2 for s in SERVERS)
    world.healthy_on(v2, SERVERS)
    records = httpx.get(f"{world.fleet.url}/api/v1/history", params={"server": "s1"}, timeout=10).json()
    assert records[0]["rollout"] == r.id and records[0]["to"] == v2 and records[0]["from"] == world.name("v1")
    # The waves went in order: the canary's change came before the others'.
    changed = {s: r.servers[s].changed_at or "" for s in SERVERS}
    assert changed["s1"] < changed["s2"] < changed["s3"]
    assert world.rollout_events(r.id, "rollout.completed") == [
        "rollout.started", "rollout.wave_done", "rollout.wave_done", "rollout.wave_done", "rollout.completed"]


def test_a_release_failing_its_health_check_stops_at_the_canary_and_rolls_back(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    v2, bad = world.name("v2"), world.name("bad")
    code, out, err = world.cli(capsys, "rollout", "start", "web", bad, "--bake", "0", "--wave-deadline", "60",
                               "--wait", "--json")
    assert code == ROLLOUT_NOT_COMPLETED, err
    r = Rollout.model_validate(json.loads(out))
    assert r.state == "rolled_back" and "s1" in (r.reason or "") and r.wave == 0
    assert r.servers["s1"].phase == "reverted" and len(r.servers["s1"].history) == 2
    assert all(r.servers[s].phase == "pending" for s in ("s2", "s3", "s4"))
    assert all(world.desired(s) == v2 for s in SERVERS)
    for s in ("s2", "s3", "s4"):  # no other server ever got it
        history = httpx.get(f"{world.fleet.url}/api/v1/history", params={"server": s}, timeout=10).json()
        assert all(h["to"] != bad for h in history)
    world.healthy_on(v2, SERVERS)
    assert world.rollout_events(r.id, "rollout.rolled_back") == [
        "rollout.started", "rollout.failed", "rollout.rolled_back"]
    # The list shows it among the past ones.
    code, out, _ = world.cli(capsys, "rollout", "status")
    assert code == 0 and "rolled_back" in out


def test_plain_deploys_are_refused_pause_resume_promote_abort(world: World,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2 = world.name("v1"), world.name("v2")
    code, out, err = world.cli(capsys, "rollout", "start", "web", v1, "--waves", "1,2,100%", "--bake", "600",
                               "--json")
    assert code == 0, err
    rid = json.loads(out)["id"]
    world.wait_state(rid, lambda r: r.waves[0].healthy_at is not None, "wave 1 healthy, baking")
    # A plain deploy of a server in the rollout is refused, naming it; a second rollout too.
    code, _, err = world.cli(capsys, "deploy", "s3", "web", v2)
    assert code == 3 and rid in err, err
    code, _, err = world.cli(capsys, "rollout", "start", "web", v2, remote=False)
    assert code == 3 and rid in err, err
    assert world.cli(capsys, "rollout", "pause", rid)[0] == 0
    world.wait_state(rid, lambda r: r.state == "paused", "paused")
    assert world.cli(capsys, "rollout", "promote", rid)[0] == 0  # asked while paused: done after the resume
    assert world.rollout(rid).wave == 0
    assert world.cli(capsys, "rollout", "resume", rid, remote=False)[0] == 0
    r = world.wait_state(rid, lambda r: r.wave == 1 and r.servers["s2"].phase != "pending", "wave 2 started")
    assert r.state == "running"
    code, out, err = world.cli(capsys, "rollout", "abort", rid, "--wait", "--json")
    assert code == ROLLOUT_NOT_COMPLETED
    r = Rollout.model_validate(json.loads(out))
    assert r.state == "aborted" and r.reason and "aborted by" in r.reason
    assert {s: r.servers[s].phase for s in SERVERS} == {"s1": "reverted", "s2": "reverted", "s3": "pending",
                                                          "s4": "pending"}
    assert all(world.desired(s) == v2 for s in SERVERS)
    code, out, _ = world.cli(capsys, "rollout", "status", rid)
    assert code == 0 and "aborted" in out and "s2" in out
    world.healthy_on(v2, SERVERS)


def test_a_server_changed_by_hand_during_the_rollout_is_left_alone(world: World,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2, v4 = world.name("v1"), world.name("v2"), world.name("v4")
    code, out, err = world.cli(capsys, "rollout", "start", "web", v1, "--waves", "1,100%", "--bake", "600",
                               "--json")
    assert code == 0, err
    rid = json.loads(out)["id"]
    world.wait_state(rid, lambda r: r.waves[0].healthy_at is not None, "wave 1 healthy, baking")
    set_server_file(world.store, "s3", [v4])  # by hand, straight in the bucket
    assert world.cli(capsys, "rollout", "promote", rid)[0] == 0
    world.wait_state(rid, lambda r: r.waves[-1].healthy_at is not None, "the last wave healthy, baking")
    assert world.cli(capsys, "rollout", "promote", rid)[0] == 0  # the last wave bakes too
    r = world.wait_state(rid, lambda r: not r.active, "the rollout to end")
    assert r.state == "completed"
    assert r.servers["s3"].phase == "left" and short(v4) in (r.servers["s3"].detail or "")
    assert world.desired("s3") == v4 and world.desired("s4") == v1
    world.reset(v2)


def test_the_push_server_killed_mid_wave_resumes_and_two_servers_drive_once(
        world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v1 = world.name("v1")
    second = PushServerProcess(world.fleet.store, world.fleet.config, tmp_path / "second.log", *SERVER_ARGS[2:])
    try:
        code, out, err = world.cli(capsys, "rollout", "start", "web", v1, "--waves", "1,2,100%", "--bake", "1",
                                   "--json")
        assert code == 0, err
        rid = json.loads(out)["id"]
        r = world.wait_state(rid, lambda r: r.wave >= 1 or not r.active, "wave 2")
        first_driver = lease_takers(r)
        assert len(first_driver) == 1  # two push servers, one driver
        # Kill whichever holds it (the other one takes over once its lease expires).
        assert world.fleet.push_server is not None
        if str(world.fleet.push_server.pid) in first_driver[0].split(":"):
            world.fleet.push_server.kill9()
            world.fleet.start_server()
        else:
            second.process.kill()
            second.process.wait(10)
        r = world.wait_state(rid, lambda r: not r.active, "the rollout to end after its driver died", timeout=90)
        assert r.state == "completed", r.events
        assert len(lease_takers(r)) == 2 and lease_takers(r)[0] == first_driver[0]
        assert all(world.desired(s) == v1 for s in SERVERS)
        assert all(len(s.history) == 1 for s in r.servers.values())  # nothing written twice
    finally:
        second.stop()


@pytest.mark.gcs
def test_straight_to_the_bucket_wait_drives_it_on_gcs(gcs_bucket: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store_url = f"gs://{gcs_bucket}"
    store = open_store(store_url)
    v1, v2 = make_release(store, tmp_path, "web", 1), make_release(store, tmp_path, "web", 2)
    config = tmp_path / "skiapush.conf"
    config.write_text("".join(f'[servers.{s}]\nappNames = ["web"]\n' for s in ("g1", "g2")))
    for s in ("g1", "g2"):
        set_server_file(store, s, [v1.name])
    fleet = LocalFleet(workdir=tmp_path / "fleet", store=store_url, config=config, servers=["g1", "g2"],
                       agent_args=[*AGENT_ARGS, "--interval", "0.5"])
    try:
        for s in ("g1", "g2"):
            fleet.start_agent(s)
        w = World(fleet, store, {"v1": v1, "v2": v2})
        w.healthy_on(v1.name, ["g1", "g2"])
        code = push_main(["rollout", "start", "web", v2.release.hash[:7], "--bake", "0", "--wave-deadline", "60",
                          "--wait", "--store", store_url, "--config", str(config)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "completed" in out
        (rid,) = model.list_ids(store)
        r = model.read(store, rid)
        assert r.state == "completed" and r.plan.waves == [1, 2] and "cli" in r.via
        assert model.active_of(store, "web") is None
        wait_for(lambda: all(w.installed(s) == v2.name for s in ("g1", "g2")), timeout=30, what="v2 installed")
    finally:
        fleet.stop()
        store.close()
