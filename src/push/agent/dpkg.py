"""The one module that runs dpkg, dpkg-query, dpkg-deb, apt-get and apt-mark for the agent.

Every call is an argument list with a timeout, stderr captured into the error, and the
same environment (C locale, non-interactive, sbin on PATH). With a sandbox root, dpkg runs
as `dpkg --root=ROOT --force-script-chrootless` against ROOT/var/lib/dpkg, so maintainer
scripts run on the host with DPKG_ROOT=ROOT set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from push.agent.errors import DependencyMissing, DpkgError, DpkgLocked
from push.debian import InvalidRelation, Relation, parse_control, parse_relations, version_satisfies

log = logging.getLogger(__name__)

# dpkg's own messages when another dpkg/apt holds its locks.
_LOCK_MESSAGES = ("locked by another process", "database is locked", "unable to acquire the dpkg")
_MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class InstalledPackage:
    """One row of `dpkg-query -W`: what dpkg's database says of one package."""

    package: str
    version: str
    status: str                      # ${db:Status-Abbrev}: desired, status, error flag
    provides: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Fully installed and configured, nothing pending, no reinstall required."""
        return len(self.status) >= 2 and self.status[1] == "i" and self.status[2:3] in ("", " ")

    @property
    def present(self) -> bool:
        """Some of its files are on disk (installed, half-installed, unpacked, ...)."""
        return len(self.status) >= 2 and self.status[1] not in ("n", "c")


@dataclass(frozen=True)
class DebFields:
    """The control fields of a .deb that the agent needs."""

    package: str
    version: str
    architecture: str = ""
    depends: str = ""
    pre_depends: str = ""


def parse_depends(text: str) -> list[Relation]:
    """The relations of a .deb's Depends / Pre-Depends (see push.debian)."""
    try:
        return parse_relations(text)
    except InvalidRelation as e:
        raise DpkgError(str(e)) from None


def _trim(text: str) -> str:
    text = text.strip()
    if len(text) > _MAX_ERROR_CHARS:
        text = "…" + text[-_MAX_ERROR_CHARS:]
    return text


class Dpkg:
    """dpkg for one root: `/` (root=None) or a sandbox root directory."""

    def __init__(self, root: Path | None = None, *, timeout: float = 1800.0,
                 lock_timeout: float = 120.0, apt_get: str = "apt-get") -> None:
        self.root = Path(root).absolute() if root is not None and Path(root) != Path("/") else None
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.apt_get = apt_get

    # -- plumbing -----------------------------------------------------------------------

    @property
    def sandbox(self) -> bool:
        return self.root is not None

    @property
    def admindir(self) -> Path:
        return (self.root or Path("/")) / "var/lib/dpkg"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LC_ALL"] = "C"
        env["DEBIAN_FRONTEND"] = "noninteractive"
        path = env.get("PATH", "")
        for d in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
            if d not in path.split(":"):
                path = f"{path}:{d}" if path else d
        env["PATH"] = path
        return env

    def _dpkg_args(self) -> list[str]:
        if self.root is None:
            return ["dpkg"]
        args = ["dpkg", f"--root={self.root}", "--force-script-chrootless",
                f"--log={self.root}/var/log/dpkg.log"]
        if os.geteuid() != 0:
            args.append("--force-not-root")
        return args

    def _query_args(self) -> list[str]:
        return ["dpkg-query", f"--admindir={self.admindir}"]

    def run(self, args: Sequence[str], *, timeout: float | None = None, check: bool = True,
            what: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run one command; DpkgError with its stderr when it fails (if `check`)."""
        what = what or " ".join(args[:3])
        try:
            proc = subprocess.run(list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=timeout or self.timeout,
                                  env=dict(env) if env is not None else self._env())
        except subprocess.TimeoutExpired as e:
            raise DpkgError(f"{what} timed out after {e.timeout:.0f}s") from None
        except OSError as e:
            raise DpkgError(f"cannot run {args[0]}: {e.strerror}") from None
        if check and proc.returncode != 0:
            text = _trim(proc.stderr or proc.stdout)
            cls = DpkgLocked if any(m in text for m in _LOCK_MESSAGES) else DpkgError
            raise cls(f"{what} failed (exit {proc.returncode}): {text}", stderr=proc.stderr,
                      returncode=proc.returncode)
        return proc

    def run_dpkg(self, args: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
        """dpkg with `args`, waiting (up to lock_timeout) while another dpkg holds the lock."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return self.run([*self._dpkg_args(), *args], what=what)
            except DpkgLocked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- the sandbox root ------------------------------------------------------------------

    def prepare(self) -> None:
        """Create what `dpkg --root` needs in a fresh sandbox root (nothing for `/`)."""
        if self.root is None:
            return
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
                  "var/lib/dpkg/alternatives", "var/log", "etc/systemd/system", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        status = self.admindir / "status"
        if not status.exists():
            status.touch()

    # -- reading -------------------------------------------------------------------------

    def installed(self) -> dict[str, InstalledPackage]:
        """Every package dpkg's database knows, by name (any state; see `.ok`)."""
        if self.root is not None and not (self.admindir / "status").exists():
            return {}
        proc = self.run([*self._query_args(), "-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\t${Provides}\n"],
                        what="dpkg-query -W", timeout=120)
        packages: dict[str, InstalledPackage] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or not parts[0]:
                continue
            provides = tuple(p.split("(")[0].strip() for p in parts[3].split(",") if p.strip()) if len(parts) > 3 \
                else ()
            packages[parts[0]] = InstalledPackage(parts[0], parts[1], parts[2], provides)
        return packages

    def status_fingerprint(self) -> tuple[int, int, int] | None:
        """Changes whenever dpkg rewrites its status file: lets an idle agent skip dpkg-query."""
        try:
            st = (self.admindir / "status").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def files(self, package: str) -> list[str]:
        """The paths a package installed (as dpkg lists them, relative to the root)."""
        proc = self.run([*self._query_args(), "-L", package], check=False, what=f"dpkg-query -L {package}",
                        timeout=120)
        if proc.returncode != 0:
            return []
        return [line for line in proc.stdout.splitlines() if line.startswith("/")]

    def deb_fields(self, path: Path) -> DebFields:
        """Package, Version, Depends... of a .deb file, from its control."""
        proc = self.run(["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture", "Depends",
                         "Pre-Depends"], what="dpkg-deb -f", timeout=120)
        fields = parse_control(proc.stdout)
        if not fields.get("package") or not fields.get("version"):
            raise DpkgError(f"{path.name}: no Package/Version in its control file")
        return DebFields(fields["package"], fields["version"], fields.get("architecture", ""),
                         fields.get("depends", ""), fields.get("pre-depends", ""))

    def audit(self) -> str:
        """What `dpkg --audit` reports (empty when the database is consistent)."""
        if self.root is not None and not (self.admindir / "status").exists():
            return ""
        proc = self.run([*self._dpkg_args(), "--audit"], check=False, what="dpkg --audit", timeout=120)
        return (proc.stdout + proc.stderr).strip() if proc.returncode != 0 or proc.stdout.strip() else ""

    # -- changing ------------------------------------------------------------------------

    def configure_pending(self) -> None:
        """Finish what an interrupted dpkg left: configure unpacked packages, run triggers."""
        self.run_dpkg(["--force-confnew", "--configure", "-a"], what="dpkg --configure -a")

    def install(self, path: Path, *, force_depends: bool = False) -> str:
        """`dpkg -i` one .deb (a downgrade is a rollback: allowed). Returns dpkg's output."""
        args = ["--force-confnew", "--force-downgrade"]
        if force_depends:
            args.append("--force-depends")
        proc = self.run_dpkg([*args, "-i", str(path)], what="dpkg -i")
        return proc.stdout

    def remove(self, package: str) -> None:
        """Purge a package: an app taken off a server leaves no conffiles behind."""
        self.run_dpkg(["--force-remove-reinstreq", "--purge", package], what=f"dpkg --purge {package}")

    # -- dependencies ----------------------------------------------------------------------

    def _satisfied(self, clause: Relation, packages: Mapping[str, InstalledPackage]) -> bool:
        for dep in clause.alternatives:
            pkg = packages.get(dep.name)
            if pkg is not None and pkg.ok:
                try:
                    if dep.op is None or version_satisfies(pkg.version, dep.op, dep.version or ""):
                        return True
                except InvalidRelation as e:
                    raise DpkgError(str(e)) from None
            if dep.op is None and any(p.ok and dep.name in p.provides for p in packages.values()):
                return True
        return False

    def ensure_depends(self, fields: DebFields) -> bool:
        """Make the package's Depends installable; True if dpkg must be told --force-depends.

        On `/` the missing ones are installed with `apt-get satisfy` (which understands
        alternatives and versions). A sandbox root cannot take packages from the
        distribution, so there a dependency must already be met by the root or the host.
        """
        clauses = parse_depends(fields.pre_depends) + parse_depends(fields.depends)
        if not clauses:
            return False
        installed = self.installed()
        missing = [c for c in clauses if not self._satisfied(c, installed)]
        if not missing:
            return False
        if self.root is not None:
            host = Dpkg(None, timeout=self.timeout).installed()
            still = [c for c in missing if not self._satisfied(c, host)]
            if still:
                raise DependencyMissing(
                    f"{fields.package} {fields.version} depends on {', '.join(map(str, still))}: "
                    f"not installed in {self.root} nor on this host (a sandbox root cannot install "
                    "from the distribution)")
            return True
        wanted = ", ".join(map(str, missing))
        log.info("installing dependencies", extra={"event": "apt.satisfy", "package": fields.package,
                                                   "depends": wanted})
        # Another apt or dpkg at work (unattended-upgrades, a startup script): wait for it as
        # dpkg -i does, instead of failing at once.
        args = [self.apt_get, "-o", f"DPkg::Lock::Timeout={self.lock_timeout:.0f}", "satisfy", "-y", "-q",
                "--no-install-recommends", wanted]
        try:
            self.run(args, what="apt-get satisfy")
        except DpkgError:
            # Stale package lists are the usual cause: refresh once and try again.
            try:
                self.run([self.apt_get, "update", "-q"], what="apt-get update")
                self.run(args, what="apt-get satisfy")
            except DpkgError as e:
                raise DependencyMissing(
                    f"cannot install dependencies of {fields.package} {fields.version} ({wanted}): {e}") from None
        self._mark_auto(installed)
        return False

    def _mark_auto(self, before: Mapping[str, InstalledPackage]) -> None:
        """Mark what `apt-get satisfy` just installed as installed automatically.

        satisfy marks the packages it was asked for as manual, as `apt-get install` does; but
        they are there for a release, so once no installed package needs them any more (the
        app was removed), `apt-get autoremove` should be free to take them away.
        """
        new = sorted(name for name, row in self.installed().items()
                     if row.ok and not (name in before and before[name].ok))
        if not new:
            return
        try:
            self.run(["apt-mark", "auto", *new], what="apt-mark auto", timeout=120)
        except DpkgError as e:  # the dependencies are installed all the same
            log.warning("cannot mark dependencies automatic", extra={"event": "apt.mark-auto", "error": str(e)})
