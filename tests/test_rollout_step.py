"""push.rollout.step: the driver's decisions, pure, without a store (like test_agent_plan)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from push.errors import InvalidRequest
from push.rollout.model import Plan, Rollout, ServerStep, Wave, parse_waves
from push.rollout.step import Observed, Write, applied, judge, step
from push.status import AgentStatus, AppStatus

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
OLD, NEW = "web/web:a@b:2026-01-01T00:00:00Z:" + "1" * 40, "web/web:a@b:2026-01-02T00:00:00Z:" + "2" * 40


def rollout(n: int = 4, waves: str = "1,50%,100%", bake: float = 10, deadline: float = 60, max_unhealthy: int = 0,
            rollback: bool = True) -> Rollout:
    servers = [f"s{i}" for i in range(1, n + 1)]
    sizes = parse_waves(waves, n)
    wave_of = {}
    for i, size in reversed(list(enumerate(sizes))):
        for s in servers[:size]:
            wave_of[s] = i
    return Rollout(id="01764676800000000000-0a1b2c3d", app="web", release=NEW, who="ann", created="x",
                   plan=Plan(servers=servers, waves=sizes, waves_spec=waves, bake=bake, wave_deadline=deadline,
                             max_unhealthy=max_unhealthy, rollback=rollback),
                   waves=[Wave(size=s) for s in sizes],
                   servers={s: ServerStep(server=s, wave=wave_of[s], before=OLD) for s in servers})


def world(r: Rollout, **health: str) -> dict[str, Observed]:
    """Each server as its file and agent would show it: written servers run NEW with the
    health given (default progressing), the others still OLD."""
    out = {}
    for name, s in r.servers.items():
        if s.phase in ("changed", "healthy", "unhealthy"):
            out[name] = Observed(desired=NEW, health=health.get(name, "progressing"))
        elif s.phase == "reverted":
            out[name] = Observed(desired=s.before)
        else:
            out[name] = Observed(desired=OLD)
    return out


def do(r: Rollout, at: float, **health: str) -> tuple[Rollout, list[Write]]:
    now = T0 + timedelta(seconds=at)
    r2, writes = step(r, world(r, **health), now)
    for w in writes:
        applied(r2, w, now, record_id=f"rec-{w.server}")
    return r2, writes


def test_waves_are_cumulative_counts_or_percentages() -> None:
    assert parse_waves("1,25%,100%", 50) == [1, 13, 50]
    assert parse_waves("1,25%,100%", 3) == [1, 3]
    assert parse_waves("1,25%,100%", 1) == [1]
    assert parse_waves("2,5", 10) == [2, 5, 10]
    for bad in ("0", "x", "150%", "5,2", ""):
        with pytest.raises(InvalidRequest):
            parse_waves(bad, 10)


def test_a_healthy_release_goes_through_every_wave_after_its_bake() -> None:
    r = rollout()
    r, writes = do(r, 0)
    assert [w.server for w in writes] == ["s1"] and writes[0] == Write("s1", "deploy", NEW, OLD)
    assert r.servers["s1"].phase == "changed" and r.servers["s1"].history == ["rec-s1"]
    r, writes = do(r, 1)  # progressing: nothing more
    assert writes == [] and r.wave == 0
    r, writes = do(r, 2, s1="healthy")  # healthy: the bake starts
    assert writes == [] and r.waves[0].healthy_at is not None
    r, writes = do(r, 11, s1="healthy")
    assert writes == []
    r, writes = do(r, 12.5, s1="healthy")  # baked: wave 2 starts at once
    assert r.wave == 1 and [w.server for w in writes] == ["s2"]
    r, writes = do(r, 13, s1="healthy", s2="healthy")
    r, writes = do(r, 24, s1="healthy", s2="healthy")
    assert [w.server for w in writes] == ["s3", "s4"]
    healthy = {s: "healthy" for s in ("s1", "s2", "s3", "s4")}
    r, _ = do(r, 25, **healthy)
    r, _ = do(r, 36, **healthy)
    assert r.state == "completed" and r.ended is not None
    assert do(r, 40)[1] == []  # an ended rollout does nothing


def test_bake_zero_runs_waves_back_to_back_in_one_step() -> None:
    r = rollout(bake=0)
    r, _ = do(r, 0)
    r, writes = do(r, 1, s1="healthy")
    assert [w.server for w in writes] == ["s2"] and r.wave == 1


def test_an_unhealthy_canary_stops_the_rollout_and_rolls_it_back() -> None:
    r = rollout()
    r, _ = do(r, 0)
    r, writes = do(r, 3, s1="unhealthy")
    assert r.state == "rolling_back" and "s1" in (r.reason or "")
    assert writes == [Write("s1", "rollback", OLD, NEW)]
    assert r.servers["s1"].phase == "reverted"
    assert all(r.servers[s].phase == "pending" for s in ("s2", "s3", "s4"))  # never got it
    r, writes = do(r, 4)
    assert writes == [] and r.state == "rolled_back"


def test_without_rollback_a_failure_leaves_the_servers_as_they_are() -> None:
    r = rollout(rollback=False)
    r, _ = do(r, 0)
    r, writes = do(r, 3, s1="unhealthy")
    assert r.state == "failed" and writes == [] and r.servers["s1"].phase == "unhealthy"


def test_a_wave_past_its_deadline_fails_a_stale_agent_is_never_healthy() -> None:
    r = rollout(deadline=30)
    r, _ = do(r, 0)
    r, _ = do(r, 29, s1="unknown")
    assert r.state == "running"
    r, writes = do(r, 31, s1="unknown")
    assert r.state == "rolling_back" and "deadline" in (r.reason or "") and writes[0].action == "rollback"


def test_max_unhealthy_lets_a_wave_through_with_that_many() -> None:
    r = rollout(n=4, waves="100%", bake=0, max_unhealthy=1)
    r, _ = do(r, 0)
    r, _ = do(r, 1, s1="healthy", s2="healthy", s3="healthy", s4="unhealthy")
    assert r.state == "completed"
    r = rollout(n=4, waves="100%", bake=0, max_unhealthy=1)
    r, _ = do(r, 0)
    r, _ = do(r, 1, s1="healthy", s2="healthy", s3="unhealthy", s4="unhealthy")
    assert r.state == "rolling_back"


def test_pause_stops_writes_and_clocks_resume_moves_them_on() -> None:
    r = rollout(deadline=30)
    r, _ = do(r, 0)
    r.pause = True
    r, _ = do(r, 1)
    assert r.state == "paused"
    r, writes = do(r, 100, s1="healthy")  # paused: no judgement, no deadline
    assert r.state == "paused" and writes == []
    r.pause = False
    r, _ = do(r, 101)  # resumed: the deadline counts from the resume, less what had passed
    assert r.state == "running"
    r, _ = do(r, 125)
    assert r.state == "running"
    r, _ = do(r, 135)
    assert r.state == "rolling_back"


def test_promote_skips_the_rest_of_the_bake() -> None:
    r = rollout(bake=3600)
    r, _ = do(r, 0)
    r, _ = do(r, 1, s1="healthy")
    r.promote = True
    r, writes = do(r, 2, s1="healthy")
    assert r.wave == 1 and [w.server for w in writes] == ["s2"] and not r.promote


def test_abort_rolls_back_abort_stop_only_stops() -> None:
    r = rollout()
    r, _ = do(r, 0)
    r.abort, r.reason = "rollback", "aborted by ann"
    r, writes = do(r, 1)
    assert writes == [Write("s1", "rollback", OLD, NEW)]
    r, _ = do(r, 2)
    assert r.state == "aborted"
    r = rollout()
    r, _ = do(r, 0)
    r.abort, r.reason = "stop", "aborted by ann"
    r, writes = do(r, 1)
    assert writes == [] and r.state == "aborted" and r.servers["s1"].phase == "changed"


def test_a_server_changed_by_someone_else_is_left_alone_and_reported() -> None:
    r = rollout(bake=0)
    r, _ = do(r, 0)
    other = "web/web:a@b:2026-01-03T00:00:00Z:" + "3" * 40
    seen = world(r, s1="healthy")
    seen["s1"] = Observed(desired=other)
    r, writes = step(r, seen, T0 + timedelta(seconds=1))
    assert r.servers["s1"].phase == "left" and "changed by someone else" in (r.servers["s1"].detail or "")
    # A server changed before its wave is never written.
    seen = world(r)
    seen["s2"] = Observed(desired=other)
    r, writes = step(r, seen, T0 + timedelta(seconds=2))
    assert r.servers["s2"].phase == "left" and all(w.server != "s2" for w in writes)
    # Rolling back leaves it alone too.
    r2 = rollout()
    r2, _ = do(r2, 0)
    r2.abort, r2.reason = "rollback", "aborted by ann"
    r2, writes = step(r2, {"s1": Observed(desired=other)}, T0 + timedelta(seconds=1))
    assert writes == [] and r2.servers["s1"].phase == "left" and r2.state == "aborted"


def test_a_write_refused_as_changed_meanwhile_leaves_that_server() -> None:
    r = rollout()
    r2, writes = step(r, world(r), T0)
    applied(r2, writes[0], T0, current="other", refused="changed meanwhile")
    assert r2.servers["s1"].phase == "left"


def report(app: AppStatus | None, age: float = 1) -> AgentStatus:
    return AgentStatus(server="s1", agent_version="1", time=(T0 - timedelta(seconds=age)).isoformat(),
                       apps={"web": app} if app else {})


def test_judge_reads_the_agents_report() -> None:
    def j(rep: AgentStatus | None) -> str:
        return judge(rep, "web", NEW, T0, 900)[0]

    assert j(None) == "unknown"
    assert j(report(AppStatus(installed=NEW, health="healthy"), age=1000)) == "unknown"  # stale
    # By default, stale after three of the agent's own report intervals.
    quick = report(AppStatus(installed=NEW, health="healthy"), age=40).model_copy(update={"report_interval": 10})
    assert judge(quick, "web", NEW, T0)[0] == "unknown"
    assert judge(quick.model_copy(update={"report_interval": 20}), "web", NEW, T0)[0] == "healthy"
    assert j(report(None)) == "progressing"
    assert j(report(AppStatus(installed=OLD, desired=NEW))) == "progressing"
    assert j(report(AppStatus(installed=OLD, desired=NEW, reverted_from=NEW, health="unhealthy"))) == "unhealthy"
    assert j(report(AppStatus(installed=OLD, desired=NEW, state="failed", error="dpkg"))) == "unhealthy"
    assert j(report(AppStatus(installed=NEW, health="progressing"))) == "progressing"
    assert j(report(AppStatus(installed=NEW, health="healthy"))) == "healthy"
    assert j(report(AppStatus(installed=NEW, health="unhealthy"))) == "unhealthy"
