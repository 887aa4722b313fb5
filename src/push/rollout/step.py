"""The rollout driver's decisions, as pure functions: `step(rollout, observed, now)` returns
the rollout's next state and the server-file writes to make; `applied(...)` records what a
write did. Nothing here reads the bucket or the clock (tests/test_rollout_step.py runs them
in milliseconds), so the loop around them (push.rollout.driver) only observes, writes and saves.

`judge(...)` is the one judgement of a server's health for a rollout, from its agent's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from push import timestamps
from push.fleetstate import Liveness
from push.release import short
from push.rollout.model import WRITTEN, Rollout, ServerStep
from push.status import AgentStatus


@dataclass(frozen=True)
class Observed:
    """What the bucket shows of one server: the app's release in its server file (None: none),
    and the health of the rollout's release there (judge())."""

    desired: str | None
    health: str = "unknown"        # healthy | progressing | unhealthy | unknown
    detail: str | None = None
    readable: bool = True          # False: the server file cannot be read now (try again)


@dataclass(frozen=True)
class Write:
    """A server-file write the driver asks for: `to` (None: the placeholder, nothing of the
    app) only if the app's entry is still `expected`."""

    server: str
    action: Literal["deploy", "rollback", "remove"]
    to: str | None
    expected: str | None


def judge(report: AgentStatus | None, app: str, release: str, now: datetime,
          stale_after: float | None = None, live: Liveness | None = None) -> tuple[str, str | None]:
    """(health, detail) of `release` of `app` on a server, by its agent's last report. A
    missing or stale report is `unknown`, never healthy: stale as `live` says (the fleet
    view's liveness rules: the agent's watch of the push server, or its reports), else when
    older than `stale_after` (by default the agent's own `AgentStatus.stale_after`: three of
    its report intervals);
    a release the agent reverted, or failed to install, is `unhealthy`; installed and
    reported healthy is `healthy`; anything else is still `progressing`."""
    if report is None:
        return "unknown", "no report from its agent"
    if live is not None and stale_after is None:
        if live.stale:
            return "unknown", f"its agent is stale ({live.reason})"
    elif (age := report.age_seconds(now)) > (report.stale_after if stale_after is None else stale_after):
        return "unknown", f"its agent is stale (last report {age:.0f} s ago)"
    st = report.apps.get(app)
    if st is None:
        return "progressing", "not in its agent's report yet"
    if st.reverted_from == release:
        return "unhealthy", st.health_detail or "its agent reverted the release (not healthy in time)"
    if st.installed != release:
        if st.state == "failed" and st.desired == release:
            return "unhealthy", st.error or "its agent failed to install it"
        return "progressing", f"installing (runs {short(st.installed)})"
    if st.state == "failed":
        return "unhealthy", st.error or "failed"
    if st.health == "healthy":
        return "healthy", None
    if st.health == "unhealthy":
        return "unhealthy", st.health_detail or "unhealthy"
    return "progressing", st.health_detail or f"health {st.health}"


def _t(text: str | None) -> datetime | None:
    return timestamps.parse(text) if text else None


def _fail(r: Rollout, now: str, reason: str) -> None:
    r.reason = reason
    r.note(now, f"stopped: {reason}")
    if r.plan.rollback:
        r.state = "rolling_back"
        r.note(now, "rolling back the servers it changed")
    else:
        _end(r, now, "failed")


def _end(r: Rollout, now: str, state: Literal["completed", "failed", "rolled_back", "aborted"]) -> None:
    r.state = state
    r.ended = now
    r.promote = False
    r.note(now, state.replace("_", " "))


def _start_wave(r: Rollout, observed: dict[str, Observed], now: str) -> list[Write]:
    """The writes of the current wave's servers not written yet."""
    writes: list[Write] = []
    wave = r.waves[r.wave]
    if wave.started is None:
        wave.started = now
        r.note(now, f"wave {r.wave + 1} of {len(r.waves)}: {wave.size} server(s)")
    for name in r.wave_servers(r.wave):
        s = r.servers[name]
        if s.phase != "pending":
            continue
        seen = observed.get(name)
        if seen is None or not seen.readable:
            continue  # asked again at the next step
        if seen.desired == r.release:  # already there (it ran it, or our write landed before a restart)
            s.phase, s.changed_at = "changed", s.changed_at or now
        elif seen.desired != s.before:
            _leave(r, s, now, f"changed meanwhile: it now runs {short(seen.desired)}, "
                              f"not {short(s.before)}")
        else:
            writes.append(Write(name, "deploy", r.release, s.before))
    return writes


def _leave(r: Rollout, s: ServerStep, now: str, why: str) -> None:
    s.phase, s.detail = "left", why
    r.note(now, f"{s.server}: left alone: {why}")


def _judge_wave(r: Rollout, observed: dict[str, Observed], now: str) -> tuple[int, int, list[str]]:
    """(healthy, unhealthy, the names not healthy) among the wave's servers the rollout
    judges; updates each server's health."""
    healthy = unhealthy = 0
    waiting: list[str] = []
    for name in r.wave_servers(r.wave):
        s = r.servers[name]
        seen = observed.get(name)
        if s.phase in WRITTEN and seen is not None and seen.readable and seen.desired != r.release:
            _leave(r, s, now, f"changed by someone else during the rollout: it now runs {short(seen.desired)}")
        if s.phase not in WRITTEN:
            if s.phase == "pending":
                waiting.append(name)
            continue
        health, detail = (seen.health, seen.detail) if seen is not None else ("unknown", "not observed")
        s.health, s.detail = health, detail
        if health == "healthy":
            healthy += 1
            if s.phase != "healthy":
                s.phase, s.healthy_at = "healthy", now
        elif health == "unhealthy":
            unhealthy += 1
            if s.phase != "unhealthy":
                s.phase = "unhealthy"
                r.note(now, f"{name}: unhealthy: {detail}")
        else:
            if s.phase == "healthy":  # it was, and is no longer: judged again from scratch
                s.phase = "changed"
            waiting.append(name)
    return healthy, unhealthy, waiting


def step(r: Rollout, observed: dict[str, Observed], now_dt: datetime) -> tuple[Rollout, list[Write]]:
    """The rollout's next state and the writes to make now. `r` is copied, never changed."""
    r = r.model_copy(deep=True)
    now = timestamps.format_time(now_dt)
    if not r.active:
        return r, []
    _pause_or_resume(r, now_dt, now)
    if r.state == "paused" and r.abort is None:
        return r, []
    if r.abort is not None:
        how = r.abort
        r.abort, r.promote = None, False
        r.reason = r.reason or "aborted"
        if how == "rollback" and any(s.phase in WRITTEN for s in r.servers.values()):
            r.state = "rolling_back"
            r.note(now, "aborted: rolling back the servers it changed")
        else:
            _end(r, now, "aborted")
            return r, []
    if r.state == "rolling_back":
        return _roll_back(r, observed, now)
    writes: list[Write] = []
    for _ in range(len(r.waves)):  # a wave done at once (bake 0) starts the next in the same step
        writes += _start_wave(r, observed, now)
        healthy, unhealthy, waiting = _judge_wave(r, observed, now)
        wave = r.waves[r.wave]
        if unhealthy > r.plan.max_unhealthy:
            bad = [n for n in r.wave_servers(r.wave) if r.servers[n].phase == "unhealthy"]
            detail = r.servers[bad[0]].detail if bad else None
            _fail(r, now, f"wave {r.wave + 1}: {unhealthy} unhealthy (at most {r.plan.max_unhealthy}): "
                          f"{', '.join(bad)}" + (f": {detail}" if detail else ""))
            return _stopped(r, observed, now)
        pending = any(r.servers[n].phase == "pending" for n in r.wave_servers(r.wave))
        if pending or len(waiting) + unhealthy > r.plan.max_unhealthy:
            wave.healthy_at = None  # (again) not healthy: its bake starts once it is
            started = _t(wave.started)
            assert started is not None
            if now_dt - started > timedelta(seconds=r.plan.wave_deadline):
                _fail(r, now, f"wave {r.wave + 1} missed its deadline ({r.plan.wave_deadline:g} s): not healthy: "
                              + ", ".join(f"{n} ({r.servers[n].detail or r.servers[n].health})" for n in waiting))
                return _stopped(r, observed, now)
            return r, writes
        if wave.healthy_at is None:
            wave.healthy_at = now
            r.note(now, f"wave {r.wave + 1} healthy ({healthy} server(s)); baking {r.plan.bake:g} s")
        baked = now_dt - (_t(wave.healthy_at) or now_dt) >= timedelta(seconds=r.plan.bake)
        if not (baked or r.promote):
            return r, writes
        wave.done = now
        if r.promote:
            r.note(now, f"wave {r.wave + 1} promoted")
        r.promote = False
        r.note(now, f"wave {r.wave + 1} done")
        if r.wave + 1 >= len(r.waves):
            _end(r, now, "completed")
            return r, writes
        r.wave += 1
    return r, writes


def _pause_or_resume(r: Rollout, now_dt: datetime, now: str) -> None:
    """Carry out a pause or resume asked. While paused nothing is written and the wave's
    clocks stop: on resume its deadline and bake are moved on by the time it was paused."""
    if r.pause and r.state == "running":
        r.state, r.paused_at = "paused", now
        r.note(now, f"paused in wave {r.wave + 1}")
    elif not r.pause and r.state == "paused":
        paused = now_dt - (_t(r.paused_at) or now_dt)
        wave = r.waves[r.wave]
        if wave.started is not None:
            wave.started = timestamps.format_time(timestamps.parse(wave.started) + paused)
        if wave.healthy_at is not None:
            wave.healthy_at = timestamps.format_time(timestamps.parse(wave.healthy_at) + paused)
        r.state, r.paused_at = "running", None
        r.note(now, f"resumed (paused {paused.total_seconds():.0f} s)")


def _stopped(r: Rollout, observed: dict[str, Observed], now: str) -> tuple[Rollout, list[Write]]:
    """After a failure: the rollback's first writes, or none (the writes of servers not
    yet changed in this step are dropped: they were never made)."""
    return _roll_back(r, observed, now) if r.state == "rolling_back" else (r, [])


def _roll_back(r: Rollout, observed: dict[str, Observed], now: str) -> tuple[Rollout, list[Write]]:
    """Writes returning each server the rollout changed to what it ran before, each only if
    it still runs what the rollout wrote; the rollout ends once none is left."""
    writes: list[Write] = []
    left = 0
    for s in r.servers.values():
        if s.phase not in WRITTEN:
            continue
        seen = observed.get(s.server)
        if seen is None or not seen.readable:
            left += 1
            continue
        if seen.desired == s.before:
            s.phase = "reverted"
        elif seen.desired != r.release:
            _leave(r, s, now, f"changed by someone else: it runs {short(seen.desired)}; not rolled back")
        else:
            left += 1
            writes.append(Write(s.server, "rollback" if s.before else "remove", s.before, r.release))
    if not writes and not left:
        _end(r, now, "aborted" if (r.reason or "").startswith("aborted") else "rolled_back")
    return r, writes


def applied(r: Rollout, write: Write, now_dt: datetime, *, record_id: str | None = None,
            current: str | None = None, refused: str | None = None) -> None:
    """Record in `r` what `write` did: written (with its history record), found already
    there, or refused (`current` is what the server's file holds instead; `refused` why)."""
    now = timestamps.format_time(now_dt)
    s = r.servers[write.server]
    if record_id is not None:
        s.history.append(record_id)
    if refused is None or current == write.to:
        if write.action == "deploy":
            s.phase, s.changed_at = "changed", now
            r.note(now, f"{write.server}: {r.app} -> {r.release.rsplit(':', 1)[-1][:7]}")
        else:
            s.phase = "reverted"
            r.note(now, f"{write.server}: rolled back to {short(write.to)}")
        return
    _leave(r, s, now, refused)
