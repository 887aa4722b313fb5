"""Made-up inputs for push.agent.plan and push.agent.report: releases, metadata, dpkg rows,
records and failures, so their tests need no dpkg and no store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from push.agent.dpkg import InstalledPackage
from push.agent.failures import Failure
from push.agent.plan import Plan, plan
from push.agent.state import AgentState, AppRecord
from push.release import Release, ReleaseInfo
from push.serverfile import ServerFile

NOW = 1000.0  # the clock of the plan (time.monotonic() in the agent)


def rel(app: str, n: int) -> Release:
    """Release n of `app`: a later n is a later build."""
    return Release(app, "alice", "build", datetime(2026, 1, n, tzinfo=timezone.utc), f"{n:040x}")


def meta(r: Release, package: str | None = "", version: str | None = "") -> ReleaseInfo:
    """Its metadata as `push release` writes it: Debian package push-APP, version 1.N.
    None leaves a field out (releases of the original tools have neither)."""
    extra = {}
    if package is not None:
        extra["package"] = package or f"push-{r.app}"
    if version is not None:
        extra["version"] = version or f"1.{r.time.day}"
    return ReleaseInfo(r, extra=extra)


def ii(package: str, version: str, status: str = "ii ") -> InstalledPackage:
    return InstalledPackage(package, version, status)


def installed_by_push(r: Release, package: str | None = None, version: str | None = None) -> AppRecord:
    """The record after Push installed `r`."""
    package = package or f"push-{r.app}"
    return AppRecord(packages=[package], release=r.name, package=package, version=version or f"1.{r.time.day}")


def decide(entries: list[str] | None, *, installed: Sequence[InstalledPackage] = (),
           record: Mapping[str, AppRecord] | None = None, debs: Mapping[str, list[str]] | None = None,
           metadata: Sequence[ReleaseInfo] = (), failures: Mapping[str, Failure] | None = None,
           self_app: str = "pulld") -> Plan:
    """The plan for a server file of `entries` (None: no server file) and these inputs, at NOW."""
    server_file = ServerFile("s1", tuple(entries)) if entries is not None else None
    state = AgentState(Path("/nonexistent/state.json"), apps=dict(record or {}), debs=dict(debs or {}))
    return plan(server_file, installed={p.package: p for p in installed}, record=state,
                metadata={i.name: i for i in metadata}, failures=dict(failures or {}), now=NOW, self_app=self_app)


def failure(r: Release | None, *, attempts: int = 1, due_in: float = 60.0, error: str = "boom") -> Failure:
    return Failure(r.name if r else None, error, attempts, "2026-01-01T00:00:00.000000Z", NOW + due_in,
                   "2026-01-01T00:01:00.000000Z")


h1, h2, h3 = rel("hello", 1), rel("hello", 2), rel("hello", 3)
w1 = rel("web", 1)
