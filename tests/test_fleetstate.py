"""push.fleetstate.server_state: one server's state from its inputs, without a store."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest

from push.fleetstate import AppState, ReleaseEntry, ReleaseState, ServerState, filter_apps, server_state
from push.release import Release, ReleaseInfo
from push.serverfile import ServerFile
from push.status import AgentStatus, AppStatus, TrustStatus

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)


def rel(app: str, n: int, *, dirty: bool = False, note: str = "") -> ReleaseInfo:
    h = hashlib.sha1(f"{app}{n}".encode()).hexdigest()
    return ReleaseInfo(Release(app, "alice", "build", NOW - timedelta(days=10 - n), h), dirty=dirty,
                       note=note or f"{app} {n}")


HELLO1, HELLO2, PULLD1 = rel("hello", 1), rel("hello", 2), rel("pulld", 1)
KNOWN = {i.name: i for i in (HELLO1, HELLO2, PULLD1)}
NEWEST = {"hello": HELLO2.name, "pulld": PULLD1.name}


def report(apps: Mapping[str, str | None], *, age: timedelta = timedelta(minutes=1), error: str | None = None,
           failed: Mapping[str, str | None] | None = None, units: Mapping[str, dict[str, str]] | None = None,
           ) -> AgentStatus:
    failed = failed or {}
    return AgentStatus(
        server="web-1", agent_version="1.2", time=(NOW - age).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        in_sync=not failed and error is None, error=error,
        apps={app: AppStatus(desired=installed, installed=installed,
                             state="failed" if app in failed else "ok", error=failed.get(app),
                             units=(units or {}).get(app, {})) for app, installed in apps.items()})


def state(*entries: str, allowed: Sequence[str] = ("hello", "pulld"), rep: AgentStatus | None = None,
          file_error: str | None = None, known: Mapping[str, ReleaseInfo] = KNOWN,
          newest: Mapping[str, str] = NEWEST) -> ServerState:
    file = None if file_error else ServerFile("web-1", tuple(entries), "g1")
    return server_state("web-1", allowed=allowed, file=file, file_error=file_error, report=rep,
                        releases=known, newest=newest, now=NOW)


def app(s: ServerState, name: str) -> AppState:
    return next(a for a in s.apps if a.app == name)


def test_in_sync_has_no_marks_and_no_problems() -> None:
    s = state(HELLO2.name, PULLD1.name, rep=report({"hello": HELLO2.name, "pulld": PULLD1.name}))
    assert [a.marks for a in s.apps] == [[], []] and s.problems == 0
    assert (s.stale, s.in_sync, s.agent_version, s.generation) == (False, True, "1.2", "g1")
    hello = app(s, "hello")
    assert (hello.desired, hello.actual, hello.latest, hello.state) == (HELLO2.name, HELLO2.name, HELLO2.name, "ok")
    assert hello.desired_note == "hello 2" and hello.allowed


def test_drift_when_the_agent_runs_something_else() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO1.name}))
    assert app(s, "hello").marks == ["drift"] and s.problems == 1


def test_drift_when_the_agent_runs_nothing_yet() -> None:
    s = state(HELLO2.name, rep=report({}))
    assert app(s, "hello").marks == ["drift"] and app(s, "hello").actual is None


def test_out_of_date_is_not_a_problem() -> None:
    s = state(HELLO1.name, rep=report({"hello": HELLO1.name}))
    assert app(s, "hello").marks == ["out_of_date"] and s.problems == 0


def test_dirty_release() -> None:
    dirty = rel("hello", 3, dirty=True)
    s = state(dirty.name, rep=report({"hello": dirty.name}), known={**KNOWN, dirty.name: dirty},
              newest={"hello": dirty.name})
    assert app(s, "hello").marks == ["dirty"] and s.problems == 0


def test_no_newest_release_known_is_never_out_of_date() -> None:
    s = state(HELLO1.name, rep=report({"hello": HELLO1.name}), newest={})
    assert app(s, "hello").marks == [] and app(s, "hello").latest is None


def test_unknown_release_is_a_problem() -> None:
    s = state(HELLO1.name, rep=report({"hello": HELLO1.name}), known={})
    hello = app(s, "hello")
    assert hello.marks == ["unknown_release", "out_of_date"] and hello.desired_note is None
    assert s.problems == 1


def test_listed_but_not_allowed_comes_after_the_allowed_apps() -> None:
    s = state(HELLO1.name, PULLD1.name, allowed=("pulld",), rep=report({"hello": HELLO1.name, "pulld": PULLD1.name}))
    assert [a.app for a in s.apps] == ["pulld", "hello"]
    hello = app(s, "hello")
    assert not hello.allowed and hello.marks == ["out_of_date", "not_allowed"] and s.problems == 1


def test_allowed_but_not_listed_wants_nothing() -> None:
    s = state(rep=report({}))
    assert [(a.app, a.desired, a.marks) for a in s.apps] == [("hello", None, []), ("pulld", None, [])]


def test_a_placeholder_wants_nothing_and_the_agent_running_something_is_drift() -> None:
    s = state("hello/", rep=report({"hello": None}))
    assert app(s, "hello").desired is None and app(s, "hello").marks == []
    s = state("hello/", rep=report({"hello": HELLO1.name}))
    assert app(s, "hello").marks == ["drift"]


def test_no_report() -> None:
    s = state(HELLO2.name)
    assert [a.marks for a in s.apps] == [["no_report"], ["no_report"]]
    assert (s.last_seen, s.stale, s.in_sync, s.agent_version) == (None, None, None, None)
    assert s.problems == 1  # the silent agent, not each app


def test_stale_report() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}, age=timedelta(minutes=16)))
    assert s.stale is True and app(s, "hello").marks == [] and s.problems == 1
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}, age=timedelta(minutes=14)))
    assert s.stale is False and s.problems == 0


def test_failed_with_the_agents_words() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO1.name}, failed={"hello": "dpkg: error processing package"}))
    hello = app(s, "hello")
    assert hello.marks == ["drift", "failed"] and hello.error == "dpkg: error processing package"
    assert hello.state == "failed" and s.problems == 1


def test_failed_without_a_reason_still_says_so() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}, failed={"hello": None}))
    assert app(s, "hello").error == "failed (the agent gave no reason)"


def test_agent_error_is_one_problem() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}, error="store unreachable"))
    assert s.agent_error == "store unreachable" and s.problems == 1


def test_bad_server_file() -> None:
    s = state(file_error="server/web-1.json: not valid JSON", rep=report({"hello": HELLO2.name}))
    assert s.file_error == "server/web-1.json: not valid JSON" and s.generation is None
    assert [(a.app, a.desired) for a in s.apps] == [("hello", None), ("pulld", None)]
    assert app(s, "hello").marks == ["drift"] and s.problems == 2


def test_a_refused_release_is_untrusted_and_a_problem() -> None:
    """docs/trust.md: the agent keeps what it runs and says what it refused, and why."""
    error = f"untrusted (unsigned): release {HELLO2.name} is not signed"
    rep = report({"hello": HELLO1.name}, failed={"hello": error})
    rep.trust = TrustStatus(releases="verified", server_files="verified", refused=[
        {"subject": HELLO2.name, "reason": "unsigned", "message": error, "app": "hello"}])
    s = state(HELLO2.name, rep=rep)
    assert s.trust == "verified" and s.untrusted == [f"{HELLO2.name}: unsigned"]
    assert "untrusted" in app(s, "hello").marks and app(s, "hello").error == error and s.problems == 1


def test_a_refused_server_file_is_one_problem_of_the_server() -> None:
    rep = report({"hello": HELLO2.name})
    rep.trust = TrustStatus(releases="off", server_files="verified", refused=[
        {"subject": "server/web-1.json", "reason": "expired", "message": "the statement expired"}])
    s = state(HELLO2.name, rep=rep)
    assert s.trust == "server files only" and s.untrusted == ["server/web-1.json: expired"]
    assert app(s, "hello").marks == [] and s.problems == 1


def test_an_agent_from_before_signatures_says_nothing_of_trust() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}))
    assert s.trust is None and s.untrusted == [] and s.problems == 0


def test_units_come_from_the_report() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}, units={"hello": {"hello.service": "active"}}))
    assert app(s, "hello").units == {"hello.service": "active"} and app(s, "pulld").units == {}


def test_apps_installed_that_the_file_does_not_mention_are_shown_unmanaged() -> None:
    """pulld leaves them running (only "old/" removes old): the view must show them."""
    s = state(HELLO2.name, allowed=("hello",), rep=report({"hello": HELLO2.name, "old": "old/x", "gone": None}))
    assert [a.app for a in s.apps] == ["hello", "old"]
    assert app(s, "old").marks == ["not_allowed", "unmanaged"] and app(s, "old").actual == "old/x"
    assert s.problems == 1


def test_the_state_is_json_by_its_model() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO1.name}))
    assert ServerState.from_bytes(s.to_bytes()) == s
    assert s.to_json()["apps"][0]["marks"] == ["drift"]


@pytest.mark.parametrize(("wanted", "apps"), [("", ["hello", "pulld"]), ("PULL", ["pulld"]), ("l", ["hello", "pulld"])])
def test_filter_apps(wanted: str, apps: list[str]) -> None:
    s = state(HELLO2.name)
    filtered = filter_apps(s, wanted)
    assert filtered is not None and [a.app for a in filtered.apps] == apps
    assert filter_apps(s, "nothing-like-it") is None
    assert filter_apps(s, "") is s


def test_release_state_is_the_release_entry_and_where_it_runs() -> None:
    info = ReleaseInfo(HELLO1.release, note="n", services=("hello.service",), sha256="0" * 64, size=4,
                       extra={"package": "hello"})
    got = ReleaseState.where(info, {"web-2", "web-1"}, [])
    entry = ReleaseEntry.of(info).to_json()
    assert {k: v for k, v in got.to_json().items() if k in entry} == entry
    assert (got.short_hash, got.desired_on, got.running_on) == (HELLO1.release.short_hash, ["web-1", "web-2"], [])
    assert entry["datetime"] == HELLO1.release.timestamp and entry["extra"] == {"package": "hello"}


def test_health_unhealthy_and_reverted_are_problems_progressing_is_not() -> None:
    """Issue 12: health beside sync. A release converging within its deadline is no problem."""
    rep = report({"hello": HELLO2.name, "pulld": PULLD1.name})
    rep.apps["hello"].health, rep.apps["hello"].health_deadline = "progressing", "2026-03-04T12:00:30.000000Z"
    s = state(HELLO2.name, PULLD1.name, rep=rep)
    hello = app(s, "hello")
    assert (hello.health, hello.health_deadline, hello.marks, s.problems) == (
        "progressing", "2026-03-04T12:00:30.000000Z", [], 0)

    rep.apps["hello"].health, rep.apps["hello"].health_detail = "unhealthy", "GET http://127.0.0.1:8001/: HTTP 503"
    s = state(HELLO2.name, PULLD1.name, rep=rep)
    assert app(s, "hello").marks == ["unhealthy"] and s.problems == 1  # in sync, and not working

    back = report({"hello": HELLO1.name, "pulld": PULLD1.name}, failed={"hello": f"{HELLO2.name} was not healthy"})
    back.apps["hello"].health, back.apps["hello"].reverted_from = "unhealthy", HELLO2.name
    s = state(HELLO2.name, PULLD1.name, rep=back)
    hello = app(s, "hello")
    assert hello.reverted_from == HELLO2.name and {"drift", "failed", "unhealthy", "reverted"} <= set(hello.marks)
    assert s.problems == 1
    assert app(state(HELLO2.name, PULLD1.name), "hello").health is None  # no report: not known
