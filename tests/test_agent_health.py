"""Health, for real: agents with sandbox roots, real dpkg and real units judge what they
installed, revert what is not healthy in time, and report it (also in `push status --json`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentpkgs import make_release, set_server_file
from emulators import free_port
from push import status
from push.agent.agent import Agent, AgentOptions
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg
from push.agent.judge import Verdict
from push.agent.supervisor import SandboxSupervisor
from push.cli import main as push_main
from push.health import HealthCheck
from push.store import Store
from push.store.local import LocalStore
from waiting import wait_for

SERVER = "s1"
SETTLE = 0.3  # the settle time of units without a declared check, short for tests

CRASH = """\
#!/bin/sh
echo "{app} {version}: cannot open /var/lib/{app}/db: no such file"
exit 1
"""
# Serves the app's share directory (VERSION) on $PORT: a real HTTP check target.
HTTP = """\
#!/bin/sh
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$PUSH_SANDBOX_ROOT/usr/local/share/{app}"
"""
# Healthy while $PUSH_SANDBOX_ROOT/run/APP/ok exists (the script creates it).
FLAKY = """\
#!/bin/sh
mkdir -p "$PUSH_SANDBOX_ROOT/run/{app}" && touch "$PUSH_SANDBOX_ROOT/run/{app}/ok"
exec sleep 3600
"""
NO_RESTART = textwrap.dedent("""\
    [Service]
    ExecStart=/usr/local/bin/{app}
    EnvironmentFile=-/etc/default/{app}
    """)


class Sandbox:
    """A sandbox root with its supervisor and an agent; units and judges stopped at the end."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store, self.root = store, root
        self.supervisor = SandboxSupervisor(root, stop_timeout=3)
        self.agent = self.new_agent()
        self.dpkg = Dpkg(root)

    def new_agent(self) -> Agent:
        return Agent(self.store, AgentOptions(server=SERVER, root=self.root, backoff=Backoff(base=60.0),
                                              settle=SETTLE), self.supervisor)

    def restart_agent(self) -> None:
        """A new agent on the same state directory, as after a crash."""
        self.agent.close()
        self.agent = self.new_agent()

    def step(self, *reasons: str) -> bool:
        return self.agent.step(list(reasons) or ["start"])

    def verdict(self, app: str, ok: Callable[[Verdict], bool], what: str, timeout: float = 15) -> Verdict:
        def look() -> Verdict | None:
            v = self.agent.judge.verdicts().get(app)
            return v if v is not None and ok(v) else None
        return wait_for(look, timeout, f"{app}: {what}")

    def version(self, package: str) -> str | None:
        row = self.dpkg.installed().get(package)
        return row.version if row is not None and row.ok else None

    def report(self) -> status.AgentStatus:
        r = status.read(self.store, SERVER)
        assert r is not None
        return r

    def postinst_runs(self, app: str) -> list[str]:
        return (self.root / f"var/lib/{app}/postinst.log").read_text().split()

    def close(self) -> None:
        self.agent.close()
        self.supervisor.close(stop_units=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def sandbox(store: Store, tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(store, tmp_path / "root")
    yield sb
    sb.close()


def healthy(v: Verdict) -> bool:
    return v.health == "healthy"


def final(v: Verdict) -> bool:
    return v.final


def fleet_status(tmp_path: Path, store: Store, apps: list[str], capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, object]]:
    """`push status --json` straight from the bucket: app -> its entry on the server."""
    conf = tmp_path / "skiapush.conf"
    conf.write_text(f"[servers.{SERVER}]\nappNames = {json.dumps(apps)}\n")
    monkeypatch.setenv("PUSH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("PUSH_CONFIG", str(conf))
    monkeypatch.delenv("PUSH_URL", raising=False)
    capsys.readouterr()
    assert push_main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (server,) = data["servers"]
    return {a["app"]: {**a, "problems": server["problems"]} for a in server["apps"]}


def test_a_crashing_release_is_reverted_and_not_retried_until_the_file_changes(
        store: Store, tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2, script=CRASH.format(app="hello", version="1.2"),
                      unit=NO_RESTART.format(app="hello"))
    set_server_file(store, SERVER, [h1.name])
    assert sandbox.step()
    first = sandbox.verdict("hello", healthy, "1.1 healthy after the settle time")
    assert first.release == h1.name and first.deadline is None and "at least 0.3s" in first.detail
    sandbox.step("health")
    rep = sandbox.report().apps["hello"]
    assert (rep.health, rep.reverted_from, rep.state) == ("healthy", None, "ok") and rep.health_since

    set_server_file(store, SERVER, [h2.name])
    assert sandbox.step()  # installed: in sync, and its health is being judged
    assert sandbox.version("push-hello") == "1.2"
    v = sandbox.verdict("hello", final, "1.2 judged unhealthy for good (its unit failed)")
    assert v.health == "unhealthy" and v.revert and "hello.service is failed" in v.detail
    assert "cannot open /var/lib/hello/db" in v.detail  # the unit's last log lines

    assert not sandbox.step("health")  # the revert
    assert sandbox.version("push-hello") == "1.1"
    sandbox.verdict("hello", lambda v: v.release == h1.name and healthy(v), "1.1 healthy again")
    sandbox.step("health")
    rep = sandbox.report().apps["hello"]
    assert (rep.health, rep.reverted_from, rep.state, rep.installed) == ("unhealthy", h2.name, "failed", h1.name)
    assert "cannot open /var/lib/hello/db" in (rep.health_detail or "")
    assert f"now {h1.name} is healthy" in (rep.health_detail or "")
    seen = fleet_status(tmp_path, store, ["hello"], capsys, monkeypatch)["hello"]
    assert seen["health"] == "unhealthy" and seen["reverted_from"] == h2.name
    assert {"unhealthy", "reverted"} <= set(seen["marks"]) and seen["problems"] == 1  # type: ignore[arg-type]

    # Not retried: neither by this agent nor by one restarted after a crash (the refusal is recorded).
    assert not sandbox.step()
    sandbox.restart_agent()
    assert not sandbox.step()
    assert sandbox.version("push-hello") == "1.1" and sandbox.postinst_runs("hello") == ["1.1", "1.2", "1.1"]
    assert sandbox.report().apps["hello"].reverted_from == h2.name

    # The file changes (the same release chosen again): it is tried once more, and reverted again.
    set_server_file(store, SERVER, [h2.name])
    sandbox.step()
    assert sandbox.postinst_runs("hello")[-1] == "1.2"
    sandbox.verdict("hello", lambda v: v.release == h2.name and v.final, "1.2 unhealthy again")
    sandbox.step("health")
    assert sandbox.version("push-hello") == "1.1" and sandbox.postinst_runs("hello")[-2:] == ["1.2", "1.1"]


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_a_failing_http_check_and_a_hung_command_are_reverted(store: Store, tmp_path: Path, sandbox: Sandbox) -> None:
    """Two apps judged at once: a check answering 404, a check that hangs past its timeout."""
    port = free_port()
    (tmp_path / "root/etc/default").mkdir(parents=True)
    (tmp_path / "root/etc/default/web").write_text(f"PORT={port}\n")
    web1 = make_release(store, tmp_path, "web", 1, script=HTTP.format(app="web"),
                        health=HealthCheck(http="http://127.0.0.1:${PORT}/VERSION", within=10))
    web2 = make_release(store, tmp_path, "web", 2, script=HTTP.format(app="web"),
                        health=HealthCheck(http="http://127.0.0.1:${PORT}/missing", within=1.5))
    slow1 = make_release(store, tmp_path, "slow", 1)
    hang = ["/bin/sh", "-c", "echo probing the cache; exec sleep 37.25"]
    slow2 = make_release(store, tmp_path, "slow", 2, health=HealthCheck(command=tuple(hang), timeout=0.5, within=1.5))
    set_server_file(store, SERVER, [web1.name, slow1.name])
    assert sandbox.step()
    v = sandbox.verdict("web", healthy, "web 1.1 answering its check")
    assert "health check passed" in v.detail
    sandbox.verdict("slow", healthy, "slow 1.1 healthy")

    set_server_file(store, SERVER, [web2.name, slow2.name])
    assert sandbox.step()
    web = sandbox.verdict("web", final, "web 1.2 unhealthy by its deadline")
    slow = sandbox.verdict("slow", final, "slow 1.2 unhealthy by its deadline")
    assert "not healthy within 1.5s" in web.detail and "/missing: HTTP 404" in web.detail
    assert "did not finish within its 0.5s timeout: killed" in slow.detail and "probing the cache" in slow.detail
    assert not _processes_with("sleep 37.25")  # the hung check was killed with its process group
    sandbox.step("health")
    assert sandbox.version("push-web") == "1.1" and sandbox.version("push-slow") == "1.1"
    apps = sandbox.report().apps
    assert apps["web"].reverted_from == web2.name and apps["slow"].reverted_from == slow2.name
    assert "HTTP 404" in (apps["web"].health_detail or "") and "killed" in (apps["slow"].health_detail or "")


def test_revert_false_a_healthy_release_and_one_that_fails_later(
        store: Store, tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    keep1 = make_release(store, tmp_path, "keep", 1)
    keep2 = make_release(store, tmp_path, "keep", 2, script=CRASH.format(app="keep", version="1.2"),
                         unit=NO_RESTART.format(app="keep"), health=HealthCheck(revert=False))
    flaky1 = make_release(store, tmp_path, "flaky", 1)
    check = HealthCheck(command=("test", "-e", "${PUSH_ROOT}/run/flaky/ok"), interval=0.3, within=10)
    flaky2 = make_release(store, tmp_path, "flaky", 2, script=FLAKY.format(app="flaky"), health=check)
    set_server_file(store, SERVER, [keep1.name, flaky1.name])
    assert sandbox.step()
    sandbox.verdict("keep", healthy, "keep 1.1 healthy")
    sandbox.verdict("flaky", healthy, "flaky 1.1 healthy")

    set_server_file(store, SERVER, [keep2.name, flaky2.name])
    assert sandbox.step()
    v = sandbox.verdict("keep", final, "keep 1.2 unhealthy")
    assert not v.revert
    sandbox.verdict("flaky", lambda v: v.release == flaky2.name and healthy(v), "flaky 1.2 healthy")
    assert sandbox.step("health")  # nothing to change: keep 1.2 stays (revert = false)
    apps = sandbox.report().apps
    assert sandbox.version("push-keep") == "1.2" and apps["keep"].installed == keep2.name
    assert (apps["keep"].health, apps["keep"].reverted_from) == ("unhealthy", None)
    assert apps["flaky"].health == "healthy" and apps["flaky"].health_deadline is None

    (tmp_path / "root/run/flaky/ok").unlink()  # flaky 1.2 stops working while it runs
    later = sandbox.verdict("flaky", lambda v: v.health == "unhealthy", "flaky 1.2 unhealthy while running")
    assert not later.final and "test -e" in later.detail and "exited 1" in later.detail
    sandbox.step("health")
    assert sandbox.version("push-flaky") == "1.2"  # reported, never reverted
    seen = fleet_status(tmp_path, store, ["keep", "flaky"], capsys, monkeypatch)
    assert seen["flaky"]["health"] == "unhealthy" and "unhealthy" in seen["flaky"]["marks"]  # type: ignore[operator]
    assert seen["keep"]["health"] == "unhealthy" and seen["keep"]["reverted_from"] is None
    assert seen["flaky"]["problems"] == 2


@pytest.mark.slow
def test_pulld_once_exits_0_only_when_healthy(store: Store, tmp_path: Path) -> None:
    """`pulld --once` waits for the verdict: 0 when healthy, 1 when not (and then reverted)."""
    root = tmp_path / "root"
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2, script=CRASH.format(app="hello", version="1.2"),
                      unit=NO_RESTART.format(app="hello"), health=HealthCheck(within=5))

    def once() -> int:
        argv = [sys.executable, "-m", "push.agent.main", "--store", str(tmp_path / "store"), "--root", str(root),
                "--server", SERVER, "--metrics-port", "0", "--settle", str(SETTLE), "--once"]
        env = {k: v for k, v in os.environ.items() if k != "GCE_METADATA_HOST"}
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=120).returncode

    try:
        set_server_file(store, SERVER, [h1.name])
        assert once() == 0
        assert status.read(store, SERVER).apps["hello"].health == "healthy"  # type: ignore[union-attr]
        set_server_file(store, SERVER, [h2.name])
        assert once() == 1
        rep = status.read(store, SERVER).apps["hello"]  # type: ignore[union-attr]
        assert (rep.health, rep.reverted_from, rep.installed) == ("unhealthy", h2.name, h1.name)
        assert once() == 1  # still refused: the server does not match its file
    finally:
        SandboxSupervisor(root).close(stop_units=True)


def test_a_check_on_its_own(tmp_path: Path) -> None:
    """push.agent.checks without an agent: variables, refusals, exits and a hung command."""
    from push.agent import checks

    root = tmp_path / "root"
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/app").write_text("PORT=9\nNAME='x y'\n")
    unset = checks.run(HealthCheck(http="http://127.0.0.1:${NOPE}/"), "app", root)
    assert not unset.ok
    assert unset.detail == f"the health check uses ${{NOPE}}, which {root}/etc/default/app does not set"
    refused = checks.run(HealthCheck(http="http://127.0.0.1:${PORT}/"), "app", root)  # port 9: nothing listens
    assert not refused.ok and refused.detail.startswith("GET http://127.0.0.1:9/: ")
    said = checks.run(HealthCheck(command=("/bin/sh", "-c", 'echo "$NAME at $PUSH_ROOT"; exit 3')), "app", root)
    assert not said.ok and said.detail.endswith(f"exited 3: x y at {root}")
    assert checks.run(HealthCheck(command=("test", "-d", "${PUSH_ROOT}/etc")), "app", root).ok
    hung = checks.run(HealthCheck(command=("/bin/sh", "-c", "sleep 41.75 & sleep 41.75"), timeout=0.3), "app", root)
    assert not hung.ok and "killed" in hung.detail and hung.seconds < 3
    assert not _processes_with("sleep 41.75")  # the whole process group, the background child too


def test_an_app_without_units_is_healthy_once_installed(store: Store, tmp_path: Path, sandbox: Sandbox) -> None:
    data = make_release(store, tmp_path, "data", 1, with_unit=False)
    set_server_file(store, SERVER, [data.name])
    assert sandbox.step()
    v = sandbox.verdict("data", healthy, "data healthy")
    assert v.detail == "installed, with no units to run"
