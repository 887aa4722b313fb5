"""Carrying out a plan on this server: downloads, dpkg and the service manager.

The `Executor` is the only part of the step that changes the system. It reads the release
metadata a plan asks for, removes the apps it says to remove, installs its releases (a
failed `dpkg -i` undone: what it left half-installed removed, the release that ran before
put back), and (re)starts their units. Every outcome is recorded: the agent's record of
what Push installed (`push.agent.state`), failures with their backoff (`push.agent.failures`).
It also answers what the system holds now (dpkg's packages, a package's units, their states)
for the agent's next plan and report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from push.agent import download
from push.agent.dpkg import Dpkg, InstalledPackage
from push.agent.errors import AgentError, DpkgError, DpkgLocked, UnitError, VerificationFailed
from push.agent.failures import Failures
from push.agent.metrics import Metrics
from push.agent.plan import Action, AppPlan, Plan, installed_release
from push.agent.services import ServiceManager
from push.agent.state import AgentState
from push.agent.trust import Trust
from push.errors import InvalidRelease, NotFound, PushError, Untrusted
from push.release import Release, ReleaseInfo
from push.store import Store
from push.units import units_in, units_to_start

log = logging.getLogger(__name__)


class Executor:
    """Carries out plans for one server (or one sandbox root)."""

    def __init__(self, store: Store, dpkg: Dpkg, services: ServiceManager, record: AgentState,
                 failures: Failures, *, downloads: Path, self_app: str, metrics: Metrics,
                 rate_limit: float | None = None, trust: Trust | None = None) -> None:
        self.store = store
        self.dpkg = dpkg
        self.services = services
        self.record = record
        self.failures = failures
        self.downloads = downloads
        self.self_app = self_app
        self.metrics = metrics
        self.rate_limit = rate_limit
        self.trust = trust                           # None: nothing verified (no keys)
        self.metadata: dict[str, ReleaseInfo] = {}   # by release name (releases are create-only)
        self.restart_requested = False               # pulld's own release was installed: re-exec
        self._installed: dict[str, InstalledPackage] | None = None
        self._fingerprint: tuple[int, int, int] | None = None
        self._units: dict[tuple[str, str], list[str]] = {}

    # -- what the system holds ----------------------------------------------------------------

    def installed(self) -> dict[str, InstalledPackage]:
        """What dpkg says, re-read only when its status file changed (an idle step costs a stat)."""
        fp = self.dpkg.status_fingerprint()
        if self._installed is None or fp is None or fp != self._fingerprint:
            self._installed = self.dpkg.installed()
            self._fingerprint = fp
        return self._installed

    def units_of(self, package: str, version: str) -> list[str]:
        key = (package, version)
        units = self._units.get(key)
        if units is None:
            units = self._units[key] = units_in(self.dpkg.files(package))
        return units

    def units_of_app(self, app: str, desired: Release | None) -> list[str]:
        """The units of what is installed for `app`, found as the report finds it (so also for a
        release installed by something else, such as pulld by the startup script); none if
        nothing is installed. `desired` is the app's release in the server file, if any."""
        info = self.metadata.get(desired.name) if desired is not None else None
        _, row = installed_release(app, info, self.installed(), self.record)
        return self.units_of(row.package, row.version) if row is not None and row.ok else []

    def unit_states(self, row: InstalledPackage) -> dict[str, str]:
        """unit -> state for a fully installed package (`{"?": "unknown: …"}` if unreadable)."""
        try:
            states = self.services.states(self.units_of(row.package, row.version))
        except PushError as e:
            return {"?": f"unknown: {e}"}
        for unit, state in states.items():
            self.metrics.units.labels(unit).set(1 if state == "active" else 0)
        return states

    def release_info(self, release: Release) -> ReleaseInfo:
        """A release's metadata (cached: releases are create-only)."""
        info = self.metadata.get(release.name)
        if info is None:
            try:
                obj = self.store.stat(release.key)
            except NotFound:
                raise NotFound(f"release {release.name} is not in {self.store.url}") from None
            info = self.metadata[release.name] = ReleaseInfo.from_metadata(obj.key, obj.metadata)
        return info

    # -- carrying a plan out ------------------------------------------------------------------

    def read_metadata(self, plan: Plan) -> None:
        """Read the metadata the plan lacks; a release whose metadata cannot be read fails."""
        for p in plan.needs_metadata:
            assert p.desired is not None
            try:
                self.release_info(p.desired)
            except (NotFound, InvalidRelease) as e:
                self.failures.fail(p.app, p.desired.name, str(e))
            except PushError as e:
                self.failures.fail(p.app, p.desired.name, f"cannot read release metadata: {e}")

    def carry_out(self, plan: Plan) -> None:
        """Removals, then installs (pulld's own last), then the units a killed agent left."""
        for p in plan.changes:
            if p.action is Action.REMOVE:
                self._remove_app(p)
            else:
                self._install(p)
        for app in plan.restart_units:
            rec = self.record.apps.get(app)
            row = self.installed().get(rec.package or "") if rec else None
            if rec and row is not None and row.ok and app != self.self_app:
                self._start_units(app, row.package, row.version)
            if rec is not None and rec.units_pending:
                rec.units_pending = False
                self.record.save()

    # -- installing ---------------------------------------------------------------------------

    def _install(self, p: AppPlan) -> None:
        app, rel, info = p.app, p.desired, p.info
        assert rel is not None and info is not None
        log.info("install start", extra={"event": "install.start", "app": app, "release": rel.name,
                                         "action": str(p.action), "why": p.why, "t": time.time()})
        rec = self.record.app(app)
        before = (rec.release, rec.package, rec.version)
        path: Path | None = None
        started = time.monotonic()
        try:
            path = self._fetch_verified(app, info, on_bytes=self.metrics.download_bytes.inc)
            fields = self.dpkg.deb_fields(path)
            for key, got in (("package", fields.package), ("version", fields.version)):
                want = info.extra.get(key)
                if want and want != got:
                    raise VerificationFailed(f"{rel.name}: the .deb's {key} is {got!r}, its metadata says {want!r}")
            self.record.debs[rel.name] = [fields.package, fields.version]
            force_depends = self.dpkg.ensure_depends(fields)
            rec.pending = {"release": rel.name, "package": fields.package, "version": fields.version}
            if fields.package not in rec.packages:
                rec.packages.append(fields.package)
            self.record.save()
            installed_at = time.monotonic()
            try:
                # An app whose Debian package was renamed: the old one goes first (both
                # usually ship the same files); a failure below puts its release back.
                for old in [pkg for pkg in rec.packages if pkg != fields.package]:
                    self._remove_package(old)
                self.dpkg.install(path, force_depends=force_depends)
            except DpkgError as e:
                rec.pending = None
                note = "" if isinstance(e, DpkgLocked) else self._undo_failed_install(app, fields.package, before)
                self.record.save()
                raise DpkgError(str(e) + note) from None
            rec.installed(rel.name, fields.package, fields.version)
            rec.pending = None
            rec.packages[:] = [fields.package]
            # Until its units are restarted: a crash in between restarts them at the next start.
            rec.units_pending = app != self.self_app
            self.record.save()
        except AgentError as e:
            self._install_failed(app, rel.name, str(e))
            return
        except Untrusted as e:  # not signed as the trusted keys require: what runs keeps running
            self._install_failed(app, rel.name, f"untrusted ({e.reason}): {e}")
            return
        except PushError as e:
            self._install_failed(app, rel.name, f"download failed: {e}")
            return
        except OSError as e:  # the download or the state directory could not be written
            self._install_failed(app, rel.name, f"{type(e).__name__}: {e}")
            return
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
            self._installed = None
        self.failures.succeeded(app)
        self.metrics.installs.labels(app, "ok").inc()
        log.info("installed", extra={"event": "install.done", "app": app, "release": rel.name,
                                     "package": fields.package, "version": fields.version,
                                     "seconds": round(time.monotonic() - started, 3)})
        if app == self.self_app:
            # pulld itself: restarting our own unit would kill this step; re-exec instead.
            self.restart_requested = True
            return
        self._start_units(app, fields.package, fields.version, installed_at=installed_at)
        rec.units_pending = False
        self.record.save()

    def _fetch_verified(self, app: str, info: ReleaseInfo, on_bytes: Callable[[int], None] | None = None) -> Path:
        """Download `info`'s .deb; with trusted release keys, only a release whose signature
        holds, and only if the download is the signed file (else Untrusted, nothing kept)."""
        statement = self.trust.check_release(app, info) if self.trust is not None else None

        def check(sha256: str, size: int) -> None:
            if self.trust is not None:
                self.trust.check_download(app, statement, sha256, size)

        return download.fetch(self.store, info, self.downloads, rate_limit=self.rate_limit, on_bytes=on_bytes,
                              check=check)

    def _install_failed(self, app: str, release: str, error: str) -> None:
        self.failures.fail(app, release, error)
        self.metrics.installs.labels(app, "failed").inc()

    def _undo_failed_install(self, app: str, package: str, before: tuple[str | None, str | None, str | None]) -> str:
        """After dpkg -i failed: remove what it left half-installed, and put back the release
        that ran before if it is no longer intact. Returns a note for the error message."""
        self._installed = None
        prev_release, prev_package, prev_version = before
        installed = self.dpkg.installed()
        notes = []
        row = installed.get(package)
        if row is not None and row.present and not row.ok and package != prev_package:
            try:
                self.dpkg.remove(package)
                notes.append(f"{package} was removed again: nothing half-installed is left")
            except DpkgError as e:
                notes.append(f"removing the half-installed {package} failed too: {e}")
        prev_row = installed.get(prev_package or "")
        if prev_release and prev_package and not (prev_row is not None and prev_row.ok
                                                  and prev_row.version == prev_version):
            try:
                prev = self.release_info(Release.parse(prev_release))
                path = self._fetch_verified(app, prev)
                try:
                    self.dpkg.install(path, force_depends=self.dpkg.sandbox)  # its Depends were met before
                finally:
                    path.unlink(missing_ok=True)
                log.info("rolled back", extra={"event": "install.rollback", "app": app, "release": prev_release})
                if prev_package != package:
                    self.record.app(app).packages[:] = [prev_package]
                self._installed = None
                self._start_units(app, prev_package, prev_version or "", only_inactive=True)
                notes.append(f"rolled back to {prev_release}")
            except (PushError, OSError) as e:
                log.warning("rollback failed", extra={"event": "install.rollback-failed", "app": app, "error": str(e)})
                notes.append(f"rollback to {prev_release} failed too: {e}")
        return f" ({'; '.join(notes)})" if notes else ""

    def _start_units(self, app: str, package: str, version: str, only_inactive: bool = False,
                     installed_at: float | None = None) -> None:
        units = units_to_start(self.units_of(package, version))
        self.failures.units.pop(app, None)
        if not units:
            return
        try:
            self.services.reload()
            if only_inactive:
                self.services.start(units)
            else:
                self.services.restart(units, unless_started_since=installed_at)
        except UnitError as e:
            self.failures.units[app] = str(e)
            log.warning("units failed", extra={"event": "units.error", "app": app, "error": str(e)})

    # -- removing -----------------------------------------------------------------------------

    def _remove_package(self, package: str) -> None:
        row = self.installed().get(package)
        if row is None or row.status[1:2] in ("n",):
            return
        if row.present:
            units = self.units_of(package, row.version)
            try:
                self.services.disable(units)
            except UnitError as e:
                log.warning("cannot stop units", extra={"event": "units.error", "package": package, "error": str(e)})
        self.dpkg.remove(package)
        self._installed = None
        self.services.reload()

    def _remove_app(self, p: AppPlan) -> None:
        app = p.app
        rec = self.record.apps[app]
        log.info("remove start", extra={"event": "remove.start", "app": app, "packages": rec.packages,
                                        "why": p.why})
        try:
            for package in list(rec.packages):
                self._remove_package(package)
                rec.packages.remove(package)
                self.record.save()
        except PushError as e:  # dpkg's words (AgentError), or the service manager's
            self.failures.fail(app, None, str(e))
            self.metrics.removals.labels(app, "failed").inc()
            return
        del self.record.apps[app]
        self.record.save()
        self.failures.removed(app)
        self.metrics.removals.labels(app, "ok").inc()
        log.info("removed", extra={"event": "remove.done", "app": app})
