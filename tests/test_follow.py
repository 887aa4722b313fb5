"""push.follow: `--wait` follows the fleet state's progress until done, failed or stuck (no store, no clock)."""

from __future__ import annotations

import io
from collections.abc import Iterator

from push.exits import WAIT_FAILED, WAIT_STUCK
from push.fleetstate import AppState, FleetFilter, FleetState, ServerState
from push.follow import follow

NAME = "hello/hello:alice@build:2026-01-01T00:00:00Z:0123456789abcdef0123456789abcdef01234567.deb"


def fleet(*apps: tuple[str, str, str | None]) -> FleetState:
    """(server, progress, reason) per server, each with one app, hello."""
    servers = [ServerState(server=s, last_seen=None, stale=False, agent_version=None, in_sync=None, agent_error=None,
                           file_error=None, generation=None, problems=0,
                           apps=[AppState(app="hello", allowed=True, desired=NAME, actual=None, state=None, error=None,
                                          units={}, latest=None, marks=[], progress=p,  # type: ignore[arg-type]
                                          progress_reason=r)])
               for s, p, r in apps]
    return FleetState(generated="", filter=FleetFilter(), count=len(servers), servers=servers)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(states: list[FleetState], targets: list[tuple[str, str]], *, live: bool = False,
        timeout: float | None = None) -> tuple[int, str, int]:
    it: Iterator[FleetState] = iter(states)
    last = states[-1]
    looks = 0

    def fetch() -> FleetState:
        nonlocal looks
        looks += 1
        return next(it, last)
    out, clock = io.StringIO(), Clock()
    code = follow(targets, fetch, out=out, live=live, timeout=timeout, clock=clock, sleep=clock.sleep)
    return code, out.getvalue(), looks


def test_done_prints_a_line_per_change_when_piped() -> None:
    code, out, looks = run([fleet(("web-1", "converging", "waiting for the agent to pick up x")),
                            fleet(("web-1", "converging", "waiting for the agent to pick up x")),
                            fleet(("web-1", "converging", "installing x")),
                            fleet(("web-1", "done", None))], [("web-1", "hello")])
    assert code == 0 and looks == 4
    assert out.splitlines() == ["web-1  hello  converging: waiting for the agent to pick up x",
                                "web-1  hello  converging: installing x",
                                "web-1  hello  done: hello 2026-01-01 00:00 0123456 installed, healthy"]


def test_failed_wins_over_stuck_and_every_server_is_followed_to_its_end() -> None:
    code, out, _ = run([fleet(("a", "converging", "x"), ("b", "converging", "y")),
                        fleet(("a", "stuck", "not done 301 s after the server file named it"),
                              ("b", "converging", "y")),
                        fleet(("a", "converging", "moved on"), ("b", "failed", "dpkg: error\nsecond line"))],
                       [("a", "hello"), ("b", "hello")])
    assert code == WAIT_FAILED
    # A finished server keeps its outcome; a reason's lines are one line.
    assert out.splitlines()[-1] == "b  hello  failed: dpkg: error; second line"
    assert "moved on" not in out


def test_stuck_is_not_done() -> None:
    code, _, _ = run([fleet(("a", "stuck", "its agent is stale"))], [("a", "hello")])
    assert code == WAIT_STUCK


def test_timeout_gives_up_as_stuck() -> None:
    code, out, looks = run([fleet(("a", "converging", "installing x"))], [("a", "hello")], timeout=3)
    assert code == WAIT_STUCK and looks == 4  # t = 0, 1, 2, 3
    assert out.splitlines()[-1] == "a  hello  stuck: --timeout passed: installing x"


def test_a_server_not_in_the_state_yet_is_waited_for() -> None:
    code, out, _ = run([fleet(), fleet(("a", "done", None))], [("a", "hello")])
    assert code == 0 and out.splitlines()[0] == "a  hello  converging: not in the fleet state yet"


def test_live_lines_are_rewritten_in_place_on_a_terminal() -> None:
    code, out, _ = run([fleet(("a", "converging", "x"), ("b", "converging", "y")),
                        fleet(("a", "done", None), ("b", "done", None))], [("a", "hello"), ("b", "hello")], live=True)
    assert code == 0
    first, second = out.split("\x1b[2F")  # back up two lines, once
    assert first.count("\x1b[2K") == 2 and second.count("\x1b[2K") == 2 and "done" in second


def test_nothing_to_follow() -> None:
    assert run([fleet()], [])[0] == 0


def _outage(down: int) -> tuple[int, str, Clock]:
    """Follow web-1 through a push server that answers, is unreachable for `down` looks, then answers done."""
    from push.errors import StoreUnavailable

    answers: list[FleetState | None] = [fleet(("web-1", "converging", "installing x")), *[None] * down,
                                        fleet(("web-1", "done", None))]

    def fetch() -> FleetState:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is None:
            raise StoreUnavailable("cannot reach the push server http://127.0.0.1:1: [Errno 111] Connection refused")
        return answer
    out, clock = io.StringIO(), Clock()
    try:
        code = follow([("web-1", "hello")], fetch, out=out, live=False, clock=clock, sleep=clock.sleep)
    except StoreUnavailable:
        code = -1
    return code, out.getvalue(), clock


def test_a_push_server_restarted_meanwhile_is_waited_for() -> None:
    # Restarting the push server (an upgrade of Push itself) must not end a wait on its agents.
    code, out, _ = _outage(5)
    assert code == 0
    lines = out.splitlines()
    assert lines[-1].startswith("web-1  hello  done: ")
    assert sum("cannot reach the push server" in line for line in lines) == 1, out  # said once, not per look


def test_a_push_server_gone_for_good_ends_the_wait_with_its_error() -> None:
    code, out, clock = _outage(10_000)
    assert code == -1 and 55 <= clock.now <= 65, clock.now
