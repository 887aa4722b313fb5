"""push.agent.report: the report pulld publishes, built from a plan, failures and unit states.

Pure: plans come from push.agent.plan with made-up inputs; no dpkg, no store, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentplans import NOW, decide, failure, h1, h2, ii, installed_by_push, meta, rel, w1
from push import __version__
from push.agent import report
from push.agent.failures import Failure
from push.agent.plan import Plan
from push.status import AgentStatus

TIME = "2026-01-02T03:04:05.000000Z"


def build(p: Plan, *, failures: Mapping[str, Failure] | None = None, unit_errors: Mapping[str, str] | None = None,
          units: Mapping[str, Mapping[str, str]] | None = None, error: str | None = None,
          working: bool = False) -> AgentStatus:
    return report.build(p, server="s1", hostname="host-1", time=TIME, step=7, generation="g42",
                        failures=failures or {}, unit_errors=unit_errors or {}, units=units or {}, error=error,
                        working=working)


def in_sync_plan() -> Plan:
    return decide([h1.name, "later/"], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
                  metadata=[meta(h1)])


def test_a_server_in_sync() -> None:
    r = build(in_sync_plan(), units={"hello": {"z.service": "active", "hello.service": "active"}})
    assert (r.server, r.hostname, r.time, r.step, r.server_file_generation, r.agent_version) == (
        "s1", "host-1", TIME, 7, "g42", __version__)
    assert r.in_sync and r.error is None and list(r.apps) == ["hello", "later"]
    hello = r.apps["hello"]
    assert (hello.desired, hello.installed, hello.package, hello.version, hello.state) == (
        h1.name, h1.name, "push-hello", "1.1", "ok")
    assert list(hello.units) == ["hello.service", "z.service"]  # sorted
    later = r.apps["later"]
    assert (later.desired, later.installed, later.state, later.units) == (None, None, "ok", {})


def test_a_report_round_trips_through_json() -> None:
    r = build(in_sync_plan(), units={"hello": {"hello.service": "active"}})
    assert AgentStatus.from_json(r.to_json()) == r


def test_what_a_plan_will_change_shows_as_installing_and_removing_before_it_runs() -> None:
    p = decide([h2.name, "web/"], installed=[ii("push-hello", "1.1"), ii("push-web", "1.1")],
               record={"hello": installed_by_push(h1), "web": installed_by_push(w1)}, metadata=[meta(h2)])
    before = build(p, working=True)
    assert {a: s.state for a, s in before.apps.items()} == {"hello": "installing", "web": "removing"}
    assert not before.in_sync and before.apps["hello"].installed == h1.name
    after = build(p)  # the same plan, not being carried out: still to do
    assert {a: s.state for a, s in after.apps.items()} == {"hello": "pending", "web": "removing"}


def test_a_failure_is_reported_with_its_words_and_its_retry() -> None:
    p = decide([h2.name], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
               metadata=[meta(h2)], failures={"hello": failure(h2, attempts=2, error="dpkg -i failed: exploded")})
    f = failure(h2, attempts=2, error="dpkg -i failed: exploded")
    r = build(p, failures={"hello": f})
    hello = r.apps["hello"]
    assert (hello.state, hello.error, hello.error_time, hello.attempts, hello.next_retry) == (
        "failed", "dpkg -i failed: exploded", f.time, 2, f.retry_wall)
    assert hello.installed == h1.name and hello.desired == h2.name and not r.in_sync


def test_a_unit_error_fails_an_installed_app() -> None:
    r = build(in_sync_plan(), unit_errors={"hello": "hello.service: start limit hit"})
    assert r.apps["hello"].state == "failed" and r.apps["hello"].error == "hello.service: start limit hit"
    assert r.apps["hello"].attempts == 0 and not r.in_sync


def test_a_release_still_to_install_is_pending() -> None:
    r = build(decide([h1.name], failures={}))  # metadata not read yet
    assert r.apps["hello"].state == "pending" and r.apps["hello"].installed is None and not r.in_sync


def test_a_placeholder_of_an_app_never_installed_here_is_ok() -> None:
    p = decide(["hello/"], installed=[ii("push-hello", "0.9")])
    r = build(p)
    assert r.in_sync and r.apps["hello"].state == "ok" and r.apps["hello"].installed is None


def test_a_placeholder_of_an_installed_app_is_removing_it() -> None:
    p = decide(["hello/"], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)})
    r = build(p, units={"hello": {"hello.service": "active"}})
    assert not r.in_sync and r.apps["hello"].state == "removing" and r.apps["hello"].installed == h1.name


def test_an_installed_app_the_file_does_not_mention_is_reported_unmanaged() -> None:
    p = decide([h1.name], installed=[ii("push-hello", "1.1"), ii("push-web", "1.1")],
               record={"hello": installed_by_push(h1), "web": installed_by_push(w1)}, metadata=[meta(h1)])
    r = build(p, units={"web": {"web.service": "active"}})
    web = r.apps["web"]
    assert web.state == "unmanaged" and web.installed == w1.name and web.desired is None
    assert web.units == {"web.service": "active"} and not r.in_sync


def test_without_a_server_file_the_report_says_why_and_is_not_in_sync() -> None:
    p = decide(None, installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)})
    r = build(p, error="no server file server/s1.json in file:///b")
    assert not r.in_sync and r.error and r.apps["hello"].state == "ok" and r.apps["hello"].installed == h1.name
    assert not build(p).in_sync  # no file to follow is never in sync, even without an error


def test_a_step_error_is_never_in_sync() -> None:
    r = build(in_sync_plan(), error="cannot read server/s1.json: connection refused")
    assert not r.in_sync and all(s.state == "ok" for s in r.apps.values())


def test_apps_in_the_file_order_then_the_recorded_ones() -> None:
    z, a = rel("zzz", 1), rel("aaa", 1)
    p = decide([z.name, a.name], record={"old": installed_by_push(rel("old", 1)), "mid": installed_by_push(
        rel("mid", 1))}, metadata=[meta(z), meta(a)])
    assert list(build(p).apps) == ["zzz", "aaa", "mid", "old"]


def test_a_backing_off_app_is_failed_not_pending() -> None:
    f = failure(h1, due_in=30)
    r = build(decide([h1.name], metadata=[meta(h1)], failures={"hello": f}), failures={"hello": f})
    assert r.apps["hello"].state == "failed" and r.apps["hello"].next_retry == f.retry_wall
    assert f.retry_at == NOW + 30


def test_the_report_says_its_interval_so_readers_know_when_it_is_stale(monkeypatch) -> None:
    from push.agent.main import build_parser

    r = report.build(in_sync_plan(), server="s1", hostname="h", time=TIME, step=1, generation=None, failures={},
                     unit_errors={}, units={}, report_interval=20.0)
    assert (r.report_interval, r.stale_after) == (20.0, 60.0)
    assert build(in_sync_plan()).stale_after == 15 * 60  # no interval said (pulld before liveness)
    monkeypatch.setenv("PULLD_REPORT_INTERVAL", "45")
    assert build_parser().parse_args([]).report_interval == 45.0
    monkeypatch.setenv("PULLD_REPORT_INTERVAL", "-1")
    try:
        build_parser()
    except SystemExit as e:
        assert "PULLD_REPORT_INTERVAL='-1' is not a number of seconds" in str(e)
    else:
        raise AssertionError("a bad PULLD_REPORT_INTERVAL was accepted")
