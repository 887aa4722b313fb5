"""The Agent: one converge step that makes a server match its `server/{server}.json`.

A step reads the server file (a conditional read: nothing is downloaded when it did not
change), reads what dpkg says is installed, removes the packages of apps no longer listed,
installs new and changed releases (pulld's own last), (re)starts their units, reads every
unit's state, and publishes a report to `status/{server}.json`. A failing release is
reported with the failing tool's words and retried with backoff; it never blocks the others.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from push import __version__, timestamps
from push import status as status_mod
from push.agent import download
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg, InstalledPackage
from push.agent.errors import (
    AgentError,
    AgentStateError,
    DpkgError,
    DpkgLocked,
    UnitError,
    VerificationFailed,
)
from push.agent.metrics import Metrics
from push.agent.services import ServiceManager
from push.agent.state import AgentState, AppRecord
from push.agent.unitactions import act_on_requests
from push.errors import InvalidRelease, InvalidServerFile, NotFound, PushError
from push.layout import server_file_key
from push.release import Release, ReleaseInfo
from push.serverfile import ServerFile
from push.status import AgentStatus, AppStatus
from push.store import Store
from push.units import units_in, units_to_start

log = logging.getLogger(__name__)

SELF_APP = "pulld"


@dataclass
class AgentOptions:
    server: str
    root: Path | None = None                   # None or / : the real system
    state_dir: Path | None = None              # default /var/lib/pulld, or ROOT/var/lib/pulld
    backoff: Backoff = field(default_factory=Backoff)
    download_rate_limit: float | None = None   # bytes per second; None = unlimited
    report_interval: float = 60.0              # publish at least this often even when nothing changes
    requests_interval: float = 60.0            # look for unit requests at least this often when polling
    self_app: str = SELF_APP
    hostname: str = field(default_factory=socket.gethostname)

    @property
    def sandbox_root(self) -> Path | None:
        return self.root if self.root is not None and Path(self.root) != Path("/") else None

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return Path(self.state_dir)
        return (self.sandbox_root or Path("/")) / "var/lib/pulld"


@dataclass
class Failure:
    """The last failure of one app's release, and when to try it again."""

    release: str | None
    error: str
    attempts: int
    time: str
    retry_at: float          # time.monotonic()
    retry_wall: str


class Agent:
    """Converges one server (or one sandbox root) on its server file."""

    def __init__(self, store: Store, options: AgentOptions, services: ServiceManager, *,
                 dpkg: Dpkg | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.options = options
        self.server = options.server
        self.services = services
        self.dpkg = dpkg or Dpkg(options.sandbox_root)
        self.metrics = metrics or Metrics()
        self.state_dir = options.resolved_state_dir()
        self.downloads = self.state_dir / "downloads"
        self.state = self._load_state()
        self.step_count = 0
        self.restart_requested = False
        # The server file as last read, and its generation (for conditional reads).
        self._server_file: ServerFile | None = None
        self._generation: str | None = None
        self._server_file_error: str | None = None
        self._global_failure: Failure | None = None
        self._failures: dict[str, Failure] = {}
        self._unit_errors: dict[str, str] = {}
        self._infos: dict[str, ReleaseInfo] = {}
        self._installed: dict[str, InstalledPackage] | None = None
        self._fingerprint: tuple[int, int, int] | None = None
        self._units_cache: dict[tuple[str, str], list[str]] = {}
        self._last_report: dict[str, object] | None = None
        self._last_report_at = 0.0
        self._recovered = False
        self._requests_checked = float("-inf")
        self._last_error: str | None = None
        self._last_publish_try = 0.0
        # Apps whose install a killed agent started and dpkg finished: their units restart.
        self._restart_units_of: set[str] = set()

    def _load_state(self) -> AgentState:
        try:
            return AgentState.load(self.state_dir)
        except AgentStateError as e:
            # Never let a damaged record stop the agent: installs carry on; only the removal
            # of apps installed before is lost (their packages are then left alone).
            broken = self.state_dir / "state.json"
            broken.rename(broken.with_suffix(".json.broken"))
            log.error("agent state unreadable; starting a new one", extra={"event": "state.broken", "error": str(e)})
            return AgentState(broken)

    # -- start-up and crash recovery ----------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what a killed agent left: downloads, dpkg work, pending records."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        gone = download.clean(self.downloads)
        if gone:
            log.info("deleted interrupted downloads", extra={"event": "recover.downloads", "count": gone})
        self.dpkg.prepare()
        self._repair_dpkg()
        installed = self.dpkg.installed()
        changed = False
        for app, rec in self.state.apps.items():
            if rec.pending:
                p = rec.pending
                row = installed.get(p.get("package", ""))
                if row is not None and row.ok and row.version == p.get("version"):
                    # dpkg finished the install the killed agent had started.
                    self._record_installed(rec, p["release"], p["package"], p["version"])
                    rec.units_pending = True
                rec.pending = None
                changed = True
            if rec.units_pending:
                self._restart_units_of.add(app)
        if changed:
            self.state.save()
        self._recovered = True

    def _repair_dpkg(self) -> None:
        audit = self.dpkg.audit()
        if not audit:
            return
        log.warning("dpkg database needs repair", extra={"event": "recover.dpkg", "audit": audit})
        try:
            self.dpkg.configure_pending()
        except DpkgError as e:
            # Packages that cannot be configured are reinstalled (if wanted) or removed
            # (if not) by the step itself: they do not count as installed meanwhile.
            log.warning("dpkg --configure -a failed", extra={"event": "recover.dpkg-failed", "error": str(e)})
        self._installed = None

    # -- reading the world ----------------------------------------------------------------------

    def _read_server_file(self) -> bool:
        """Conditional read; True when the file changed. Raises on store errors."""
        key = server_file_key(self.server)
        try:
            got = self.store.get(key, if_generation_not_match=self._generation)
        except NotFound:
            changed = self._generation is not None or self._server_file_error is None
            self._server_file, self._generation = None, None
            self._server_file_error = (f"no server file {key} in {self.store.url}: "
                                       "nothing is installed or removed until there is one")
            self.metrics.server_file_reads.labels("missing").inc()
            return changed
        if got is None:
            self.metrics.server_file_reads.labels("no").inc()
            return False
        data, info = got
        self.metrics.server_file_reads.labels("yes").inc()
        self._generation = info.generation
        try:
            self._server_file = ServerFile.parse(self.server, data, info.generation)
            self._server_file_error = None
        except InvalidServerFile as e:
            # Keep running what runs now; the file is read again once its generation changes.
            self._server_file = None
            self._server_file_error = str(e)
        return True

    def installed(self) -> dict[str, InstalledPackage]:
        """What dpkg says, re-read only when its status file changed."""
        fp = self.dpkg.status_fingerprint()
        if self._installed is None or fp is None or fp != self._fingerprint:
            self._installed = self.dpkg.installed()
            self._fingerprint = fp
        return self._installed

    def release_info(self, release: Release) -> ReleaseInfo:
        """The release's metadata (immutable: releases are create-only, so it is cached)."""
        info = self._infos.get(release.name)
        if info is None:
            try:
                obj = self.store.stat(release.key)
            except NotFound:
                raise NotFound(f"release {release.name} is not in {self.store.url}") from None
            info = ReleaseInfo.from_metadata(obj.key, obj.metadata)
            self._infos[release.name] = info
        return info

    def _deb_identity(self, info: ReleaseInfo) -> tuple[str, str] | None:
        """(package, version) of a release, from its metadata or from its .deb seen before."""
        package, version = info.extra.get("package"), info.extra.get("version")
        if package and version:
            return package, version
        known = self.state.debs.get(info.name)
        return (known[0], known[1]) if known else None

    def installed_release(self, app: str, info: ReleaseInfo | None, installed: dict[str, InstalledPackage]
                          ) -> tuple[str | None, InstalledPackage | None]:
        """(release name, dpkg row) of what is installed for `app`, as dpkg says.

        The release name comes from the record of what Push installed when dpkg still
        shows that package and version, else from the desired release's (package, version).
        """
        rec = self.state.apps.get(app)
        ident = self._deb_identity(info) if info is not None else None
        candidates = []
        if ident:
            candidates.append(ident[0])
        if rec is not None:
            candidates += [p for p in ([rec.package] if rec.package else []) + rec.packages]
        for package in dict.fromkeys(candidates):
            row = installed.get(package)
            if row is None or not row.ok:
                continue
            if rec is not None and rec.release and rec.package == row.package and rec.version == row.version:
                return rec.release, row
            if info is not None and ident == (row.package, row.version):
                return info.name, row
            return None, row
        # Something of the app's is on disk but not (fully) installed: report it as such.
        for package in dict.fromkeys(candidates):
            row = installed.get(package)
            if row is not None and row.present:
                return None, row
        return None, None

    # -- the step -------------------------------------------------------------------------------

    def step(self, reasons: Sequence[str] = ("start",)) -> bool:
        """One converge step; True when the server then matches its file.

        `reasons` are what woke the agent: after a trigger (not a mere poll) it also looks
        for unit requests, which otherwise it does every `requests_interval`.
        """
        started = time.monotonic()
        self.step_count += 1
        global_error: str | None = None
        try:
            if not self._recovered:
                self.recover()
            self._read_server_file()
        except PushError as e:  # the store only ever raises these (push.store.base)
            global_error = f"cannot read {server_file_key(self.server)}: {e}"
        except OSError as e:  # recovery could not use the state directory
            global_error = f"cannot recover in {self.state_dir}: {e}"
        if global_error is None and self._server_file_error is not None:
            global_error = self._server_file_error
        if global_error is not None:
            self._fail_global(global_error)
            report = self._report(global_error)
            self._finish(report, started)
            return False
        self._global_failure = None
        assert self._server_file is not None
        try:
            self._converge(self._server_file)
            if set(reasons) - {"poll"} or started - self._requests_checked >= self.options.requests_interval:
                self._unit_requests()
            report = self._report(None)
        except Exception as e:  # the step's one guard: dpkg-query failing, the state dir unwritable, a bug
            log.exception("step failed")
            self._fail_global(f"{type(e).__name__}: {e}" if not isinstance(e, PushError) else str(e))
            report = self._report(self._global_failure.error if self._global_failure else str(e))
        self._finish(report, started)
        return report.in_sync

    def _finish(self, report: AgentStatus, started: float) -> None:
        self._last_error = report.error
        self._publish(report)
        self.metrics.steps.labels("in_sync" if report.in_sync else "not_in_sync").inc()
        self.metrics.step_seconds.observe(time.monotonic() - started)
        self.metrics.last_step.set(time.time())
        self.metrics.in_sync.set(1 if report.in_sync else 0)
        self.metrics.failing_apps.set(sum(1 for a in report.apps.values() if a.error))

    def _fail_global(self, error: str) -> None:
        prev = self._global_failure
        attempts = prev.attempts + 1 if prev and prev.error == error else 1
        delay = self.options.backoff.delay(attempts)
        self._global_failure = Failure(None, error, attempts, timestamps.now_text(), time.monotonic() + delay,
                                       timestamps.text_in(delay))
        log.warning("step failed", extra={"event": "step.error", "error": error, "attempts": attempts,
                                          "retry_in": round(delay, 1)})

    def next_retry_in(self) -> float | None:
        """Seconds until a failed release (or the whole step) is due for a retry, if any."""
        if self._global_failure is not None:  # no release is retried before the step itself works
            return max(0.0, self._global_failure.retry_at - time.monotonic())
        times = [f.retry_at for f in self._failures.values()]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _converge(self, sf: ServerFile) -> None:
        installed = self.installed()
        desired = sf.releases
        listed = set(sf.apps)
        # Forget failures of releases that are no longer the wanted ones.
        for app, f in list(self._failures.items()):
            rel = desired.get(app)
            if (app in listed) if f.release is None else (rel is None or f.release != rel.name):
                del self._failures[app]

        removals = [app for app, rec in sorted(self.state.apps.items())
                    if app not in listed and (rec.packages or rec.release)]
        installs: list[tuple[str, Release, ReleaseInfo]] = []
        now = time.monotonic()
        for app, rel in desired.items():
            failure = self._failures.get(app)
            backing_off = failure is not None and failure.release == rel.name and now < failure.retry_at
            if backing_off and rel.name not in self._infos:
                continue  # not even a metadata read until the retry is due
            try:
                info = self.release_info(rel)
            except (NotFound, InvalidRelease) as e:
                self._fail(app, rel.name, str(e))
                continue
            except PushError as e:
                self._fail(app, rel.name, f"cannot read release metadata: {e}")
                continue
            current, _row = self.installed_release(app, info, installed)
            if current == rel.name:
                if failure is not None and failure.release == rel.name:
                    del self._failures[app]
                continue
            if backing_off:
                continue  # no retry storm every cycle
            installs.append((app, rel, info))
        installs.sort(key=lambda t: (t[0] == self.options.self_app, t[0]))
        removals = [a for a in removals if not (a in self._failures and now < self._failures[a].retry_at)]

        if removals or installs:
            self._publish(self._report(None, working={a for a, _, _ in installs}, removing=set(removals)), force=True)
        for app in removals:
            self._remove_app(app)
        for app, rel, info in installs:
            self._install(app, rel, info)
        for app in sorted(self._restart_units_of):
            rec = self.state.apps.get(app)
            row = self.installed().get(rec.package or "") if rec else None
            if rec and row is not None and row.ok and app != self.options.self_app:
                self._start_units(app, row.package, row.version)
            if rec is not None and rec.units_pending:
                rec.units_pending = False
                self.state.save()
        self._restart_units_of.clear()

    # -- installing -----------------------------------------------------------------------------

    def _fail(self, app: str, release: str | None, error: str) -> None:
        prev = self._failures.get(app)
        attempts = prev.attempts + 1 if prev is not None and prev.release == release else 1
        delay = self.options.backoff.delay(attempts)
        self._failures[app] = Failure(release, error, attempts, timestamps.now_text(), time.monotonic() + delay,
                                      timestamps.text_in(delay))
        log.warning("app failed", extra={"event": "app.error", "app": app, "release": release, "error": error,
                                         "attempts": attempts, "retry_in": round(delay, 1)})

    def _install(self, app: str, rel: Release, info: ReleaseInfo) -> None:
        log.info("install start", extra={"event": "install.start", "app": app, "release": rel.name,
                                         "t": time.time()})
        rec = self.state.app(app)
        before = (rec.release, rec.package, rec.version)
        path: Path | None = None
        started = time.monotonic()
        try:
            path = download.fetch(self.store, info, self.downloads, rate_limit=self.options.download_rate_limit,
                                  on_bytes=self.metrics.download_bytes.inc)
            fields = self.dpkg.deb_fields(path)
            for key, got in (("package", fields.package), ("version", fields.version)):
                want = info.extra.get(key)
                if want and want != got:
                    raise VerificationFailed(f"{rel.name}: the .deb's {key} is {got!r}, its metadata says {want!r}")
            self.state.debs[rel.name] = [fields.package, fields.version]
            force_depends = self.dpkg.ensure_depends(fields)
            rec.pending = {"release": rel.name, "package": fields.package, "version": fields.version}
            if fields.package not in rec.packages:
                rec.packages.append(fields.package)
            self.state.save()
            installed_at = time.monotonic()
            try:
                # An app whose Debian package was renamed: the old one goes first (both
                # usually ship the same files); a failure below puts its release back.
                for old in [p for p in rec.packages if p != fields.package]:
                    self._remove_package(old)
                self.dpkg.install(path, force_depends=force_depends)
            except DpkgError as e:
                rec.pending = None
                note = "" if isinstance(e, DpkgLocked) else self._undo_failed_install(app, fields.package, before)
                self.state.save()
                raise DpkgError(str(e) + note) from None
            self._record_installed(rec, rel.name, fields.package, fields.version)
            rec.pending = None
            rec.packages[:] = [fields.package]
            # Until its units are restarted: a crash in between restarts them at the next start.
            rec.units_pending = app != self.options.self_app
            self.state.save()
        except AgentError as e:
            self._fail(app, rel.name, str(e))
            self.metrics.installs.labels(app, "failed").inc()
            return
        except PushError as e:
            self._fail(app, rel.name, f"download failed: {e}")
            self.metrics.installs.labels(app, "failed").inc()
            return
        except OSError as e:  # the download or the state directory could not be written
            self._fail(app, rel.name, f"{type(e).__name__}: {e}")
            self.metrics.installs.labels(app, "failed").inc()
            return
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
            self._installed = None
        self._failures.pop(app, None)
        self.metrics.installs.labels(app, "ok").inc()
        log.info("installed", extra={"event": "install.done", "app": app, "release": rel.name,
                                     "package": fields.package, "version": fields.version,
                                     "seconds": round(time.monotonic() - started, 3)})
        if app == self.options.self_app:
            # pulld itself: restarting our own unit would kill this step; re-exec instead.
            self.restart_requested = True
            return
        self._start_units(app, fields.package, fields.version, installed_at=installed_at)
        rec.units_pending = False
        self.state.save()

    def _record_installed(self, rec: AppRecord, release: str, package: str, version: str) -> None:
        rec.release, rec.package, rec.version = release, package, version
        if package not in rec.packages:
            rec.packages.insert(0, package)

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
                path = download.fetch(self.store, prev, self.downloads, rate_limit=self.options.download_rate_limit)
                try:
                    self.dpkg.install(path, force_depends=self.dpkg.sandbox)  # its Depends were met before
                finally:
                    path.unlink(missing_ok=True)
                log.info("rolled back", extra={"event": "install.rollback", "app": app, "release": prev_release})
                if prev_package != package:
                    self.state.app(app).packages[:] = [prev_package]
                self._installed = None
                self._start_units(app, prev_package, prev_version or "", only_inactive=True)
                notes.append(f"rolled back to {prev_release}")
            except (PushError, OSError) as e:
                log.warning("rollback failed", extra={"event": "install.rollback-failed", "app": app, "error": str(e)})
                notes.append(f"rollback to {prev_release} failed too: {e}")
        return f" ({'; '.join(notes)})" if notes else ""

    def units_of(self, package: str, version: str) -> list[str]:
        key = (package, version)
        units = self._units_cache.get(key)
        if units is None:
            units = units_in(self.dpkg.files(package))
            self._units_cache[key] = units
        return units

    def _start_units(self, app: str, package: str, version: str, only_inactive: bool = False,
                     installed_at: float | None = None) -> None:
        units = units_to_start(self.units_of(package, version))
        self._unit_errors.pop(app, None)
        if not units:
            return
        try:
            self.services.reload()
            if only_inactive:
                self.services.start(units)
            else:
                self.services.restart(units, unless_started_since=installed_at)
        except UnitError as e:
            self._unit_errors[app] = str(e)
            log.warning("units failed", extra={"event": "units.error", "app": app, "error": str(e)})

    def units_of_app(self, app: str) -> list[str]:
        """The units of what is installed for `app`, found as the report finds it (so also for a
        release installed by something else, such as pulld by the startup script); none if
        nothing is installed."""
        rel = self._server_file.releases.get(app) if self._server_file is not None else None
        info = self._infos.get(rel.name) if rel is not None else None
        _, row = self.installed_release(app, info, self.installed())
        return self.units_of(row.package, row.version) if row is not None and row.ok else []

    def _unit_requests(self) -> None:
        self._requests_checked = time.monotonic()
        try:
            act_on_requests(self.store, self.server, self.services, self.units_of_app, self.options.hostname,
                            own_app=self.options.self_app)
        except PushError as e:
            log.warning("cannot read unit requests", extra={"event": "unit.request-error", "error": str(e)})

    # -- removing -------------------------------------------------------------------------------

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

    def _remove_app(self, app: str) -> None:
        rec = self.state.apps[app]
        log.info("remove start", extra={"event": "remove.start", "app": app, "packages": rec.packages})
        try:
            for package in list(rec.packages):
                self._remove_package(package)
                rec.packages.remove(package)
                self.state.save()
        except (AgentError, PushError) as e:
            self._fail(app, None, str(e))
            self.metrics.removals.labels(app, "failed").inc()
            return
        del self.state.apps[app]
        self.state.save()
        self._failures.pop(app, None)
        self._unit_errors.pop(app, None)
        self.metrics.removals.labels(app, "ok").inc()
        log.info("removed", extra={"event": "remove.done", "app": app})

    # -- reporting ------------------------------------------------------------------------------

    def _report(self, error: str | None, working: AbstractSet[str] = frozenset(),
                removing: AbstractSet[str] = frozenset()) -> AgentStatus:
        sf = self._server_file
        try:
            installed = self.installed()
        except PushError as e:  # dpkg-query itself failed: report that, with nothing installed known
            installed = {}
            error = error or str(e)
        apps: dict[str, AppStatus] = {}
        desired = sf.releases if sf is not None else {}
        names = list(sf.apps) if sf is not None else []
        names += [a for a in sorted(self.state.apps) if a not in names]
        in_sync = error is None
        unit_list: list[str] = []
        for app in names:
            rel = desired.get(app)
            info = self._infos.get(rel.name) if rel is not None else None
            current, row = self.installed_release(app, info, installed)
            st = AppStatus(desired=rel.name if rel else None, installed=current,
                           package=row.package if row else None, version=row.version if row else None)
            if row is not None and row.ok:
                try:
                    st.units = dict(sorted(self.services.states(self.units_of(row.package, row.version)).items()))
                except PushError as e:
                    st.units = {"?": f"unknown: {e}"}
                unit_list += list(st.units)
                for unit, state in st.units.items():
                    self.metrics.units.labels(unit).set(1 if state == "active" else 0)
            failure = self._failures.get(app)
            if app in working:
                st.state = "installing"
            elif app in removing:
                st.state = "removing"
            elif failure is not None:
                st.state = "failed"
                st.error, st.error_time, st.attempts, st.next_retry = (
                    failure.error, failure.time, failure.attempts, failure.retry_wall)
            elif app in self._unit_errors:
                st.state = "failed"
                st.error = self._unit_errors[app]
            elif sf is not None and app not in sf.apps:
                st.state = "removing"
            elif rel is not None and current != rel.name:
                st.state = "pending"
            if sf is not None and app in sf.apps and rel is None:
                st.state = "ok"  # a placeholder: nothing chosen, nothing to do
            if st.state != "ok":
                in_sync = False
            apps[app] = st
        if sf is None:
            in_sync = False
        return AgentStatus(server=self.server, agent_version=__version__, time=timestamps.now_text(),
                           hostname=self.options.hostname, server_file_generation=self._generation,
                           in_sync=in_sync, step=self.step_count, apps=apps, error=error)

    def _publish(self, report: AgentStatus, force: bool = False) -> None:
        """Write the report unless it says nothing new and the last one is recent."""
        content = report.to_json()
        comparable = {k: v for k, v in content.items() if k not in ("time", "step")}
        due = time.monotonic() - self._last_report_at >= self.options.report_interval
        if not force and not due and comparable == self._last_report:
            return
        self._last_publish_try = time.monotonic()
        try:
            status_mod.write(self.store, report)
        except PushError as e:  # the report is retried next step; the step's work stands
            self.metrics.reports.labels("failed").inc()
            log.warning("cannot publish status", extra={"event": "report.error", "error": str(e)})
            return
        self._last_report, self._last_report_at = comparable, time.monotonic()
        self.metrics.reports.labels("ok").inc()
        log.info("status published", extra={"event": "report", "in_sync": report.in_sync,
                                            "summary": json.dumps({a: s.state for a, s in report.apps.items()})})

    def heartbeat_in(self) -> float:
        """Seconds until the report is due again (so the push server sees the agent alive)."""
        # Counted from the last try, so a store that refuses reports is not hammered.
        return max(0.0, self._last_publish_try + self.options.report_interval - time.monotonic())

    def heartbeat(self) -> None:
        """Publish the report (fresh unit states, same step) without running a step: a long
        poll interval never makes an agent look gone quiet."""
        self._publish(self._report(self._last_error))
