"""push.units: which files of a package are units, and which of them to start."""

from __future__ import annotations

from push.units import UNIT_SUFFIXES, is_template, unit_of_path, units_in, units_to_start


def test_units_in_package_files() -> None:
    files = ["/etc/systemd/system/a.service", "/lib/systemd/system/b.service", "/etc/systemd/system/t@.service",
             "/usr/lib/systemd/system/c.service", "/etc/systemd/system/x.d/override.conf", "/usr/bin/a",
             "/etc/systemd/system/c.timer"]
    assert units_in(files) == ["a.service", "b.service", "c.service", "c.timer"]
    # A timer-activated service is started by its timer, not directly.
    assert units_to_start(units_in(files)) == ["a.service", "b.service", "c.timer"]


def test_every_unit_type_a_package_can_ship_is_seen_by_builder_and_agent_alike() -> None:
    # The builder (relative paths in its staged tree) and pulld (dpkg's absolute paths)
    # once used different lists: a .target or .mount was started by the package's postinst
    # but invisible to the agent's reports and unit requests.
    for suffix in UNIT_SUFFIXES:
        assert unit_of_path(f"/lib/systemd/system/x{suffix}") == f"x{suffix}"
        assert unit_of_path(f"lib/systemd/system/x{suffix}") == f"x{suffix}"
    assert units_in(["/etc/systemd/system/data.mount", "/etc/systemd/system/app.target"]) == [
        "data.mount", "app.target"]
    assert unit_of_path("/etc/systemd/system/x.conf") is None
    assert unit_of_path("/etc/systemd/system/x.service.d/y.service") is None
    assert unit_of_path("/opt/systemd/system/x.service") is None


def test_templates_are_units_but_never_started() -> None:
    assert unit_of_path("/etc/systemd/system/w@.service") == "w@.service"
    assert is_template("w@.service") and not is_template("w@1.service")
    assert units_to_start(["w@.service", "web.service", "web.socket", "job.path", "job.service"]) == [
        "web.socket", "job.path"]
