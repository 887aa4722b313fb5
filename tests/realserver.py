"""Real Debian 12 servers for the `systemd` test tier: systemd as PID 1 under systemd-nspawn.

`debian_root()` builds a minimal Debian root with debootstrap, once per machine, into a cache
outside the checkout (/var/cache/push-tests/roots/KEY; KEY names the release, the package list
and this module's recipe). It is built in a temporary directory and renamed into place when
complete, so an interrupted build is never used, and built again wherever it is absent.

`RealServer` boots one server on that root without ever writing to it: nspawn's `--overlay`
puts the server's own changes in its upper directory, and the overlay mount lives in the
container's mount namespace, so it goes away with the container (no mount is ever left on
the host, even after a SIGKILL). The container shares the host's network: emulators and push
servers on 127.0.0.1 are reachable from inside, and apt reaches Debian's mirror. Commands run
inside with `nsenter -a` into the container's systemd. conftest.py turns these into fixtures;
tests/test_realserver.py is the tier. docs/testing.md says why it is built this way.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

RELEASE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "ca-certificates")
# Bump when what _finish_root() does changes: the key changes, so every machine rebuilds.
RECIPE = 2
CACHE = Path(os.environ.get("PUSH_TEST_CACHE", "/var/cache/push-tests"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT = 1200.0
BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
# The environment of every command run inside: a login-like one, nothing of the host's.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_PAGER": "", "DEBIAN_FRONTEND": "noninteractive"}
# Host apt settings a root on this machine needs too (a proxy, a mirror whose Release files
# are past their Valid-Until date).
_APT_SETTINGS = re.compile(r"^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy(::[^ ]+)?) ", re.IGNORECASE)
_PR_SET_PDEATHSIG = 1


class CannotBoot(Exception):
    """This machine cannot boot a real server: the reason says why."""


class CommandFailed(AssertionError):
    """A command inside a server exited non-zero; carries what it printed."""

    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        self.proc = proc


def cannot_boot(reason: str) -> NoReturn:
    """Skip with the reason, except in CI: there the tier must run, so it fails instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot boot a real server, and CI=true forbids skipping the systemd tier: {reason}",
                    pytrace=False)
    pytest.skip(f"cannot boot a real server here: {reason}")


def check_machine() -> None:
    """CannotBoot unless this machine has what booting a server takes (root, nspawn, nsenter)."""
    if os.geteuid() != 0:
        raise CannotBoot("not root (systemd-nspawn and nsenter need root)")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            raise CannotBoot(f"no {tool} (apt-get install {package}; scripts/test does)")
    if not Path("/sys/fs/cgroup").is_dir():
        raise CannotBoot("no /sys/fs/cgroup: systemd cannot run in a container here")


# -- the root, built once per machine -------------------------------------------------------


def root_key() -> str:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    recipe = json.dumps([RELEASE, VARIANT, sorted(PACKAGES), arch, RECIPE])
    return f"debian-{RELEASE}-{arch}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources"),
                  legacy: Path = Path("/etc/apt/sources.list")) -> str:
    """The Debian mirror this machine's apt uses for RELEASE (deb822 first, then the one-line form)."""
    with contextlib.suppress(OSError):
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split() and RELEASE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    with contextlib.suppress(OSError):
        for line in legacy.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == RELEASE:
                return words[1]
    return DEFAULT_MIRROR


def _host_apt_settings() -> str:
    proc = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30)
    return "".join(line + "\n" for line in proc.stdout.splitlines() if _APT_SETTINGS.match(line))


def _finish_root(root: Path) -> None:
    """What debootstrap leaves to the installer: names and ids are set per server at boot."""
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc/hostname").unlink(missing_ok=True)  # debootstrap copies the build machine's
    settings = _host_apt_settings()
    if settings:
        (root / "etc/apt/apt.conf.d/99push-tests-host").write_text(
            "// Copied from the machine that built this root by tests/realserver.py\n" + settings)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix[:-1]:
            points.append(point)
    return points


def _remove_tree(path: Path) -> None:
    """Delete a (partial) root, first unmounting what an interrupted debootstrap left in it
    (/proc, /sys): removing files through such a mount would reach the host's."""
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=60)
    left = _mounts_under(path)
    if left:
        raise CannotBoot(f"cannot remove {path}: still mounted there: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another test run building the same root: wait for it
        yield


def debian_root(log: Path, cache: Path = CACHE) -> Path:
    """The cached root, built now (about 2 minutes, 300 MB) if this machine has none yet."""
    check_machine()
    roots = cache / "roots"
    key = root_key()
    final = roots / key
    if final.is_dir():
        return final
    if shutil.which("debootstrap") is None:
        raise CannotBoot("no debootstrap to build the Debian root (apt-get install debootstrap; scripts/test does)")
    roots.mkdir(parents=True, exist_ok=True)
    with _locked(roots / f"{key}.lock"):
        if final.is_dir():
            return final
        for stale in roots.glob(f"{key}.tmp-*"):  # an interrupted build: we hold the lock
            _remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=roots))
        tmp.chmod(0o755)  # it becomes the servers' /
        mirror = debian_mirror()
        argv = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", RELEASE, str(tmp), mirror]
        started = time.monotonic()
        try:
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
                try:
                    code = proc.wait(DEBOOTSTRAP_TIMEOUT)
                finally:
                    if proc.poll() is None:  # a timeout, or the test run interrupted: let it unmount
                        proc.terminate()
                        try:
                            proc.wait(30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
            if code != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise CannotBoot(f"debootstrap from {mirror} failed (exit {code}); {log}:\n{tail}")
            _finish_root(tmp)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        print(f"built the Debian root {final} from {mirror} in {time.monotonic() - started:.0f} s")
    return final


# -- one server -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # If the test run itself is killed, nspawn gets SIGTERM: the server powers off cleanly.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RealServer:
    """One Debian server booted with systemd-nspawn on an overlay of the cached root.

    `boot()`, `run()` a command inside, `copy_in()`, `read()`, `stop()` (SIGTERM to nspawn,
    then SIGKILL by pid), `reboot()` (power off, boot again on the same upper directory).
    """

    def __init__(self, name: str, root: Path, workdir: Path) -> None:
        for path in (root, workdir):
            if ":" in str(path):
                raise CannotBoot(f"{path}: nspawn's --overlay cannot take a path with ':'")
        self.name = name
        self.root = root
        self.workdir = workdir
        self.upper = workdir / "upper"
        self.machine = f"push-{name}-{secrets.token_hex(3)}"  # unique on this machine
        self.console_log = workdir / "console.log"
        self.boots = 0
        self.boot_seconds: list[float] = []
        self.failed_units: list[str] = []
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._init: int | None = None
        self._init_started: str | None = None

    @property
    def pid(self) -> int:
        """The container's systemd (PID 1 inside), as the host sees it."""
        if self._init is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self._init

    @property
    def nspawn_pid(self) -> int | None:
        return self._nspawn.pid if self._nspawn is not None else None

    # -- booting --------------------------------------------------------------------------------

    def _prepare_upper(self) -> None:
        """What the server's provisioning gives it: its name and its own machine id."""
        etc = self.upper / "etc"
        etc.mkdir(parents=True)
        (etc / "hostname").write_text(self.name + "\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n"
                                   "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            raise RuntimeError(f"server {self.name} is already running")
        if not self.upper.exists():
            self._prepare_upper()
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", f"--machine={self.machine}",
                "-D", str(self.root), f"--overlay={self.root}:{self.upper}:/",
                "--boot", "--console=read-only"]
        started = time.monotonic()
        with open(self.console_log, "ab") as log:
            log.write(f"\n---- boot {self.boots + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self._nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        self._init = self._init_started = None
        self.boots += 1
        try:
            self._wait_running(started + timeout)
        except CannotBoot:
            self.stop()
            raise
        self.boot_seconds.append(time.monotonic() - started)

    def _find_init(self) -> int | None:
        assert self._nspawn is not None
        pid = self._nspawn.pid
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                            return int(child)
        return None

    def _wait_running(self, deadline: float) -> None:
        state = "not started"
        while time.monotonic() < deadline:
            assert self._nspawn is not None
            if self._nspawn.poll() is not None:
                raise CannotBoot(f"systemd-nspawn exited {self._nspawn.returncode} while booting {self.name}:\n"
                                 f"{self.console_tail()}")
            if self._init is None:
                self._init = self._find_init()
                self._init_started = _start_time(self._init) if self._init else None
            if self._init is not None:
                proc = self._nsenter(["systemctl", "is-system-running"], timeout=30)
                state = proc.stdout.strip() or proc.stderr.strip()
                if state in ("running", "degraded"):
                    if state == "degraded":
                        self.failed_units = self.run(["systemctl", "list-units", "--failed", "--plain",
                                                      "--no-legend"]).stdout.split("\n")
                        warnings.warn(f"server {self.name} booted degraded; failed units: {self.failed_units}",
                                      stacklevel=2)
                    return
            time.sleep(0.1)
        raise CannotBoot(f"{self.name} did not finish booting (systemctl is-system-running: {state}):\n"
                         f"{self.console_tail()}")

    def console_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- inside ---------------------------------------------------------------------------------

    def _nsenter(self, argv: Sequence[str], *, timeout: float, input: str | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.pid), "-a", "env", "-i", *environment, *argv]
        return subprocess.run(full, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout)

    def run(self, argv: Sequence[str], *, timeout: float = 120.0, check: bool = True, input: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the server as root, in a clean environment; CommandFailed if it fails
        (with `check`)."""
        proc = self._nsenter(argv, timeout=timeout, input=input, env=env)
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc)
        return proc

    def copy_in(self, data: bytes | str | Path, dest: str, mode: int = 0o644) -> None:
        """Write a file inside the server (its directory is created): bytes, text, or a host file."""
        raw = data.read_bytes() if isinstance(data, Path) else data.encode() if isinstance(data, str) else data
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "sh", "-c", script, "sh", dest,
                               format(mode, "o")], input=raw, capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"copying into {self.name}:{dest} failed: {proc.stderr.decode(errors='replace')}")

    def read(self, path: str) -> str:
        return self.run(["cat", "--", path]).stdout

    def unit_state(self, unit: str) -> str:
        return self.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.run(["systemctl", "show", "--property=MainPID", "--value", unit]).stdout.strip() or 0)

    def journal(self, unit: str | None = None, lines: int = 80) -> str:
        args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        return self.run([*args, "-u", unit] if unit else args, check=False).stdout

    # -- stopping -------------------------------------------------------------------------------

    def _wait_exit(self, timeout: float) -> bool:
        assert self._nspawn is not None
        try:
            self._nspawn.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to nspawn (the container's systemd powers off), SIGKILL by pid if it hangs."""
        if self._nspawn is None:
            return
        if self._nspawn.poll() is None:
            os.kill(self._nspawn.pid, signal.SIGTERM)
            if not self._wait_exit(timeout):
                os.kill(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait()
        # Killing PID 1 of the container's namespace ends every process in it.
        if self._init is not None and _start_time(self._init) == self._init_started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init, signal.SIGKILL)
        self._init = None

    def poweroff(self, timeout: float = STOP_TIMEOUT) -> None:
        """`systemctl poweroff` inside, as an operator would; wait until the container is gone."""
        self.run(["systemctl", "poweroff"], check=False, timeout=30)
        assert self._nspawn is not None
        if not self._wait_exit(timeout):
            self.stop()
            raise AssertionError(f"{self.name} did not power off within {timeout:.0f} s:\n{self.console_tail()}")
        self._init = None

    def reboot(self) -> None:
        """Power off and boot again on the same root and upper directory (a real reboot keeps the disk)."""
        self.poweroff()
        self.boot()

    def close(self) -> None:
        """Stop the server and delete its upper directory (the cached root is untouched)."""
        try:
            self.stop()
        finally:
            if self.upper.exists():
                shutil.rmtree(self.upper, ignore_errors=True)
            for work in self.workdir.glob(".#upper*"):  # nspawn's overlay workdir, if it was killed
                shutil.rmtree(work, ignore_errors=True)
