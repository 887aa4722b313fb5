"""The whole system, for real: `push release` → `push deploy` → pulld installs with dpkg →
`push status` shows actual = desired → rollback → removal, with `push serve` and pulld as
separate processes, against the local store and the emulated GCS and S3 stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from push.demo.apps import stage
from push.demo.fleet import LocalFleet, free_port, http_get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def push(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(Path(sys.executable).with_name("push")), *args], capture_output=True, text=True,
                       timeout=120, env=os.environ.copy())
    if check and r.returncode != 0:
        raise AssertionError(f"push {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def release(tmp_path: Path, store: str, app: str, version: str, extra_files: dict[str, bytes] | None = None) -> str:
    tree = stage(app, version, tmp_path / "src" / f"{app}-{version}")
    for rel, data in (extra_files or {}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    fake_hash = hashlib.sha1(f"{app}{version}".encode()).hexdigest()
    r = push("release", app, "--root", str(tree), "--note", f"{app} v{version}", "--hash", fake_hash,
             "--depends", "python3", "--store", store)
    return r.stdout.strip().splitlines()[-1]


def make_fleet(tmp_path: Path, store: str, servers: list[str], apps: list[str]) -> tuple[LocalFleet, dict]:
    config = tmp_path / "skiapush.conf"
    config.write_text("".join(f'[servers.{s}]\nappNames = {json.dumps(apps)}\n' for s in servers))
    fleet = LocalFleet(workdir=tmp_path / "fleet", store=store, config=config, servers=servers,
                       agent_args=["--interval", "30", "--backoff", "1"])
    ports = {}
    for server in servers:
        default = fleet.root(server) / "etc" / "default"
        default.mkdir(parents=True)
        for app in apps:
            ports[(server, app)] = free_port()
            (default / app).write_text(f"PORT={ports[(server, app)]}\n")
    return fleet, ports


def answer(port: int) -> dict | None:
    try:
        return json.loads(http_get(f"http://127.0.0.1:{port}/", timeout=1))
    except (OSError, ValueError):  # not up yet, or answering half a reply while it starts
        return None


def fleet_status(fleet: LocalFleet) -> dict:
    r = push("status", "--json", "--push-url", fleet.url)
    return {s["server"]: s for s in json.loads(r.stdout)["servers"]}


def app_state(fleet: LocalFleet, server: str, app: str) -> dict:
    return next(a for a in fleet_status(fleet)[server]["apps"] if a["app"] == app)


def wait_actual(fleet: LocalFleet, server: str, app: str, release_name: str | None, timeout: float = 60) -> None:
    def done() -> bool:
        a = app_state(fleet, server, app)
        return a["actual"] == release_name and a["desired"] == release_name
    fleet.wait_until(done, timeout=timeout, interval=0.3, what=f"{server}/{app} to run {release_name}")


def test_release_deploy_status_rollback_removal(tmp_path: Path, store_url: str) -> None:
    v1 = release(tmp_path, store_url, "hello", "1")
    import time
    time.sleep(1.05 - time.time() % 1)  # names carry whole seconds
    v2 = release(tmp_path, store_url, "hello", "2")
    fleet, ports = make_fleet(tmp_path, store_url, ["s1", "s2"], ["hello"])
    try:
        fleet.start_server()
        for s in ("s1", "s2"):
            fleet.start_agent(s)
        for s in ("s1", "s2"):
            push("deploy", s, "hello", v1, "--push-url", fleet.url)
        for s in ("s1", "s2"):
            wait_actual(fleet, s, "hello", v1)
            fleet.wait_until(lambda s=s: (answer(ports[(s, "hello")]) or {}).get("version") == "1",
                             what=f"hello v1 answering on {s}")

        push("deploy", "s1", "hello", "--latest", "--push-url", fleet.url)
        wait_actual(fleet, "s1", "hello", v2)
        fleet.wait_until(lambda: (answer(ports[("s1", "hello")]) or {}).get("version") == "2",
                         what="hello v2 answering on s1")
        state = fleet_status(fleet)
        assert state["s1"]["in_sync"] and state["s2"]["in_sync"]
        assert app_state(fleet, "s2", "hello")["actual"] == v1  # the other server is untouched

        push("rollback", "s1", "hello", "--push-url", fleet.url)
        wait_actual(fleet, "s1", "hello", v1)
        fleet.wait_until(lambda: (answer(ports[("s1", "hello")]) or {}).get("version") == "1",
                         what="hello v1 answering again on s1")

        r = httpx.post(f"{fleet.url}/api/v1/servers/s2/apps/hello/remove", json={"note": "e2e"}, timeout=10)
        assert r.status_code == 200, r.text
        wait_actual(fleet, "s2", "hello", None)
        fleet.wait_until(lambda: answer(ports[("s2", "hello")]) is None, what="hello stopped on s2")
        listing = subprocess.run(["dpkg-query", f"--admindir={fleet.root('s2')}/var/lib/dpkg", "-W",
                                  "-f", "${db:Status-Abbrev}", "push-hello"], capture_output=True, text=True)
        assert not listing.stdout.startswith("ii"), listing.stdout  # dpkg no longer has it installed
        assert not (fleet.root("s2") / "usr/local/bin/hello").exists()

        history = json.loads(push("history", "s1", "--json", "--push-url", fleet.url).stdout)
        actions = [h["action"] for h in history]
        assert actions[:3] == ["rollback", "deploy", "deploy"], actions
    finally:
        fleet.stop()
    for s in ("s1", "s2"):
        assert answer(ports[(s, "hello")]) is None, "a unit outlived its agent"


def test_concurrent_deploys_from_two_clients_lose_nothing(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'bucket'}"
    apps = ["hello", "quotes", "clock"]
    names = {app: release(tmp_path, store, app, "1") for app in apps}
    fleet, _ = make_fleet(tmp_path, store, ["s1"], apps)
    try:
        fleet.start_server()
        errors: list[str] = []

        def deploy(app: str, through_server: bool) -> None:
            where = ["--push-url", fleet.url] if through_server else ["--store", store, "--config", str(fleet.config)]
            r = push("deploy", "s1", app, names[app], *where, check=False)
            if r.returncode != 0:
                errors.append(r.stderr)

        threads = [threading.Thread(target=deploy, args=(app, i % 2 == 0)) for i, app in enumerate(apps)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

        def desired() -> dict[str, str | None]:
            return {a["app"]: a["desired"] for a in fleet_status(fleet)["s1"]["apps"]}

        # The push server sees a deploy made straight to the bucket at its next poll.
        fleet.wait_until(lambda: desired() == names, timeout=30, what="every deploy in the push server's view")
        assert len(json.loads(push("history", "s1", "--json", "--push-url", fleet.url).stdout)) == 3
    finally:
        fleet.stop()


def test_agent_killed_mid_install_recovers(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'bucket'}"
    big = os.urandom(6 * 1024 * 1024)
    v1 = release(tmp_path, store, "hello", "1", {"usr/local/share/hello/blob": big})
    fleet, ports = make_fleet(tmp_path, store, ["s1"], ["hello"])
    try:
        fleet.start_server()
        # Slow downloads so that the kill lands mid-install.
        agent = fleet.start_agent("s1", ["--download-rate-limit", "2M"])
        push("deploy", "s1", "hello", v1, "--push-url", fleet.url)
        fleet.wait_until(lambda: "install start" in agent.log_path.read_text(), timeout=30, what="install start")
        agent.kill9()
        report = fleet.status("s1")
        assert report is None or (report["apps"].get("hello", {}).get("installed") is None), report
        agent = fleet.start_agent("s1")
        wait_actual(fleet, "s1", "hello", v1, timeout=90)
        fleet.wait_until(lambda: (answer(ports[("s1", "hello")]) or {}).get("version") == "1", what="hello answering")
        audit = subprocess.run(["dpkg", f"--root={fleet.root('s1')}", "--audit"], capture_output=True, text=True)
        assert audit.stdout.strip() == "", audit.stdout
        downloads = list((fleet.workdir / "servers" / "s1" / "state").rglob("*.deb*"))
        assert downloads == [], downloads
    finally:
        fleet.stop()
