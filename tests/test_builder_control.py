"""Package names, versions, dependencies and maintainer scripts of releases."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from push.builder import BuildError
from push.builder.control import Units, maintainer_scripts, package_name, parse_depends, version_for

HASH_A = "a" * 40
HASH_B = "0" * 40


def dpkg_says(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


def test_package_names() -> None:
    assert package_name("hello") == "push-hello"
    assert package_name("my.app+2") == "push-my.app+2"
    assert package_name("hello", "") == "hello"
    assert package_name("hello", "acme-") == "acme-hello"
    for bad in ("Hello", "hello_world"):
        with pytest.raises(BuildError, match="lowercase"):
            package_name(bad)


def test_versions_order_by_build_time_in_dpkg() -> None:
    t = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert version_for(t, HASH_A) == "1.20260301.120000.000000+gaaaaaaa"
    later = [t + timedelta(microseconds=1), t + timedelta(seconds=1), t + timedelta(hours=13), t + timedelta(days=400)]
    for newer in later:
        # A later build is newer whatever its commit hash.
        assert dpkg_says(version_for(newer, HASH_B), "gt", version_for(t, HASH_A))
    # Times in other zones are the same instant.
    assert version_for(t.astimezone(timezone(timedelta(hours=-5))), HASH_A) == version_for(t, HASH_A)


def test_depends_keeps_versions_and_alternatives() -> None:
    assert parse_depends(["python3 (>= 3.11), libc6 | musl", "adduser", "python3 (>= 3.11)"]) == [
        "python3 (>= 3.11)", "libc6 | musl", "adduser"]
    assert parse_depends(["foo:any (<<2:1.0~rc1-3)", " bar|baz ( = 1.2 ) "]) == [
        "foo:any (<< 2:1.0~rc1-3)", "bar | baz (= 1.2)"]
    for bad in ["Foo", "foo (>= )", "foo (~ 1)", "foo (>= 1) bar", "foo | ", "foo (>= x1)"]:
        with pytest.raises(BuildError, match="bad dependency"):
            parse_depends([bad])


def test_no_units_no_scripts() -> None:
    assert maintainer_scripts(Units()) == {}


def test_scripts_leave_templates_and_activated_services_alone() -> None:
    units = Units(shipped=("web.service", "web.socket", "job.service", "job.timer", "worker@.service"),
                  installable=("web.socket", "job.timer", "worker@.service"))
    scripts = maintainer_scripts(units)
    postinst = scripts["postinst"]
    assert "systemctl enable web.socket job.timer\n" in postinst
    # The socket and the timer start their services; a template has no instance to start.
    assert "systemctl restart web.socket job.timer\n" in postinst
    assert "systemctl stop web.service web.socket job.service job.timer || true" in scripts["prerm"]
    for text in scripts.values():
        assert text.startswith("#!/bin/sh\n")
        assert '[ -z "${DPKG_ROOT:-}" ]' in text


def test_a_program_that_replaces_itself_is_started_not_restarted() -> None:
    postinst = maintainer_scripts(Units(shipped=("pulld.service",), restart=False))["postinst"]
    assert "systemctl start pulld.service\n" in postinst
    assert "restart" not in postinst


def test_python_bytecode_is_made_on_install_and_removed_before_removal() -> None:
    scripts = maintainer_scripts(Units(), ["/usr/lib/push-pulld"])
    assert "python3 -m compileall -q /usr/lib/push-pulld" in scripts["postinst"]
    assert "__pycache__" in scripts["prerm"]
    assert "postrm" not in scripts
