"""push.fleetstate.server_state: one server's state from its inputs, without a store."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest

from push.fleetstate import (
    CONVERGE_GRACE,
    AppState,
    ReleaseEntry,
    ReleaseState,
    ServerState,
    Watcher,
    expires,
    filter_apps,
    liveness,
    server_state,
)
from push.follow import Followed
from push.release import Release, ReleaseInfo, short
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
          newest: Mapping[str, str] = NEWEST, written: timedelta | None = None, watcher: Watcher | None = None,
          report_written: datetime | None = None) -> ServerState:
    """`written`: how long ago the server file was written (None: unknown)."""
    file = None if file_error else ServerFile("web-1", tuple(entries), "g1",
                                              NOW - written if written is not None else None)
    return server_state("web-1", allowed=allowed, file=file, file_error=file_error, report=rep,
                        releases=known, newest=newest, now=NOW, watcher=watcher, report_written=report_written)


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


# -- progress: done, converging, failed, stuck (issue 12) ------------------------------------


def judged(rep: AgentStatus, app_name: str, health: str, detail: str | None = None,
           deadline: timedelta | None = None) -> AgentStatus:
    st = rep.apps[app_name]
    st.health, st.health_detail = health, detail or health
    st.health_deadline = (NOW + deadline).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if deadline is not None else None
    return rep


def test_done_is_the_desired_release_installed_and_healthy() -> None:
    rep = judged(report({"hello": HELLO2.name}), "hello", "healthy")
    s = state(HELLO2.name, "pulld/", rep=rep, written=timedelta(hours=1))
    assert [(a.app, a.progress, a.progress_reason) for a in s.apps] == [("hello", "done", None),
                                                                        ("pulld", "done", None)]
    assert (s.progress, s.progress_reason, s.problems) == ("done", None, 0)


def test_an_agent_from_before_health_is_done_once_installed() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO2.name}), written=timedelta(hours=1))
    assert app(s, "hello").progress == "done"


def test_converging_within_its_deadline_is_not_a_problem() -> None:
    """A routine deploy: the file names a new release the agent has not picked up yet."""
    s = state(HELLO2.name, PULLD1.name, rep=report({"hello": HELLO1.name, "pulld": PULLD1.name}),
              written=timedelta(seconds=10))
    hello = app(s, "hello")
    assert (hello.progress, hello.marks, s.problems, s.progress) == ("converging", [], 0, "converging")
    assert hello.progress_reason == f"waiting for the agent to pick up {short(HELLO2.name)}"
    assert hello.progress_deadline == "2026-03-04T12:04:50.000000Z"  # written + CONVERGE_GRACE
    assert s.progress_reason == f"hello: waiting for the agent to pick up {short(HELLO2.name)}"


def test_installing_and_health_progressing_are_converging() -> None:
    rep = report({"hello": HELLO1.name})
    rep.apps["hello"].desired, rep.apps["hello"].state = HELLO2.name, "installing"
    hello = app(state(HELLO2.name, rep=rep, written=timedelta(seconds=5)), "hello")
    assert (hello.progress, hello.progress_reason, hello.marks) == (
        "converging", f"installing {short(HELLO2.name)}", [])
    # Installed, proving its health: the health deadline (plus a margin) may outlast the grace.
    rep = judged(report({"hello": HELLO2.name}), "hello", "progressing", "units settling", timedelta(seconds=600))
    hello = app(state(HELLO2.name, rep=rep, written=timedelta(seconds=250)), "hello")
    assert (hello.progress, hello.marks) == ("converging", [])
    assert hello.progress_reason == f"{short(HELLO2.name)} installed, health progressing: units settling"
    assert hello.progress_deadline == "2026-03-04T12:10:30.000000Z"


def test_past_its_deadline_is_stuck_and_a_problem() -> None:
    s = state(HELLO2.name, rep=report({"hello": HELLO1.name}), written=timedelta(seconds=CONVERGE_GRACE + 1))
    hello = app(s, "hello")
    assert (hello.progress, hello.marks, hello.progress_deadline, s.problems) == ("stuck", ["drift"], None, 1)
    assert hello.progress_reason == (f"not done {CONVERGE_GRACE + 1:.0f} s after the server file named it: "
                                     f"waiting for the agent to pick up {short(HELLO2.name)}")
    # Installed but never healthy, past the health deadline: stuck, and a problem without drift.
    rep = judged(report({"hello": HELLO2.name}), "hello", "progressing", deadline=timedelta(seconds=-60))
    s = state(HELLO2.name, rep=rep, written=timedelta(hours=1))
    assert (app(s, "hello").progress, app(s, "hello").marks, s.problems) == ("stuck", [], 1)


def test_a_wait_line_names_releases_short_and_stays_readable() -> None:
    """`push deploy --wait` prints a progress reason per server: releases by app, time and short
    hash (their full names stay in the structured fields), so a typical converging line fits
    120 columns (it took over 150 with full names)."""
    waiting = state(HELLO2.name, rep=report({"hello": HELLO1.name}), written=timedelta(seconds=10))
    stuck = state(HELLO2.name, rep=report({"hello": HELLO1.name}), written=timedelta(seconds=CONVERGE_GRACE + 1))
    judging = state(HELLO2.name, written=timedelta(seconds=250), rep=judged(
        report({"hello": HELLO2.name}), "hello", "progressing", "units settling", timedelta(seconds=600)))
    for s in (waiting, stuck, judging):
        hello = app(s, "hello")
        line = Followed("web-1.example.com", "hello", hello).line()
        assert HELLO2.name not in line and short(HELLO2.name) in line, line
        assert len(line) <= 120 or s is stuck, line  # stuck also says since when
        assert hello.desired == HELLO2.name  # scripts read the full name
    assert app(stuck, "hello").actual == HELLO1.name


def test_a_revert_the_agent_did_not_explain_names_the_release_short() -> None:
    back = report({"hello": HELLO1.name}, failed={"hello": "not healthy"})
    back.apps["hello"].desired, back.apps["hello"].reverted_from = HELLO2.name, HELLO2.name
    hello = app(state(HELLO2.name, rep=back), "hello")
    assert hello.progress_reason == f"{short(HELLO2.name)} was not healthy and was reverted"
    assert hello.reverted_from == HELLO2.name


def test_an_unknown_write_time_is_long_past() -> None:
    assert app(state(HELLO2.name, rep=report({"hello": HELLO1.name})), "hello").progress == "stuck"


def test_a_stale_agent_makes_what_is_not_done_stuck() -> None:
    rep = report({"hello": HELLO1.name, "pulld": PULLD1.name}, age=timedelta(minutes=20))
    s = state(HELLO2.name, PULLD1.name, rep=rep, written=timedelta(seconds=5))
    hello = app(s, "hello")
    assert hello.progress == "stuck" and "its agent is stale: no report for 1200 s" in str(hello.progress_reason)
    assert app(s, "pulld").progress == "done"  # as last reported
    assert (s.progress, s.stale) == ("stuck", True)


@pytest.mark.parametrize(("case", "reason"), [
    ("agent_failed", "dpkg: error processing package"),
    ("unhealthy", "GET http://127.0.0.1:8001/: HTTP 503"),
    ("reverted", f"{HELLO2.name} was not healthy and was reverted to {HELLO1.name}"),
    ("not_allowed", "skiapush.conf does not allow hello on this server"),
    ("unknown_release", f"{short(HELLO2.name)} is not in the bucket"),
    ("untrusted", "the agent refuses it: no valid signature"),
])
def test_failed(case: str, reason: str) -> None:
    rep = report({"hello": HELLO2.name})
    allowed: tuple[str, ...] = ("hello", "pulld")
    known = KNOWN
    if case == "agent_failed":
        rep = report({"hello": HELLO1.name}, failed={"hello": reason})
        rep.apps["hello"].desired = HELLO2.name
    elif case == "unhealthy":
        judged(rep, "hello", "unhealthy", reason)
    elif case == "reverted":
        rep = report({"hello": HELLO1.name}, failed={"hello": "not healthy"})
        rep.apps["hello"].desired, rep.apps["hello"].reverted_from = HELLO2.name, HELLO2.name
        judged(rep, "hello", "unhealthy", reason)
    elif case == "not_allowed":
        allowed = ("pulld",)
    elif case == "unknown_release":
        known = {}
    else:
        rep.trust = TrustStatus(releases="verified", refused=[{"subject": HELLO2.name, "reason": "unsigned",
                                                               "message": "no valid signature", "app": "hello"}])
    s = state(HELLO2.name, rep=rep, allowed=allowed, known=known, written=timedelta(seconds=5))
    hello = app(s, "hello")
    assert (hello.progress, hello.progress_reason, hello.progress_deadline) == ("failed", reason, None)
    assert (s.progress, s.progress_reason, s.problems) == ("failed", f"hello: {reason}", 1)


def test_a_failure_reported_for_an_earlier_release_does_not_fail_the_new_one() -> None:
    """A fix deployed over a failed release converges: the report is about the file before."""
    rep = report({"hello": HELLO1.name}, failed={"hello": "dpkg: error"})
    s = state(HELLO2.name, rep=rep, written=timedelta(seconds=3))
    assert app(s, "hello").progress == "converging" and app(s, "hello").marks == ["failed"]


def test_removal_is_done_when_nothing_is_installed() -> None:
    rep = report({"hello": HELLO1.name})
    rep.apps["hello"].desired, rep.apps["hello"].state = None, "removing"
    hello = app(state("hello/", rep=rep, written=timedelta(seconds=2)), "hello")
    assert (hello.progress, hello.progress_reason) == ("converging", f"removing {short(HELLO1.name)}")
    hello = app(state("hello/", rep=report({"hello": None}), written=timedelta(seconds=2)), "hello")
    assert hello.progress == "done"


def test_no_report_yet_converges_until_the_deadline() -> None:
    hello = app(state(HELLO2.name, written=timedelta(seconds=2)), "hello")
    assert (hello.progress, hello.progress_reason) == ("converging", "no report from its agent yet")
    assert app(state(HELLO2.name, written=timedelta(hours=1)), "hello").progress == "stuck"


# -- liveness (issue 12 point 5) ------------------------------------------------------------------


def test_stale_after_three_report_intervals() -> None:
    rep = report({"hello": HELLO2.name}, age=timedelta(seconds=31))
    rep.report_interval = 10
    s = state(HELLO2.name, rep=rep)
    assert (s.stale, s.stale_reason) == (True, "no report for 31 s (it reports every 10 s or more often)")
    assert s.last_contact == rep.time and s.problems == 1
    rep = report({"hello": HELLO2.name}, age=timedelta(seconds=29))
    rep.report_interval = 10
    live = liveness(rep, None, None, NOW)
    assert (live.stale, live.until) == (False, NOW + timedelta(seconds=1))
    assert state(HELLO2.name, rep=rep).stale is False


def test_a_heartbeat_listed_but_not_read_keeps_the_agent_alive() -> None:
    rep = report({"hello": HELLO2.name}, age=timedelta(minutes=9))
    rep.report_interval = 60
    s = state(HELLO2.name, rep=rep, report_written=NOW - timedelta(seconds=40))
    assert (s.stale, s.last_contact) == (False, "2026-03-04T11:59:20.000000Z")


def test_a_watching_agent_is_judged_by_its_watch() -> None:
    rep = report({"hello": HELLO2.name}, age=timedelta(minutes=14))
    back = Watcher(last=NOW - timedelta(seconds=70), back_by=NOW - timedelta(seconds=1))
    s = state(HELLO2.name, rep=rep, watcher=back)
    assert (s.stale, s.stale_reason) == (True, "its watch of the push server not renewed for 70 s")
    assert s.last_contact == "2026-03-04T11:58:50.000000Z"
    # Watching, the report's age does not matter (a long step does not look like a stop).
    rep = report({"hello": HELLO2.name}, age=timedelta(minutes=30))
    live = Watcher(last=NOW - timedelta(seconds=5), back_by=NOW + timedelta(seconds=70))
    s = state(HELLO2.name, rep=rep, watcher=live)
    assert (s.stale, s.stale_reason, s.problems) == (False, None, 0)


def test_expires_is_the_first_moment_the_clock_changes_the_state() -> None:
    rep = report({"hello": HELLO1.name}, age=timedelta(seconds=1))
    rep.report_interval = 100
    s = state(HELLO2.name, rep=rep, written=timedelta(seconds=10))
    assert expires(s, liveness(rep, None, None, NOW)) == NOW + timedelta(seconds=CONVERGE_GRACE - 10)
    s = state(HELLO2.name, rep=judged(report({"hello": HELLO2.name}), "hello", "healthy"), written=timedelta(hours=1))
    assert expires(s, liveness(None, None, None, NOW)) is None


def test_unhealthy_in_its_install_window_converges_to_the_revert() -> None:
    """The agent reverts a release unhealthy for good in its window at its next step: the
    change is still moving (to `failed`, reverted), unless the window passes without it."""
    rep = judged(report({"hello": HELLO2.name}), "hello", "unhealthy", "hello.service is failed",
                 timedelta(seconds=20))
    hello = app(state(HELLO2.name, rep=rep, written=timedelta(seconds=15)), "hello")
    assert hello.progress == "converging" and "its agent reverts it" in str(hello.progress_reason)
    rep = judged(report({"hello": HELLO2.name}), "hello", "unhealthy", "hello.service is failed",
                 timedelta(seconds=-40))
    hello = app(state(HELLO2.name, rep=rep, written=timedelta(seconds=100)), "hello")
    assert (hello.progress, hello.progress_reason) == ("failed", "hello.service is failed")


def test_unhealthy_with_revert_false_fails_at_once() -> None:
    """`revert = false` (the release's declared health): the agent keeps it, so no revert is awaited."""
    keep = ReleaseInfo(HELLO2.release, note="hello 2", extra={"health": '{"revert":false}'})
    rep = judged(report({"hello": HELLO2.name}), "hello", "unhealthy", "health check failed: HTTP 503",
                 timedelta(seconds=20))
    hello = app(state(HELLO2.name, rep=rep, known={**KNOWN, HELLO2.name: keep}, written=timedelta(seconds=15)),
                "hello")
    assert (hello.progress, hello.progress_reason) == ("failed", "health check failed: HTTP 503")


def test_an_agent_that_reports_after_its_last_watch_here_watches_elsewhere() -> None:
    """Behind a load balancer its watch moved to another push server: the report rule."""
    rep = report({"hello": HELLO2.name}, age=timedelta(seconds=30))
    rep.report_interval = 60
    moved = Watcher(last=NOW - timedelta(seconds=100), back_by=NOW - timedelta(seconds=25))
    s = state(HELLO2.name, rep=rep, watcher=moved)
    assert (s.stale, s.last_contact) == (False, rep.time)
