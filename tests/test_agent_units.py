"""The agent's edges one at a time: Depends parsing and apt-get, the sandbox supervisor,
systemctl, backoff and the trigger plumbing."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from push.agent.backoff import Backoff
from push.agent.dpkg import DebFields, Dpkg, parse_depends
from push.agent.errors import DependencyMissing, UnitError
from push.agent.services import SystemdManager
from push.agent.supervisor import SandboxSupervisor, parse_environment_file, parse_unit
from push.agent.triggers import Wakeup
from waiting import wait_for

# -- Depends and apt-get ---------------------------------------------------------------------


def test_parse_depends_handles_versions_alternatives_and_qualifiers() -> None:
    clauses = parse_depends("libc6 (>= 2.36), python3:any (>> 3.9) | pypy3,\n foo [amd64] <!nocheck>, bar (< 2)")
    assert [str(c) for c in clauses] == ["libc6 (>= 2.36)", "python3:any (>> 3.9) | pypy3", "foo", "bar (<= 2)"]
    assert clauses[1].alternatives[0].name == "python3"  # what dpkg-query knows it by
    assert parse_depends("") == []


def _fake_tool(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_real_root_installs_missing_depends_with_apt_get_satisfy(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    apt = _fake_tool(tmp_path / "apt-get", f'echo "$@" >> {calls}\nexit 0\n')
    d = Dpkg(None, apt_get=apt)
    fields = DebFields("push-x", "1.0", depends="dpkg, no-such-package-push-test (>= 2) | other-missing")
    assert d.ensure_depends(fields) is False
    assert calls.read_text().split("\n")[0] == (
        "-o DPkg::Lock::Timeout=120 satisfy -y -q --no-install-recommends "
        "no-such-package-push-test (>= 2) | other-missing")


def test_apt_get_failure_is_a_clear_error_with_its_words(tmp_path: Path) -> None:
    apt = _fake_tool(tmp_path / "apt-get", 'echo "E: Unable to locate package no-such-package-push-test" >&2\n'
                                           'exit 100\n')
    d = Dpkg(None, apt_get=apt)
    with pytest.raises(DependencyMissing, match="Unable to locate package no-such-package-push-test") as e:
        d.ensure_depends(DebFields("push-x", "1.0", depends="no-such-package-push-test"))
    assert "push-x 1.0" in str(e.value)


def test_satisfied_depends_need_nothing(tmp_path: Path) -> None:
    apt = _fake_tool(tmp_path / "apt-get", "exit 1\n")
    assert Dpkg(None, apt_get=apt).ensure_depends(DebFields("push-x", "1", depends="dpkg (>= 1.0)")) is False


# -- the sandbox supervisor ------------------------------------------------------------------


def test_parse_unit() -> None:
    unit = parse_unit("web.service", textwrap.dedent("""\
        [Unit]
        Description=web
        ExecStart=/not/this/one

        [Service]
        # comment
        Environment="GREETING=hello world" MODE=fast
        EnvironmentFile=-/etc/default/web
        EnvironmentFile=/etc/web.env
        ExecStart=-/usr/local/bin/web --port ${PORT} \\
            --verbose
        WorkingDirectory=/srv/web
        Restart=always
        RestartSec=250ms
        """))
    assert unit.exec_start == ["/usr/local/bin/web", "--port", "${PORT}", "--verbose"]
    assert unit.environment == {"GREETING": "hello world", "MODE": "fast"}
    assert unit.environment_files == [("/etc/default/web", True), ("/etc/web.env", False)]
    assert unit.working_directory == "/srv/web" and unit.restart == "always" and unit.restart_sec == 0.25


def test_parse_environment_file() -> None:
    assert parse_environment_file("# c\nPORT=8000\nexport NAME='a b'\nX=\"y\"\n\nbad line\n") == {
        "PORT": "8000", "NAME": "a b", "X": "y"}


def _write_unit(root: Path, name: str, body: str, script: str | None = None) -> None:
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system" / name).write_text(body)
    if script is not None:
        (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        exe = root / "usr/local/bin" / name.removesuffix(".service")
        exe.write_text(script)
        exe.chmod(0o755)


@pytest.fixture
def supervisors() -> Iterator[list[SandboxSupervisor]]:
    made: list[SandboxSupervisor] = []
    yield made
    for s in made:
        s.close(stop_units=True)


def test_supervisor_runs_a_unit_with_its_environment(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    _write_unit(root, "svc.service", "[Service]\nExecStart=/usr/local/bin/svc ${PORT}\n"
                                     "EnvironmentFile=/etc/default/svc\nEnvironment=NAME=x\n"
                                     "WorkingDirectory=/srv\n",
                "#!/bin/sh\necho \"$1 $NAME $PUSH_SANDBOX_ROOT $(pwd)\" > \"$PUSH_SANDBOX_ROOT/out\"\nexec sleep 60\n")
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/svc").write_text("PORT=9999\n")
    (root / "srv").mkdir()
    sup = SandboxSupervisor(root, stop_timeout=2)
    supervisors.append(sup)
    sup.restart(["svc.service"])
    wait_for(lambda: (root / "out").exists() and (root / "out").read_text().endswith("\n"), what="the unit's output")
    assert (root / "out").read_text().split() == ["9999", "x", str(root), str(root / "srv")]
    assert sup.states(["svc.service", "nope.service"]) == {"svc.service": "active", "nope.service": "not-found"}
    pid = sup.pids()["svc.service"]
    assert json.loads((root / "run/push-units/svc.service.pid").read_text())["pid"] == pid
    sup.stop(["svc.service"])
    assert sup.states(["svc.service"]) == {"svc.service": "inactive"}
    assert not (root / "run/push-units/svc.service.pid").exists()


def test_supervisor_sigkills_what_ignores_sigterm(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    _write_unit(root, "stubborn.service", "[Service]\nExecStart=/usr/local/bin/stubborn\n",
                "#!/bin/sh\ntrap '' TERM\ntouch \"$PUSH_SANDBOX_ROOT/ignoring\"\nwhile true; do sleep 0.05; done\n")
    sup = SandboxSupervisor(root, stop_timeout=0.3)
    supervisors.append(sup)
    sup.restart(["stubborn.service"])
    pid = sup.pids()["stubborn.service"]
    wait_for((root / "ignoring").exists, what="the unit to ignore SIGTERM")
    sup.stop(["stubborn.service"])
    assert not SandboxSupervisor._group_alive(pid)  # the whole group is gone, the shell's children too


def test_supervisor_restart_policy_and_start_limit(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    _write_unit(root, "flaky.service", "[Service]\nExecStart=/usr/local/bin/flaky\nRestart=on-failure\n"
                                       "RestartSec=10ms\n",
                "#!/bin/sh\necho run >> \"$PUSH_SANDBOX_ROOT/runs\"\nexit 1\n")
    _write_unit(root, "done.service", "[Service]\nExecStart=/usr/local/bin/done\nRestart=on-failure\n",
                "#!/bin/sh\nexit 0\n")
    sup = SandboxSupervisor(root, monitor_interval=0.02)
    supervisors.append(sup)
    sup.restart(["flaky.service", "done.service"])
    wait_for(lambda: sup.states(["flaky.service", "done.service"]) == {"flaky.service": "failed",
                                                                      "done.service": "inactive"},
             timeout=5, what="flaky to hit its start limit and done to exit")
    assert len((root / "runs").read_text().split()) == 5  # systemd's default start limit


def test_supervisor_unit_without_exec_is_an_error(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    _write_unit(root, "empty.service", "[Service]\nType=oneshot\n")
    sup = SandboxSupervisor(root)
    supervisors.append(sup)
    with pytest.raises(UnitError, match="no ExecStart"):
        sup.restart(["empty.service"])
    with pytest.raises(UnitError, match="not found"):
        sup.restart(["missing.service"])
    assert sup.states(["empty.service"]) == {"empty.service": "failed"}


def test_a_new_supervisor_adopts_running_units(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    _write_unit(root, "svc.service", "[Service]\nExecStart=/usr/local/bin/svc\n", "#!/bin/sh\nexec sleep 60\n")
    first = SandboxSupervisor(root)
    first.restart(["svc.service"])
    pid = first.pids()["svc.service"]
    first.detach()  # as after kill -9 or a re-exec: the unit keeps running
    second = SandboxSupervisor(root)
    supervisors.append(second)
    assert second.pids() == {"svc.service": pid}
    assert second.states(["svc.service"]) == {"svc.service": "active"}
    second.restart(["svc.service"])  # a restart stops the adopted process, then starts anew
    assert second.pids()["svc.service"] != pid
    os.kill(second.pids()["svc.service"], signal.SIGKILL)  # dies behind the supervisor's back
    wait_for(lambda: second.states(["svc.service"])["svc.service"] != "active", timeout=5, what="the kill to be seen")
    assert second.states(["svc.service"]) == {"svc.service": "failed"}


def test_stale_pid_files_are_not_adopted(tmp_path: Path, supervisors: list[SandboxSupervisor]) -> None:
    root = tmp_path / "root"
    (root / "run/push-units").mkdir(parents=True)
    (root / "run/push-units/old.service.pid").write_text(json.dumps({"pid": os.getpid(), "start": 1}))
    sup = SandboxSupervisor(root)
    supervisors.append(sup)
    assert sup.pids() == {}
    assert not (root / "run/push-units/old.service.pid").exists()


# -- systemctl -------------------------------------------------------------------------------


def test_systemd_manager_speaks_systemctl(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    systemctl = _fake_tool(tmp_path / "systemctl", textwrap.dedent(f"""\
        echo "$@" >> {calls}
        if [ "$1" = show ]; then
          printf 'Id=a.service\\nActiveState=active\\nLoadState=loaded\\n\\n'
          printf 'Id=b.service\\nActiveState=failed\\nLoadState=loaded\\n\\n'
          printf 'Id=c.service\\nActiveState=inactive\\nLoadState=not-found\\n'
        fi
        if [ "$1" = restart ] && [ "$2" = bad.service ]; then echo "Job for bad.service failed." >&2; exit 1; fi
        exit 0
        """))
    m = SystemdManager(systemctl=systemctl)
    m.reload()
    m.restart(["a.service"])
    assert m.states(["a.service", "b.service", "c.service"]) == {
        "a.service": "active", "b.service": "failed", "c.service": "not-found"}
    with pytest.raises(UnitError, match=r"Job for bad\.service failed"):
        m.restart(["bad.service"])
    m.disable(["a.service"])
    assert calls.read_text().splitlines() == [
        "daemon-reload", "enable --quiet a.service", "restart a.service",
        "show --property=Id,ActiveState,LoadState -- a.service b.service c.service",
        "enable --quiet bad.service", "restart bad.service", "disable --now --quiet a.service"]


# -- backoff and wake-ups --------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(base=1, cap=10, jitter=0.2)
    assert b.delay(0) == 0
    assert 0.8 <= b.delay(1) <= 1.2 and 1.6 <= b.delay(2) <= 2.4
    assert all(8 <= b.delay(n) <= 12 for n in range(5, 100))
    assert len({round(b.delay(3), 6) for _ in range(20)}) > 1


def test_wakeup_merges_a_burst() -> None:
    w = Wakeup()
    for _ in range(10):
        w.set("watch")
    w.set("gce-metadata")
    assert w.wait(0) == ["watch"] * 10 + ["gce-metadata"]
    t = time.monotonic()
    assert w.wait(0.05) == [] and time.monotonic() - t >= 0.04


def test_dpkg_sandbox_prepare_is_enough_for_dpkg(tmp_path: Path) -> None:
    d = Dpkg(tmp_path / "fresh")
    d.prepare()
    assert d.installed() == {} and d.audit() == ""
    proc = subprocess.run(["dpkg", f"--root={tmp_path / 'fresh'}", "--audit"], capture_output=True)
    assert proc.returncode == 0


def test_systemd_manager_does_not_restart_what_the_postinst_just_restarted(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    now_us = int(time.monotonic() * 1e6)
    systemctl = _fake_tool(tmp_path / "systemctl", textwrap.dedent(f"""\
        echo "$@" >> {calls}
        if [ "$1" = show ]; then
          printf 'Id=fresh.service\\nActiveState=active\\nActiveEnterTimestampMonotonic={now_us + 1000}\\n\\n'
          printf 'Id=old.service\\nActiveState=active\\nActiveEnterTimestampMonotonic={now_us - 10**9}\\n'
        fi
        exit 0
        """))
    SystemdManager(systemctl=systemctl).restart(["fresh.service", "old.service"],
                                                unless_started_since=now_us / 1e6)
    assert calls.read_text().splitlines()[-1] == "restart old.service"


def test_gce_metadata_is_used_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from push.agent.main import _gce_host, build_parser

    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
    assert _gce_host("auto") is None  # no probing of 169.254.169.254 or metadata.google.internal
    assert _gce_host("on") == "metadata.google.internal"
    assert build_parser().parse_args(["--gce"]).gce_metadata == "on"
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1234")
    assert _gce_host("auto") == "127.0.0.1:1234" and _gce_host("on") == "127.0.0.1:1234"
    assert _gce_host("off") is None
