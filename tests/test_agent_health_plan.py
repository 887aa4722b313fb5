"""push.agent.plan's health rule: revert what was not healthy in time, and do not retry it
until the server file changes (no dpkg, no store); and push.agent.report's health fields."""

from __future__ import annotations

import dataclasses

from agentplans import NOW, decide, failure, h1, h2, ii, installed_by_push, meta
from push.agent import report
from push.agent.judge import Verdict
from push.agent.plan import Action
from push.agent.state import AppRecord, Refusal
from push.health import Health


def after_upgrade(previous: str | None = h1.name) -> AppRecord:
    """The record once h2 is installed over h1."""
    return dataclasses.replace(installed_by_push(h2), previous=previous)


def verdict(health: Health, *, release: str = h2.name, final: bool = False, revert: bool = True,
            detail: str = "hello.service is failed, last exit 1") -> Verdict:
    return Verdict("hello", release, health, detail, final=final, revert=final and revert,
                   since="2026-01-02T00:00:00.000000Z", deadline=None if health is Health.HEALTHY else
                   "2026-01-02T00:00:30.000000Z")


def refused(generation: str | None = "g1") -> Refusal:
    return Refusal(h2.name, generation, "hello.service is failed", h1.name, "2026-01-02T00:00:31.000000Z")


H2_RUNS = {"installed": [ii("push-hello", "1.2")], "metadata": [meta(h2)]}
H1_RUNS = {"installed": [ii("push-hello", "1.1")], "metadata": [meta(h2)]}


def test_an_unhealthy_release_past_its_deadline_is_reverted_to_the_one_before() -> None:
    p = decide([h2.name], record={"hello": after_upgrade()}, health={"hello": verdict(Health.UNHEALTHY, final=True)},
               **H2_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.REVERT and hello.revert_to == h1.name
    assert hello.desired == h2 and hello.installed == h2.name and "not healthy" in hello.why
    assert p.changes == (hello,)


def test_progressing_or_healthy_is_left_alone() -> None:
    for v in (verdict(Health.PROGRESSING), verdict(Health.HEALTHY)):
        p = decide([h2.name], record={"hello": after_upgrade()}, health={"hello": v}, **H2_RUNS)  # type: ignore[arg-type]
        hello = p.get("hello")
        assert hello is not None and hello.action is Action.LEAVE and hello.verdict == v and p.changes == ()


def test_unhealthy_while_running_is_reported_never_reverted() -> None:
    """Healthy once, then failing: not final, so no revert."""
    v = dataclasses.replace(verdict(Health.UNHEALTHY), healthy_once=True)
    p = decide([h2.name], record={"hello": after_upgrade()}, health={"hello": v}, **H2_RUNS)  # type: ignore[arg-type]
    assert p.get("hello").action is Action.LEAVE  # type: ignore[union-attr]


def test_revert_false_leaves_it_installed() -> None:
    v = verdict(Health.UNHEALTHY, final=True, revert=False)
    p = decide([h2.name], record={"hello": after_upgrade()}, health={"hello": v}, **H2_RUNS)  # type: ignore[arg-type]
    assert p.get("hello").action is Action.LEAVE and p.changes == ()  # type: ignore[union-attr]


def test_a_first_install_has_nothing_to_revert_to() -> None:
    failed = verdict(Health.UNHEALTHY, final=True)
    p = decide([h2.name], record={"hello": after_upgrade(None)}, health={"hello": failed}, **H2_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and "no release ran before" in hello.why


def test_a_verdict_on_another_release_says_nothing() -> None:
    old = verdict(Health.UNHEALTHY, release=h1.name, final=True)
    p = decide([h2.name], record={"hello": after_upgrade()}, health={"hello": old}, **H2_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.verdict is None


def test_a_refused_release_is_not_retried_while_the_file_is_unchanged() -> None:
    rec = dataclasses.replace(installed_by_push(h1), previous=h2.name, refused=refused("g1"))
    p = decide([h2.name], record={"hello": rec}, generation="g1", **H1_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.refused == refused("g1")
    assert "not retried until the server file changes" in hello.why and p.forget_refusals == frozenset()


def test_a_refused_release_is_tried_again_once_the_file_changes() -> None:
    rec = dataclasses.replace(installed_by_push(h1), previous=h2.name, refused=refused("g1"))
    p = decide([h2.name], record={"hello": rec}, generation="g2", **H1_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.UPGRADE and hello.refused is None
    assert p.forget_refusals == frozenset({"hello"})


def test_a_revert_cut_short_is_finished() -> None:
    """Killed after recording the refusal, before h1 was back: the revert is carried out again."""
    rec = dataclasses.replace(after_upgrade(), refused=refused("g1"))
    p = decide([h2.name], record={"hello": rec}, **H2_RUNS)  # type: ignore[arg-type]
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.REVERT and hello.revert_to == h1.name


def test_a_failed_revert_backs_off_and_is_retried() -> None:
    rec = dataclasses.replace(after_upgrade(), refused=refused("g1"))
    waiting = decide([h2.name], record={"hello": rec}, failures={"hello": failure(h1)}, **H2_RUNS)  # type: ignore[arg-type]
    hello = waiting.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.until == NOW + 60
    assert waiting.forget == frozenset()  # the failure of the revert is kept
    due = decide([h2.name], record={"hello": rec}, failures={"hello": failure(h1, due_in=-1)}, **H2_RUNS)  # type: ignore[arg-type]
    hello = due.get("hello")
    assert hello is not None and hello.action is Action.REVERT and hello.attempt == 2


def _report(p):  # type: ignore[no-untyped-def]
    return report.build(p, server="s1", hostname="h", time="2026-01-02T00:01:00.000000Z", step=1, generation="g1",
                        failures={}, unit_errors={}, units={})


def test_the_report_of_a_refused_release() -> None:
    rec = dataclasses.replace(installed_by_push(h1), previous=h2.name, refused=refused("g1"))
    back = verdict(Health.HEALTHY, release=h1.name, detail="hello.service active for at least 5s")
    rep = _report(decide([h2.name], record={"hello": rec}, health={"hello": back}, **H1_RUNS))  # type: ignore[arg-type]
    hello = rep.apps["hello"]
    assert hello.health == "unhealthy" and hello.reverted_from == h2.name and hello.state == "failed"
    assert "hello.service is failed" in (hello.health_detail or "") and "now " + h1.name + " is healthy" in (
        hello.health_detail or "")
    assert hello.error == f"{h2.name} was not healthy: reverted to {h1.name}" and not rep.in_sync


def test_the_report_carries_the_verdict() -> None:
    v = verdict(Health.PROGRESSING, detail="hello.service is activating")
    rep = _report(decide([h2.name], record={"hello": after_upgrade()}, health={"hello": v}, **H2_RUNS))  # type: ignore[arg-type]
    hello = rep.apps["hello"]
    assert (hello.health, hello.health_detail, hello.health_since, hello.health_deadline) == (
        "progressing", "hello.service is activating", "2026-01-02T00:00:00.000000Z", "2026-01-02T00:00:30.000000Z")
    assert hello.state == "ok" and hello.reverted_from is None and rep.in_sync  # sync and health are apart
    nothing = _report(decide([h2.name], metadata=[meta(h2)])).apps["hello"]
    assert (nothing.health, nothing.health_detail) == ("unknown", "nothing installed")
