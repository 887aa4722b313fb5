"""The agent's converge step, with real dpkg into sandbox roots and real units.

The lifecycle runs against every store kind (local, fake-gcs-server, moto S3); the bad-input
cases run against the local store, where they are fastest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentpkgs import make_release, set_server_file
from push import status
from push.agent.agent import Agent, AgentOptions
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg
from push.agent.supervisor import SandboxSupervisor
from push.errors import StoreUnavailable
from push.store import Store
from push.store.local import LocalStore
from waiting import wait_for

SERVER = "s1"


class Sandbox:
    """A sandbox root with its supervisor and an agent; units are stopped by pid at the end."""

    def __init__(self, store: Store, root: Path, **options: object) -> None:
        self.store = store
        self.root = root
        self.supervisor = SandboxSupervisor(root, stop_timeout=3)
        opts = {"backoff": Backoff(base=60.0), **options}
        self.agent = Agent(store, AgentOptions(server=SERVER, root=root, **opts), self.supervisor)  # type: ignore[arg-type]
        self.dpkg = Dpkg(root)

    def step(self, reasons: list[str] | None = None) -> bool:
        return self.agent.step(reasons or ["start"])

    def installed(self) -> dict[str, str]:
        return {p.package: p.version for p in self.dpkg.installed().values() if p.ok}

    def report(self) -> status.AgentStatus:
        r = status.read(self.store, SERVER)
        assert r is not None
        return r

    def file(self, path: str) -> str:
        return (self.root / path).read_text()

    def running(self, app: str, timeout: float = 5.0) -> str:
        """'VERSION PORT' as written by the running service, waiting for it to (re)write it."""
        path = self.root / f"run/{app}/running"
        return wait_for(lambda: path.exists() and path.read_text().strip(), timeout, f"{app} to run")

    def pid(self, unit: str) -> int | None:
        return self.supervisor.pids().get(unit)

    def close(self) -> None:
        self.agent.close()  # its health workers
        self.supervisor.close(stop_units=True)


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def sandbox(local_store: Store, tmp_path: Path, sandboxes: list[Sandbox]) -> Sandbox:
    s = Sandbox(local_store, tmp_path / "root")
    sandboxes.append(s)
    return s


def _wait_new_run(sb: Sandbox, app: str, version: str) -> None:
    wait_for(lambda: sb.running(app).split()[0] == version, 5, f"{app} {version} to start")


def test_lifecycle_install_upgrade_rollback_remove(store: Store, tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    """Install, upgrade, roll back (a downgrade), remove: dpkg, units and the report agree."""
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2)
    w1 = make_release(store, tmp_path, "web", 1)
    sb = Sandbox(store, tmp_path / "root")
    sandboxes.append(sb)
    (tmp_path / "root/etc/default").mkdir(parents=True)
    (tmp_path / "root/etc/default/web").write_text("# per-server settings\nPORT=8123\n")

    set_server_file(store, SERVER, [h1.name, w1.name, "later/"])
    assert sb.step() is True
    assert sb.installed() == {"push-hello": "1.1", "push-web": "1.1"}
    assert sb.running("hello") == "1.1 none"
    assert sb.running("web") == "1.1 8123"  # EnvironmentFile inside the root
    rep = sb.report()
    assert rep.in_sync and rep.error is None and rep.agent_version
    assert rep.apps["hello"].installed == h1.name == rep.apps["hello"].desired
    assert rep.apps["hello"].units == {"hello.service": "active"}
    assert rep.apps["web"].version == "1.1"
    assert rep.apps["later"].desired is None and rep.apps["later"].installed is None
    assert not list((sb.agent.downloads).iterdir())  # temp files are always deleted

    # Upgrade: the unit is restarted on the new version.
    old_pid = sb.pid("hello.service")
    set_server_file(store, SERVER, [h2.name, w1.name])
    assert sb.step() is True
    assert sb.installed()["push-hello"] == "1.2"
    _wait_new_run(sb, "hello", "1.2")
    assert sb.pid("hello.service") != old_pid
    assert sb.report().apps["hello"].installed == h2.name

    # Rollback is a downgrade, and allowed.
    set_server_file(store, SERVER, [h1.name, w1.name])
    assert sb.step() is True
    assert sb.installed()["push-hello"] == "1.1"
    assert sb.file("usr/local/share/hello/VERSION") == "1.1\n"
    _wait_new_run(sb, "hello", "1.1")
    assert sb.report().apps["hello"].installed == h1.name

    # An app the file stops mentioning is left running, reported unmanaged (removal is explicit).
    web_pid = sb.pid("web.service")
    set_server_file(store, SERVER, [h1.name])
    assert sb.step() is False  # not in sync: something runs that the file does not mention
    assert sb.installed() == {"push-hello": "1.1", "push-web": "1.1"}
    assert web_pid is not None and _alive(web_pid)
    assert sb.report().apps["web"].state == "unmanaged" and sb.report().apps["web"].installed == w1.name

    # Removal: "web/" in the file; its package and units go.
    set_server_file(store, SERVER, [h1.name, "web/"])
    assert sb.step() is True
    assert sb.installed() == {"push-hello": "1.1"}
    assert not (tmp_path / "root/usr/local/bin/web").exists()
    assert not _alive(web_pid)
    assert sb.report().apps["web"].installed is None and sb.report().apps["web"].state == "ok"
    assert subprocess.run(["dpkg", f"--root={tmp_path / 'root'}", "--audit"], capture_output=True,
                          text=True).stdout == ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_packages_push_did_not_install_are_left_alone(sandbox: Sandbox, tmp_path: Path) -> None:
    from agentpkgs import build_deb

    foreign = build_deb(tmp_path, "foreign", "9.0", package="foreign-tool", with_unit=False)
    Dpkg(sandbox.root).prepare()
    Dpkg(sandbox.root).install(foreign)
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    set_server_file(sandbox.store, SERVER, ["hello/"])
    assert sandbox.step()
    assert sandbox.installed() == {"foreign-tool": "9.0"}


def test_placeholders_are_skipped_and_fetch_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    set_server_file(sandbox.store, SERVER, ["hello/", "web/"])
    assert sandbox.step() is True
    assert sandbox.installed() == {}
    assert set(sandbox.report().apps) == {"hello", "web"}


class CountingStore(Store):
    """A store that counts what is downloaded, and can be made unreachable."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.lists_metadata = inner.lists_metadata
        self.downloaded: list[str] = []
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"cannot reach {self.url}: connection refused")

    def stat(self, key):  # type: ignore[no-untyped-def]
        self._check()
        return self.inner.stat(key)

    def open(self, key):  # type: ignore[no-untyped-def]
        self._check()
        self.downloaded.append(key)
        return self.inner.open(key)

    def put(self, key, data, metadata=None, **kw):  # type: ignore[no-untyped-def]
        self._check()
        return self.inner.put(key, data, metadata, **kw)

    def list_page(self, prefix, token=None, page_size=1000, start_after=None):  # type: ignore[no-untyped-def]
        self._check()
        return self.inner.list_page(prefix, token, page_size, start_after)

    def delete(self, key, **kw):  # type: ignore[no-untyped-def]
        self._check()
        return self.inner.delete(key, **kw)


def test_idle_steps_download_nothing(local_store: Store, tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    counting = CountingStore(local_store)
    h1 = make_release(local_store, tmp_path, "hello", 1)
    set_server_file(local_store, SERVER, [h1.name])
    sb = Sandbox(counting, tmp_path / "root")
    sandboxes.append(sb)
    assert sb.step()
    assert counting.downloaded == [f"server/{SERVER}.json", h1.release.key]
    counting.downloaded.clear()
    for _ in range(5):
        assert sb.step()
    assert counting.downloaded == []  # conditional reads only


def test_tampered_package_is_refused_and_the_old_one_keeps_running(sandbox: Sandbox, tmp_path: Path) -> None:
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    bad = make_release(sandbox.store, tmp_path, "hello", 2, tamper=True)
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    pid = sandbox.pid("hello.service")
    set_server_file(sandbox.store, SERVER, [bad.name])
    assert sandbox.step() is False
    assert sandbox.installed() == {"push-hello": "1.1"}
    assert sandbox.pid("hello.service") == pid and pid is not None and _alive(pid)
    app = sandbox.report().apps["hello"]
    assert app.state == "failed" and app.installed == h1.name and app.desired == bad.name
    assert "sha256" in (app.error or "") and "refusing" in (app.error or "")
    assert app.attempts == 1 and app.next_retry
    assert not list(sandbox.agent.downloads.iterdir())


def test_failing_postinst_rolls_back_with_dpkg_error_text(sandbox: Sandbox, tmp_path: Path) -> None:
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    bad = make_release(sandbox.store, tmp_path, "hello", 2,
                       postinst_extra='echo "database migration exploded" >&2; exit 3')
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    pid = sandbox.pid("hello.service")
    set_server_file(sandbox.store, SERVER, [bad.name])
    assert sandbox.step() is False
    # What ran before runs still: same package version, same process, files of 1.1.
    assert sandbox.installed() == {"push-hello": "1.1"}
    assert sandbox.file("usr/local/share/hello/VERSION") == "1.1\n"
    assert sandbox.pid("hello.service") == pid
    app = sandbox.report().apps["hello"]
    assert app.state == "failed"
    assert "database migration exploded" in (app.error or "")  # dpkg's own error text
    assert "rolled back to " + h1.name in (app.error or "")
    assert Dpkg(sandbox.root).audit() == ""


def test_failing_postinst_on_first_install_leaves_nothing_half_installed(sandbox: Sandbox, tmp_path: Path) -> None:
    bad = make_release(sandbox.store, tmp_path, "hello", 1, postinst_extra="exit 1")
    set_server_file(sandbox.store, SERVER, [bad.name])
    assert sandbox.step() is False
    assert Dpkg(sandbox.root).installed() == {} or all(
        not p.present for p in Dpkg(sandbox.root).installed().values())
    rep = sandbox.report()
    assert rep.apps["hello"].installed is None and rep.apps["hello"].state == "failed"
    assert "post-installation" in (rep.apps["hello"].error or "")


def test_one_failing_release_does_not_block_the_others_and_backs_off(sandbox: Sandbox, tmp_path: Path) -> None:
    missing = make_release(sandbox.store, tmp_path, "ghost", 1)
    sandbox.store.delete(missing.release.key)
    w1 = make_release(sandbox.store, tmp_path, "web", 1)
    set_server_file(sandbox.store, SERVER, [missing.name, w1.name])
    assert sandbox.step() is False
    assert sandbox.installed() == {"push-web": "1.1"}
    ghost = sandbox.report().apps["ghost"]
    assert "not in" in (ghost.error or "") and ghost.attempts == 1
    # Backing off: the next steps do not retry it ...
    sandbox.step()
    sandbox.step()
    assert sandbox.report().apps["ghost"].attempts == 1
    assert sandbox.agent.next_retry_in() is not None and sandbox.agent.next_retry_in() > 30
    # ... until the retry is due.
    _due_now(sandbox.agent, "ghost")
    sandbox.step()
    assert sandbox.agent.failures.apps["ghost"].attempts == 2


def _due_now(agent: Agent, app: str) -> None:
    """Make the failure of `app` due for a retry now, as if its backoff had passed."""
    agent.failures.apps[app] = dataclasses.replace(agent.failures.apps[app], retry_at=0)


def test_a_release_that_never_installed_taken_off_the_file_is_forgotten(sandbox: Sandbox, tmp_path: Path) -> None:
    bad = make_release(sandbox.store, tmp_path, "hello", 1, tamper=True)
    set_server_file(sandbox.store, SERVER, [bad.name])
    assert sandbox.step() is False
    set_server_file(sandbox.store, SERVER, [])
    assert sandbox.step() is True
    assert "hello" not in sandbox.report().apps and sandbox.installed() == {}
    assert "hello" not in json.loads((sandbox.root / "var/lib/pulld/state.json").read_text())["apps"]


def test_malformed_server_file_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    sandbox.store.put(f"server/{SERVER}.json", b'["hello/not a release"')
    assert sandbox.step() is False
    rep = sandbox.report()
    assert "not valid JSON" in (rep.error or "")
    assert sandbox.installed() == {"push-hello": "1.1"}
    assert rep.apps["hello"].installed == h1.name
    for bad in ([h1.name, h1.name], ["no-such-format"], {"a": 1}):
        sandbox.store.put(f"server/{SERVER}.json", json.dumps(bad).encode())
        assert sandbox.step() is False
        assert sandbox.installed() == {"push-hello": "1.1"}
        assert sandbox.report().error


def test_missing_server_file_removes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    sandbox.store.delete(f"server/{SERVER}.json")
    assert sandbox.step() is False
    assert sandbox.installed() == {"push-hello": "1.1"}
    assert "no server file" in (sandbox.report().error or "")


def test_unreachable_store_changes_nothing_and_backs_off(local_store: Store, tmp_path: Path,
                                                         sandboxes: list[Sandbox]) -> None:
    counting = CountingStore(local_store)
    h1 = make_release(local_store, tmp_path, "hello", 1)
    h2 = make_release(local_store, tmp_path, "hello", 2)
    set_server_file(local_store, SERVER, [h1.name])
    sb = Sandbox(counting, tmp_path / "root")
    sandboxes.append(sb)
    assert sb.step()
    counting.down = True
    set_server_file(local_store, SERVER, [h2.name])
    sb.agent.failures.fail("other", "other/x", "an app failure whose retry is due")
    _due_now(sb.agent, "other")
    assert sb.step() is False
    assert sb.installed() == {"push-hello": "1.1"}
    assert "connection refused" in (sb.agent.failures.step.error if sb.agent.failures.step else "")
    # Only the step's own backoff counts while the store is down: no busy loop on app retries.
    assert (sb.agent.next_retry_in() or 0) > 30
    assert sb.running("hello") == "1.1 none"
    counting.down = False
    assert sb.step() is True
    assert sb.installed() == {"push-hello": "1.2"}


def test_store_failing_mid_download_is_retried(local_store: Store, tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    class Flaky(CountingStore):
        def open(self, key):  # type: ignore[no-untyped-def]
            if key.startswith("debs/") and self.debs_down:
                raise StoreUnavailable("connection reset by peer")
            return super().open(key)

        debs_down = False

    flaky = Flaky(local_store)
    h1 = make_release(local_store, tmp_path, "hello", 1)
    set_server_file(local_store, SERVER, [h1.name])
    sb = Sandbox(flaky, tmp_path / "root", backoff=Backoff(base=0.01, jitter=0))
    sandboxes.append(sb)
    flaky.debs_down = True
    assert sb.step() is False
    assert "connection reset" in (sb.report().apps["hello"].error or "")
    flaky.debs_down = False
    wait_for(lambda: sb.agent.next_retry_in() == 0, what="the retry to be due")
    assert sb.step() is True


def test_full_disk_is_reported(local_store: Store, tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    state = tmp_path / "small-state"
    state.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        big = make_release(local_store, tmp_path, "big", 1, payload_size=6 * 1024 * 1024, compression="none")
        set_server_file(local_store, SERVER, [big.name])
        sb = Sandbox(local_store, tmp_path / "root", state_dir=state)
        sandboxes.append(sb)
        assert sb.step() is False
        err = sb.report().apps["big"].error or ""
        assert "space" in err
        assert sb.installed() == {}
        assert not list((state / "downloads").iterdir())
        # Free space check off: the write itself hits ENOSPC, and is reported the same way.
        import push.agent.download as download_mod

        margin = download_mod.FREE_MARGIN
        download_mod.FREE_MARGIN = -10**12
        try:
            sb.agent.failures.apps.clear()
            assert sb.step() is False
            assert "no space left" in (sb.report().apps["big"].error or "")
            assert not list((state / "downloads").iterdir())
        finally:
            download_mod.FREE_MARGIN = margin
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_missing_dependency_is_a_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    ok = make_release(sandbox.store, tmp_path, "needy", 1, depends="dpkg (>= 1.0), libc6 | musl")
    bad = make_release(sandbox.store, tmp_path, "broken", 1, depends="no-such-package-push-test (>= 2)")
    set_server_file(sandbox.store, SERVER, [ok.name, bad.name])
    assert sandbox.step() is False
    assert sandbox.installed() == {"push-needy": "1.1"}
    err = sandbox.report().apps["broken"].error or ""
    assert "no-such-package-push-test (>= 2)" in err and "not installed" in err


def test_release_without_package_metadata_reads_the_deb(sandbox: Sandbox, tmp_path: Path) -> None:
    """Releases from the original tools carry no sha256/package/version: read the .deb's control."""
    old = make_release(sandbox.store, tmp_path, "legacy", 1, legacy=True, package="skia-legacy", version="1.0")
    set_server_file(sandbox.store, SERVER, [old.name])
    assert sandbox.step() is True
    assert sandbox.installed() == {"skia-legacy": "1.0"}
    assert sandbox.report().apps["legacy"].installed == old.name
    # Every original build had version 1.0: the record tells releases apart.
    new = make_release(sandbox.store, tmp_path, "legacy", 2, legacy=True, package="skia-legacy", version="1.0")
    set_server_file(sandbox.store, SERVER, [new.name])
    assert sandbox.step() is True
    assert sandbox.report().apps["legacy"].installed == new.name
    steps_downloads = sandbox.agent.metrics.download_bytes._value.get()
    assert sandbox.step() is True
    assert sandbox.agent.metrics.download_bytes._value.get() == steps_downloads


def test_renamed_package_replaces_the_old_one(sandbox: Sandbox, tmp_path: Path) -> None:
    old = make_release(sandbox.store, tmp_path, "app", 1, package="skia-app", version="1.0", legacy=True)
    new = make_release(sandbox.store, tmp_path, "app", 2)
    set_server_file(sandbox.store, SERVER, [old.name])
    assert sandbox.step()
    set_server_file(sandbox.store, SERVER, [new.name])
    assert sandbox.step()
    assert sandbox.installed() == {"push-app": "1.2"}


def test_self_update_is_installed_last_and_asks_for_a_restart(sandbox: Sandbox, tmp_path: Path) -> None:
    p1 = make_release(sandbox.store, tmp_path, "pulld", 1)
    a1 = make_release(sandbox.store, tmp_path, "aaa", 1)
    z1 = make_release(sandbox.store, tmp_path, "zzz", 1)
    set_server_file(sandbox.store, SERVER, [p1.name, z1.name, a1.name])
    assert sandbox.step() is True
    assert sandbox.agent.restart_requested
    log = (sandbox.root / "var/log/dpkg.log").read_text()
    order = [line.split()[3] for line in log.splitlines() if " install " in line]
    assert order == ["push-aaa:all", "push-zzz:all", "push-pulld:all"]
    # Its own unit is not restarted by the agent (that would kill the step): it re-executes.
    assert "pulld.service" not in sandbox.supervisor.pids()
    assert sandbox.report().in_sync


def test_unit_that_cannot_start_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    rel = make_release(sandbox.store, tmp_path, "crashy", 1, script="#!/bin/sh\necho crashing\nexit 7\n")
    set_server_file(sandbox.store, SERVER, [rel.name])
    sandbox.step()
    sandbox.agent.publisher.interval = 0  # publish every step

    def failed() -> bool:
        sandbox.step()
        return sandbox.report().apps["crashy"].units.get("crashy.service") == "failed"

    wait_for(failed, timeout=10, what="the unit to fail", interval=0.2)
    assert sandbox.report().apps["crashy"].units == {"crashy.service": "failed"}
    assert "crashing" in (sandbox.root / "var/log/push-units/crashy.service.log").read_text()


def test_reports_are_published_on_change_and_as_heartbeat(sandbox: Sandbox, tmp_path: Path) -> None:
    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    sandbox.step()
    # Its health is judged from the step on: once the first look at it is in, a step reports it.
    wait_for(lambda: sandbox.agent.judge.verdicts()["hello"].probes, 5, "hello's first health probe")
    sandbox.step()
    first = sandbox.report()
    sandbox.step()
    assert sandbox.report().time == first.time  # nothing new, heartbeat not due
    sandbox.agent.publisher.interval = 0
    sandbox.step()
    assert sandbox.report().time != first.time and sandbox.report().step == 4


def test_state_directory_is_locked(tmp_path: Path) -> None:
    from push.agent.state import StateLock
    from push.errors import PushError

    lock = StateLock(tmp_path)
    with pytest.raises(PushError, match="another pulld"):
        StateLock(tmp_path)
    lock.release()
    StateLock(tmp_path).release()


def test_metrics_count_steps_and_installs(sandbox: Sandbox, tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    sandbox.step()
    text = generate_latest(sandbox.agent.metrics.registry).decode()
    assert 'pulld_installs_total{app="hello",result="ok"} 1.0' in text
    assert "pulld_in_sync 1.0" in text
    assert 'pulld_unit_active{unit="hello.service"} 1.0' in text
    assert os.path.getsize(sandbox.root / "var/lib/pulld/state.json") > 0


def test_unit_requests_are_carried_out_and_answered(sandbox: Sandbox, tmp_path: Path) -> None:
    from push import unitrequests

    h1 = make_release(sandbox.store, tmp_path, "hello", 1)
    set_server_file(sandbox.store, SERVER, [h1.name])
    assert sandbox.step()
    pid = sandbox.pid("hello.service")
    restart = unitrequests.create(sandbox.store, SERVER, "hello", "hello.service", "restart", "alice@example.com")
    foreign = unitrequests.create(sandbox.store, SERVER, "hello", "sshd.service", "stop", "mallory@example.com")
    expired = unitrequests.create(sandbox.store, SERVER, "hello", "hello.service", "stop", "bob@example.com", ttl=-1)
    sandbox.step(["poll"])  # a plain poll soon after the last look does not list requests/
    assert unitrequests.pending(sandbox.store, SERVER)
    sandbox.step(["watch"])  # a trigger does
    done = {r.id: r for r in unitrequests.list_requests(sandbox.store, SERVER)}
    assert done[restart.id].state == "done" and done[restart.id].done_by
    assert done[foreign.id].state == "refused" and "not a unit" in (done[foreign.id].result or "")
    assert done[expired.id].state == "expired"
    assert sandbox.pid("hello.service") not in (None, pid)
    stop = unitrequests.create(sandbox.store, SERVER, "hello", "hello.service", "stop", "alice@example.com")
    sandbox.step(["watch"])
    assert {r.id: r for r in unitrequests.list_requests(sandbox.store, SERVER)}[stop.id].state == "done"
    assert sandbox.supervisor.states(["hello.service"]) == {"hello.service": "inactive"}
    assert sandbox.report().apps["hello"].units == {"hello.service": "inactive"}


def test_a_damaged_record_does_not_stop_the_agent(local_store: Store, tmp_path: Path,
                                                  sandboxes: list[Sandbox]) -> None:
    h1 = make_release(local_store, tmp_path, "hello", 1)
    set_server_file(local_store, SERVER, [h1.name])
    state = tmp_path / "root/var/lib/pulld"
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"apps": {"hello": ')
    sb = Sandbox(local_store, tmp_path / "root")
    sandboxes.append(sb)
    assert sb.step() is True
    assert (state / "state.json.broken").exists()
    assert json.loads((state / "state.json").read_text())["apps"]["hello"]["release"] == h1.name
