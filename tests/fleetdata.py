"""Test data for the fleet, history, server and CLI tests: releases, configs, agent reports."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from push import catalog, changes, config, status
from push.release import Release, ReleaseInfo

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

CONF = """
[servers.web-1]
appNames = ["hello", "pulld"]

[servers.web-2]
appNames = ["hello", "pulld"]

[servers.db-1]
appNames = ["pulld"]

[access]
view = ["viewer@example.com", "@example.org"]
deploy = ["deployer@example.com"]
admin = ["admin@example.com"]

[[tokens]]
name = "ci"
sha256 = "{ci}"
identity = "deployer@example.com"

[[tokens]]
name = "dash"
sha256 = "{dash}"
identity = "viewer@example.com"

[[tokens]]
name = "ops"
sha256 = "{ops}"
identity = "admin@example.com"
"""

TOKENS = {"ci": "ci-secret-token", "dash": "dash-secret-token", "ops": "ops-secret-token"}


def conf_text(extra: str = "") -> str:
    sha = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in TOKENS.items()}
    return CONF.format(**sha) + extra


def make_config(tmp_path, extra: str = "") -> config.Config:
    path = tmp_path / "skiapush.conf"
    path.write_text(conf_text(extra))
    return config.load(path)


def make_release(store, app: str, n: int, *, dirty: bool = False, note: str | None = None,
                 services: tuple[str, ...] | None = None, user: str = "alice") -> ReleaseInfo:
    """Release number `n` of `app` (later n = newer), published into `store`."""
    h = hashlib.sha1(f"{app}{n}".encode()).hexdigest()
    info = ReleaseInfo(Release(app, user, "build", T0 + timedelta(hours=n), h), dirty=dirty,
                       note=note if note is not None else f"{app} change {n}",
                       services=services if services is not None else (f"{app}.service",))
    catalog.publish(store, info, b"fake deb bytes")
    return info


def report(store, server: str, apps: dict[str, str | None], *, age: timedelta = timedelta(0),
           failed: dict[str, str] | None = None, units: dict[str, dict[str, str]] | None = None) -> None:
    """Write an agent report saying `server` has `apps` (app -> installed release) installed."""
    failed = failed or {}
    units = units or {}
    when = (datetime.now(timezone.utc) - age).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    st = status.AgentStatus(server=server, agent_version="test", time=when, hostname=server, in_sync=not failed)
    for app, installed in apps.items():
        st.apps[app] = status.AppStatus(
            desired=installed, installed=installed,
            state="failed" if app in failed else "ok", error=failed.get(app),
            units=units.get(app, {f"{app}.service": "active"} if installed else {}))
    status.write(store, st)
    changes.record(store, changes.STATUS, server)  # as pulld's publisher does: push servers see it at their next poll
