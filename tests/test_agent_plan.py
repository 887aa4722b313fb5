"""push.agent.plan: what pulld decides for each app, from its inputs alone (no dpkg, no store)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from agentplans import NOW, decide, failure, h1, h2, h3, ii, installed_by_push, meta, rel, w1
from push.agent.plan import Action, installed_release
from push.agent.state import AgentState, AppRecord

# -- installing, upgrading, downgrading, leaving ------------------------------------------------


def test_a_new_release_is_installed() -> None:
    p = decide([h1.name], metadata=[meta(h1)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.attempt == 1 and not hello.retry
    assert hello.desired == h1 and hello.info == meta(h1) and hello.installed is None and hello.row is None
    assert "nothing installed" in hello.why
    assert p.changes == (hello,) and p.forget == frozenset()


def test_a_newer_release_is_an_upgrade() -> None:
    p = decide([h2.name], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
               metadata=[meta(h2)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.UPGRADE
    assert hello.installed == h1.name and hello.row == ii("push-hello", "1.1")
    assert hello.why == f"{h1.name} -> {h2.name}"


def test_an_older_release_is_a_downgrade_a_rollback() -> None:
    p = decide([h1.name], installed=[ii("push-hello", "1.3")], record={"hello": installed_by_push(h3)},
               metadata=[meta(h1)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.DOWNGRADE and "rollback" in hello.why
    assert hello.installed == h3.name


def test_the_release_installed_is_left_alone() -> None:
    p = decide([h1.name], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
               metadata=[meta(h1)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.why == "in sync"
    assert hello.installed == h1.name and hello.until is None
    assert p.changes == ()


def test_without_a_record_dpkg_and_the_metadata_tell_what_is_installed() -> None:
    """A record lost (or damaged and set aside): the release's own package and version say it."""
    p = decide([h1.name], installed=[ii("push-hello", "1.1")], metadata=[meta(h1)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.installed == h1.name


def test_a_record_of_an_older_agent_without_package_and_version() -> None:
    """Earlier agents recorded only the packages and the release; the metadata fills in."""
    old = AppRecord(packages=["push-hello"], release=h1.name)
    p = decide([h1.name], installed=[ii("push-hello", "1.1")], record={"hello": old}, metadata=[meta(h1)])
    assert p.get("hello").action is Action.LEAVE  # type: ignore[union-attr]
    p = decide([h2.name], installed=[ii("push-hello", "1.1")], record={"hello": old}, metadata=[meta(h2)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.row == ii("push-hello", "1.1")
    assert "no release Push installed" in hello.why


def test_the_record_tells_apart_releases_of_one_debian_version() -> None:
    """Every build of the original tools was version 1.0: the record knows which one runs."""
    a, b = rel("legacy", 1), rel("legacy", 2)
    rec = installed_by_push(a, "skia-legacy", "1.0")
    debs = {a.name: ["skia-legacy", "1.0"], b.name: ["skia-legacy", "1.0"]}
    installed = [ii("skia-legacy", "1.0")]
    same = decide([a.name], installed=installed, record={"legacy": rec}, debs=debs,
                  metadata=[meta(a, None, None)])
    assert same.get("legacy").action is Action.LEAVE  # type: ignore[union-attr]
    other = decide([b.name], installed=installed, record={"legacy": rec}, debs=debs, metadata=[meta(b, None, None)])
    legacy = other.get("legacy")
    assert legacy is not None and legacy.action is Action.UPGRADE and legacy.installed == a.name


def test_a_release_of_the_original_tools_without_package_metadata() -> None:
    """No package/version in its metadata and never downloaded: install it (its .deb says)."""
    old = rel("legacy", 1)
    p = decide([old.name], metadata=[meta(old, None, None)])
    legacy = p.get("legacy")
    assert legacy is not None and legacy.action is Action.INSTALL
    # Once its .deb was read, the package and version learnt from it identify it.
    p = decide([old.name], installed=[ii("skia-legacy", "1.0")], debs={old.name: ["skia-legacy", "1.0"]},
               metadata=[meta(old, None, None)])
    assert p.get("legacy").action is Action.LEAVE and p.get("legacy").installed == old.name  # type: ignore[union-attr]


def test_a_renamed_debian_package_is_an_upgrade_from_the_old_one() -> None:
    a, b = rel("app", 1), rel("app", 2)
    p = decide([b.name], installed=[ii("skia-app", "1.0")], record={"app": installed_by_push(a, "skia-app", "1.0")},
               metadata=[meta(b)])
    app = p.get("app")
    assert app is not None and app.action is Action.UPGRADE and app.installed == a.name
    assert app.row == ii("skia-app", "1.0")  # the executor purges it before installing push-app


def test_a_half_installed_package_is_installed_again() -> None:
    """A package dpkg left half-configured (a postinst killed with the agent) is not installed."""
    p = decide([h2.name], installed=[ii("push-hello", "1.2", "iF ")], record={"hello": installed_by_push(h1)},
               metadata=[meta(h2)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.installed is None
    assert hello.row == ii("push-hello", "1.2", "iF ") and "not fully installed (dpkg: iF)" in hello.why
    assert installed_release("hello", meta(h2), {"push-hello": ii("push-hello", "1.2", "iF ")},
                             AgentState(Path("x"))) == (None, ii("push-hello", "1.2", "iF "))


def test_a_package_push_did_not_install_is_replaced_only_by_a_release_of_the_app() -> None:
    p = decide([h1.name], installed=[ii("push-hello", "0.9"), ii("foreign-tool", "9.0")], metadata=[meta(h1)])
    assert [a.app for a in p] == ["hello"]  # foreign-tool is nobody's app
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.row == ii("push-hello", "0.9")


# -- placeholders and removals ----------------------------------------------------------------


def test_a_placeholder_chooses_nothing_and_needs_nothing() -> None:
    p = decide(["hello/", "web/"])
    assert [(a.app, a.action, a.placeholder) for a in p] == [("hello", Action.LEAVE, True), ("web", Action.LEAVE, True)]
    assert p.needs_metadata == () and p.changes == ()


def test_a_placeholder_removes_what_push_installed() -> None:
    """Removal is explicit: "hello/" means nothing of hello on this server."""
    p = decide(["hello/"], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)})
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.REMOVE and hello.placeholder and hello.installed == h1.name
    assert hello.why == "hello/ in the server file: removing push-hello"
    assert p.changes == (hello,)


def test_a_placeholder_of_an_app_push_never_installed_here_needs_nothing() -> None:
    """The original tools wrote "app/" for "nothing chosen": for an app never installed it
    still changes nothing, even with a foreign package of the same name around."""
    p = decide(["hello/"], installed=[ii("push-hello", "0.9")])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and p.changes == ()


def test_an_app_the_file_does_not_mention_is_left_running_unmanaged() -> None:
    """A file that lost an entry (deleted and recreated, a wrong bucket) never uninstalls."""
    p = decide([h2.name], installed=[ii("push-hello", "1.1"), ii("push-web", "1.1")],
               record={"hello": installed_by_push(h1), "web": installed_by_push(w1)}, metadata=[meta(h2)])
    web = p.get("web")
    assert web is not None and web.action is Action.LEAVE and web.unmanaged and not web.listed
    assert web.installed == w1.name and "unmanaged" in web.why
    assert [(a.app, a.action) for a in p.changes] == [("hello", Action.UPGRADE)]


def test_removals_come_first() -> None:
    p = decide([h2.name, "web/"], installed=[ii("push-hello", "1.1"), ii("push-web", "1.1")],
               record={"hello": installed_by_push(h1), "web": installed_by_push(w1)}, metadata=[meta(h2)])
    assert [(a.app, a.action) for a in p.changes] == [("web", Action.REMOVE), ("hello", Action.UPGRADE)]


def test_an_app_that_never_installed_is_forgotten_when_not_mentioned() -> None:
    p = decide([], record={"hello": AppRecord()})
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.REMOVE and "nothing of it installed" in hello.why


def test_without_a_server_file_everything_is_left() -> None:
    p = decide(None, installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
               failures={"hello": failure(h2)})
    assert not p.has_file and p.changes == () and p.forget == frozenset()
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.installed == h1.name


# -- failures and backoff ---------------------------------------------------------------------


def test_a_failed_release_backs_off_until_its_retry() -> None:
    p = decide([h1.name], metadata=[meta(h1)], failures={"hello": failure(h1, due_in=30)})
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.LEAVE and hello.until == NOW + 30
    assert "failed once; next try at" in hello.why
    assert p.changes == () and p.forget == frozenset()


def test_a_failed_release_is_retried_when_due() -> None:
    p = decide([h1.name], metadata=[meta(h1)], failures={"hello": failure(h1, attempts=3, due_in=0)})
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.attempt == 4 and hello.retry
    assert hello.why.startswith("retry 4: ")


def test_backing_off_without_metadata_reads_nothing() -> None:
    """A release whose metadata could not be read is not even stat'ed again until it is due."""
    backing_off = decide([h1.name], failures={"hello": failure(h1)})
    assert backing_off.needs_metadata == () and backing_off.get("hello").action is Action.LEAVE  # type: ignore[union-attr]
    due = decide([h1.name], failures={"hello": failure(h1, due_in=-1)})
    assert [a.app for a in due.needs_metadata] == ["hello"]


def test_failures_of_releases_no_longer_wanted_are_forgotten() -> None:
    p = decide([h2.name, "web/"], metadata=[meta(h2)],
               failures={"hello": failure(h1), "web": failure(w1), "db": failure(None)})
    assert p.forget == {"hello", "web", "db"}  # db: its removal failed, and the file no longer says "db/"
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.INSTALL and hello.attempt == 1  # a new release: no backoff


def test_a_failed_removal_of_an_app_listed_again_is_forgotten() -> None:
    p = decide([h1.name], metadata=[meta(h1)], failures={"hello": failure(None)})
    assert p.forget == {"hello"} and p.get("hello").action is Action.INSTALL  # type: ignore[union-attr]


def test_a_failed_removal_backs_off_then_is_retried() -> None:
    record = {"web": installed_by_push(w1)}
    backing_off = decide(["web/"], record=record, failures={"web": failure(None, attempts=2)})
    web = backing_off.get("web")
    assert web is not None and web.action is Action.LEAVE and web.why.startswith("removal failed 2 times")
    due = decide(["web/"], record=record, failures={"web": failure(None, attempts=2, due_in=-1)})
    assert due.get("web").action is Action.REMOVE and due.get("web").attempt == 3  # type: ignore[union-attr]


def test_the_failure_of_a_release_that_got_installed_is_over() -> None:
    """E.g. a killed agent's install that dpkg finished: the release runs, its failure goes."""
    p = decide([h1.name], installed=[ii("push-hello", "1.1")], record={"hello": installed_by_push(h1)},
               metadata=[meta(h1)], failures={"hello": failure(h1)})
    assert p.get("hello").action is Action.LEAVE and p.forget == {"hello"}  # type: ignore[union-attr]


# -- metadata, order, units -----------------------------------------------------------------


def test_missing_metadata_is_read_first() -> None:
    p = decide([h1.name, w1.name], metadata=[meta(w1)])
    hello = p.get("hello")
    assert hello is not None and hello.action is Action.METADATA and not hello.changes
    assert p.needs_metadata == (hello,) and [a.app for a in p.changes] == ["web"]


def test_pulld_is_installed_last() -> None:
    p1, a1, z1, old = rel("pulld", 1), rel("aaa", 1), rel("zzz", 1), rel("old", 1)
    p = decide([p1.name, z1.name, a1.name, "old/"], record={"old": installed_by_push(old)},
               installed=[ii("push-old", "1.1")], metadata=[meta(p1), meta(z1), meta(a1)])
    assert [a.app for a in p.changes] == ["old", "aaa", "zzz", "pulld"]
    assert [a.app for a in p] == ["pulld", "zzz", "aaa", "old"]  # the report keeps the file's order
    assert [a.app for a in decide([p1.name, a1.name], metadata=[meta(p1), meta(a1)], self_app="aaa").changes] == [
        "pulld", "aaa"]


def test_units_a_killed_agent_did_not_restart_are_restarted() -> None:
    rec = dataclasses.replace(installed_by_push(h1), units_pending=True)
    p = decide([h1.name], installed=[ii("push-hello", "1.1")], record={"hello": rec}, metadata=[meta(h1)])
    assert p.restart_units == ("hello",) and p.get("hello").action is Action.LEAVE  # type: ignore[union-attr]


# -- the plan is a value ----------------------------------------------------------------------


def test_the_plan_is_immutable_and_its_inputs_untouched() -> None:
    record = {"hello": installed_by_push(h1), "web": installed_by_push(w1)}
    failures = {"hello": failure(h1), "web": failure(None, due_in=-1)}
    before = copy.deepcopy((record, failures))
    p = decide([h2.name], installed=[ii("push-hello", "1.1")], record=record, metadata=[meta(h2)], failures=failures)
    assert (record, failures) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.get("hello").action = Action.LEAVE  # type: ignore[misc,union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.changes = ()  # type: ignore[misc]
    assert p == decide([h2.name], installed=[ii("push-hello", "1.1")], record=record, metadata=[meta(h2)],
                       failures=failures)  # the same inputs, the same plan


def test_summary_says_what_changes_and_why() -> None:
    p = decide([h1.name, "web/"], metadata=[meta(h1)])
    assert p.summary() == {"hello": f"install: nothing installed: installing {h1.name}"}
