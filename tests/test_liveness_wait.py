"""Liveness and `--wait`, for real (issue 12 point 5, issue 14): pulld processes with sandbox
roots and real dpkg, one `push serve`, one bucket, shared by the module.

`--wait` in both modes: a good release exits 0 once installed and healthy; a crashing one
exits 8 after its agent reverted it; a removal exits 0 once removed. Then liveness: a
watching agent stopped with SIGSTOP and one killed are shown stale by the push server within
the watch's timeout plus its grace (short here: 2 + 4 s), and an agent without a push server
is stale after three report intervals (2 s here) straight from the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentpkgs import make_release
from push.cli import main
from push.demo.fleet import LocalFleet, Process
from push.release import ReleaseInfo
from push.store.local import LocalStore
from waiting import wait_for

pytestmark = [pytest.mark.timeout(180)]

WATCHED = ("w1", "w2")      # agents that watch the push server (w1: --wait through it)
DIRECT = ("d1",)            # an agent without a push server (--wait straight to the bucket)
WATCH_TIMEOUT, WATCH_GRACE, REPORT_INTERVAL = 2.0, 4.0, 2.0

CRASH = """\
#!/bin/sh
echo "app {version}: cannot open /var/lib/app/db: no such file"
exit 1
"""
NO_RESTART = textwrap.dedent("""\
    [Service]
    ExecStart=/usr/local/bin/app
    """)


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store_dir = root / "bucket"
        store = LocalStore(self.store_dir)
        self.good = [make_release(store, root, "app", n) for n in (1, 2)]
        self.bad: ReleaseInfo = make_release(store, root, "app", 3, script=CRASH.format(version="1.3"),
                                             unit=NO_RESTART)
        self.conf = root / "skiapush.conf"
        self.conf.write_text("".join(f'[servers.{s}]\nappNames = ["app"]\n' for s in (*WATCHED, *DIRECT)))
        agent_args = ["--settle", "0.3", "--backoff", "60"]
        self.watched = LocalFleet(workdir=root / "watched", store=str(self.store_dir), config=self.conf,
                                  servers=list(WATCHED), server_args=["--poll-interval", "0.2",
                                                                      "--watch-grace", f"{WATCH_GRACE:g}"],
                                  agent_args=[*agent_args, "--watch-timeout", f"{WATCH_TIMEOUT:g}"])
        self.direct = LocalFleet(workdir=root / "direct", store=str(self.store_dir), config=self.conf,
                                 servers=list(DIRECT),
                                 agent_args=[*agent_args, "--interval", "0.5",
                                             "--report-interval", f"{REPORT_INTERVAL:g}"])
        self.agents: dict[str, Process] = {}
        try:
            self.watched.start_server()
            for s in WATCHED:
                self.agents[s] = self.watched.start_agent(s)
            for s in DIRECT:
                self.agents[s] = self.direct.start_agent(s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.alive() and agent.pid is not None:
                os.kill(agent.pid, signal.SIGCONT)  # a stopped agent cannot end on SIGTERM
        self.direct.stop()
        self.watched.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("liveness"))
    yield w
    w.stop()


@pytest.fixture
def push(world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PUSH_STORE", str(world.store_dir))
    monkeypatch.setenv("PUSH_CONFIG", str(world.conf))
    monkeypatch.delenv("PUSH_URL", raising=False)

    def run(*argv: str, remote: bool = False) -> tuple[int, str, str]:
        extra = ["--push-url", world.watched.url] if remote else []
        code = main([*argv, *extra])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def server_state(push, server: str, *, remote: bool) -> dict:
    code, out, err = push("status", server, "--json", remote=remote)
    assert code == 0, err
    return json.loads(out)["servers"][0]


@pytest.mark.parametrize(("server", "remote"), [("w1", True), ("d1", False)], ids=["remote", "direct"])
def test_wait_follows_to_done_and_to_the_revert(world: World, push, server: str, remote: bool) -> None:
    good1, good2 = (r.name for r in world.good)
    start = time.monotonic()
    code, out, err = push("deploy", server, "app", good1, "--wait", "--timeout", "60", remote=remote)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"deployed app on {server}: (nothing) -> app ")
    assert lines[-1].startswith(f"{server}  app  done: app ") and lines[-1].endswith("installed, healthy")
    assert any("converging" in line for line in lines[1:-1]), out  # a plain line per change, piped
    first = time.monotonic() - start

    code, out, err = push("deploy", server, "app", good2, "--wait", remote=remote)
    assert code == 0 and out.splitlines()[-1].endswith("installed, healthy"), out + err

    # The crashing release: installed, its unit fails, the agent reverts it; --wait says so.
    code, out, err = push("deploy", server, "app", world.bad.name, "--wait", "--json", remote=remote)
    assert code == 8, out + err
    assert json.loads(out)["to"] == world.bad.name  # --json: stdout stays one document, the lines go to stderr
    last = err.splitlines()[-1]
    assert last.startswith(f"{server}  app  failed: {world.bad.name} was not healthy and was reverted to {good2}")
    assert "cannot open /var/lib/app/db" in last
    state = server_state(push, server, remote=remote)
    app = state["apps"][0]
    assert (app["actual"], app["reverted_from"], app["progress"]) == (good2, world.bad.name, "failed")

    # Back to a good release (the file changes: the refusal ends), then removed.
    code, out, err = push("rollback", server, "app", "--wait", remote=remote)
    assert code == 0 and out.splitlines()[-1].endswith("installed, healthy"), out + err
    code, out, err = push("remove", server, "app", "--wait", remote=remote)
    assert code == 0 and out.splitlines()[-1] == f"{server}  app  done: removed", out + err
    assert server_state(push, server, remote=remote)["apps"][0]["actual"] is None
    print(f"first deploy --wait: {first:.1f} s")


def test_wait_refuses_a_timeout_without_wait(push) -> None:
    with pytest.raises(SystemExit):
        push("deploy", "w1", "app", "latest", "--timeout", "0")
    code, _, err = push("deploy", "w1", "app", "latest", "--timeout", "5")
    assert code == 2 and "--timeout is for --wait" in err


def _stale_after(push, server: str, *, remote: bool, limit: float) -> tuple[float, dict]:
    start = time.monotonic()

    def stale() -> dict | None:
        state = server_state(push, server, remote=remote)
        return state if state["stale"] else None
    state = wait_for(stale, limit, f"{server} shown stale")
    return time.monotonic() - start, state


def test_a_stopped_and_a_killed_watcher_are_stale_through_the_push_server(world: World, push) -> None:
    for server in WATCHED:
        wait_for(lambda s=server: server_state(push, s, remote=True)["last_contact"], 20, f"{server} heard of")
        assert server_state(push, server, remote=True)["stale"] is False
    stopped, killed = world.agents["w2"], world.agents["w1"]
    assert stopped.pid is not None
    os.kill(stopped.pid, signal.SIGSTOP)
    killed.kill9()
    limit = WATCH_TIMEOUT + WATCH_GRACE
    took, state = _stale_after(push, "w2", remote=True, limit=limit + 5)
    assert took <= limit + 1.5, took  # the poll (0.2 s) and the CLI's own time
    assert state["stale_reason"].startswith("its watch of the push server not renewed for ")
    assert state["problems"] == 1 and state["last_contact"]
    took_killed, _ = _stale_after(push, "w1", remote=True, limit=limit + 5)  # killed at the same moment
    assert took_killed <= limit + 1.5, took_killed
    # Straight to the bucket there is no watch: the report rule (15 minutes for these agents,
    # whose report interval is the default 60 s: 180 s) still calls them alive.
    assert server_state(push, "w2", remote=False)["stale"] is False

    os.kill(stopped.pid, signal.SIGCONT)  # back: it comes for its watch again
    wait_for(lambda: server_state(push, "w2", remote=True)["stale"] is False, limit + 5, "w2 alive again")
    print(f"SIGSTOP to stale through the push server: {took:.1f} s")


def test_an_agent_without_a_push_server_is_stale_after_three_report_intervals(world: World, push) -> None:
    state = server_state(push, "d1", remote=False)
    assert state["stale"] is False
    world.agents["d1"].kill9()
    took, state = _stale_after(push, "d1", remote=False, limit=3 * REPORT_INTERVAL + 5)
    assert took <= 3 * REPORT_INTERVAL + 2, took
    assert state["stale_reason"].startswith("no report for ")
    assert state["stale_reason"].endswith(f"(it reports every {REPORT_INTERVAL:g} s or more often)")
    print(f"kill to stale straight from the bucket: {took:.1f} s")
