"""Push on real Debian 12 servers: systemd as PID 1, real apt and dpkg on `/`, pulld as a service.

One server (booted by conftest's `boot_server`, see tests/realserver.py) is shared by the
module's tests, in order: it joins the fleet with the startup script of
docs/joining-the-fleet.md, then Push deploys, upgrades, rolls back and removes an app with a
real unit, installs a release's Debian dependency with apt, carries out unit requests,
updates pulld itself, and survives a `kill -9` of pulld and a reboot. Every change goes
through Push's own commands (`push release`, `push deploy`, `push rollback`, `push unit`,
`push status --json`; removal through the push server's API, as the CLI has no `push remove`)
against fake-gcs-server on 127.0.0.1, which the server reaches over the shared network. pulld
is woken by the watch endpoint of a `push serve` on 127.0.0.1, so nothing waits for a poll.
Waits poll that push server's API (a `push` process per poll would eat the 2 cores pulld
needs), then require the same of `push status --json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import Emulator, free_port
from push.demo.apps import stage
from push.demo.fleet import http_get
from pushserver import PushServerProcess
from realserver import RealServer

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.gcs, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
SERVER = "web-1"
APPS = ["pulld", "hello", "clock", "treeview", "quotes"]
# Small, in bookworm main, not in the minimal root: what pulld must get from Debian with apt.
DEBIAN_DEPENDENCY = "tree"
# The second pulld release says so in its agent_version: proof that the new code runs.
NEW_AGENT_VERSION = "0.1.0+selfupdate"


@dataclass
class Fleet:
    """The bucket, the config, the push server and the environment the `push` commands run with."""

    store: str
    config: Path
    env: dict[str, str]
    server: PushServerProcess
    emulator: Emulator
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    releases: dict[str, str] = field(default_factory=dict)

    def push(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([sys.executable, "-m", "push.cli", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=REPO)
        if proc.returncode != 0:
            raise AssertionError(f"push {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
        return proc.stdout

    def push_code(self, *args: str, timeout: float = 600) -> tuple[int, str, str]:
        """`push ARGS` whatever its exit code: (code, stdout, stderr)."""
        proc = subprocess.run([sys.executable, "-m", "push.cli", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=REPO)
        return proc.returncode, proc.stdout, proc.stderr

    def status(self) -> dict[str, Any]:
        """This server's entry of `push status --json`."""
        servers = json.loads(self.push("status", SERVER, "--json"))["servers"]
        assert [s["server"] for s in servers] == [SERVER], servers
        return servers[0]

    def view(self) -> dict[str, Any]:
        """The same entry from the push server's API: cheap to poll (a `push` process is not)."""
        servers = json.loads(http_get(f"{self.server.url}/api/v1/fleet?server={SERVER}", timeout=30))["servers"]
        return next(s for s in servers if s["server"] == SERVER)

    def remove(self, app: str) -> None:
        """Take `app` off the server. The CLI has no `push remove` (yet): the push server's API
        is Push's way to do it."""
        r = httpx.post(f"{self.server.url}/api/v1/servers/{SERVER}/apps/{app}/remove", json={"note": "systemd tier"},
                       timeout=30)
        assert r.status_code == 200, r.text

    def package_version(self, release: str) -> str:
        """The Debian version `push release` gave `release` (from `push releases --json`)."""
        app = release.split("/", 1)[0]
        listed = json.loads(self.push("releases", app, "--json"))
        return str(next(r["extra"]["version"] for r in listed if r["name"] == release))


def release_name(output: str) -> str:
    return output.strip().splitlines()[-1]


def wait_for(pred: Callable[[], Any], what: str, server: RealServer, fleet: Fleet,
             timeout: float = 120.0) -> Any:
    """Poll `pred` until it is true; on timeout fail with pulld's journal and the fleet's view."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n"
                         f"push status: {json.dumps(fleet.status(), indent=1)[:4000]}\n"
                         f"pulld's journal:\n{server.journal('pulld', 60)}")


def app_of(state: dict[str, Any], app: str) -> dict[str, Any]:
    return next(a for a in state["apps"] if a["app"] == app)


def converge(fleet: Fleet, server: RealServer, check: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 120.0) -> dict[str, Any]:
    """Wait until `check` holds of web-1's state as the push server sees it, then require it of
    `push status --json` too; returns that state."""
    wait_for(lambda: check(fleet.view()), what, server, fleet, timeout)
    state = fleet.status()
    assert check(state), f"push status --json disagrees on {what}: {json.dumps(state, indent=1)[:4000]}"
    return state


def answer(port: int) -> dict[str, Any] | None:
    """What the app on 127.0.0.1:PORT answers, reached from the host; None if nothing listens."""
    try:
        return json.loads(http_get(f"http://127.0.0.1:{port}/", timeout=2))
    except (OSError, ValueError):
        return None


def installed_version(server: RealServer, package: str) -> str | None:
    proc = server.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Version}", package], check=False)
    status, _, version = proc.stdout.partition("\t")
    return version if proc.returncode == 0 and status.startswith("ii") else None


def startup_script(bucket: str) -> str:
    """The startup script exactly as docs/joining-the-fleet.md shows it, for this bucket."""
    doc = (REPO / "docs/joining-the-fleet.md").read_text()
    section = doc[doc.index("## 2. On the server"):]
    script = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert script is not None, "no ```bash block in section 2 of docs/joining-the-fleet.md"
    text, count = re.subn(r"^BUCKET=YOUR-BUCKET$", f"BUCKET={bucket}", script.group(1), flags=re.MULTILINE)
    assert count == 1, "the script no longer sets BUCKET=YOUR-BUCKET on a line of its own"
    return text


# -- the fleet: bucket, config, push server, releases -------------------------------------------


class PulldRelease:
    """`push release pulld --manifest DIR/packaging/pulld`, as a background process (about a
    minute: pip and lintian); `wait()` gives the release name and keeps the .deb."""

    def __init__(self, fleet: Fleet, source: Path, note: str, *extra: str) -> None:
        self.deb = fleet.workdir / f"{note.replace(' ', '-')}.deb"
        self.log = fleet.workdir / f"{note.replace(' ', '-')}.log"
        argv = [sys.executable, "-m", "push.cli", "release", "pulld", "--manifest", str(source / "packaging/pulld"),
                "--note", note, "-o", str(self.deb), *extra]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=fleet.env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> str:
        code = self.proc.wait(timeout=900)
        output = self.log.read_text(errors="replace")
        assert code == 0, f"push release pulld failed ({code}):\n{output[-3000:]}"
        return release_name(output)

    def package_version(self) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(self.deb), "Version"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def newer_pulld_source(workdir: Path) -> Path:
    """A copy of the checkout's Push whose __version__ is NEW_AGENT_VERSION."""
    copy = workdir / "push-src"
    for part in ("src", "packaging", "pyproject.toml", "README.md"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy2)(REPO / part, copy / part)
    init = copy / "src/push/__init__.py"
    text, count = re.subn(r'^__version__ = ".*"$', f'__version__ = "{NEW_AGENT_VERSION}"', init.read_text(),
                          flags=re.MULTILINE)
    assert count == 1, "no __version__ line in src/push/__init__.py"
    init.write_text(text)
    return copy


# Session-scoped, like pulld_v1: both are set up before the session's Debian root is built,
# so the pulld build overlaps the root's (each takes one to two minutes).
@pytest.fixture(scope="session")
def fleet(fake_gcs: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A new bucket on fake-gcs-server, skiapush.conf for web-1, and `push serve` on 127.0.0.1."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    workdir = tmp_path_factory.mktemp("fleet")
    bucket = f"push-real-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
        client = storage.Client(project="push-local", credentials=AnonymousCredentials())
        client.create_bucket(bucket)
        client.close()
        config = workdir / "skiapush.conf"
        config.write_text(f"[servers.{SERVER}]\nappNames = {json.dumps(APPS)}\n")
        store = f"gs://{bucket}"
        server = PushServerProcess(store, config, workdir / "serve.log", "--no-auth")
        env = {**os.environ, "PUSH_STORE": store, "PUSH_CONFIG": str(config), "PUSH_USER": "systemd-tier"}
        try:
            yield Fleet(store, config, env, server, fake_gcs, workdir)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def pulld_v1(fleet: Fleet) -> Iterator[PulldRelease]:
    """Step 1 of docs/joining-the-fleet.md: release pulld from the checkout."""
    build = PulldRelease(fleet, REPO, "pulld for the fleet")
    yield build
    build.stop()


def release_app(fleet: Fleet, app: str, version: str, *extra: str, tree: Path | None = None) -> str:
    """`push release APP --root DIR` of a demo app (a python3 HTTP service with its unit)."""
    root = tree or stage(app, version, fleet.workdir / "src" / f"{app}-{version}")
    fake_hash = hashlib.sha1(f"{app}{version}".encode()).hexdigest()
    return release_name(fleet.push("release", app, "--root", str(root), "--note", f"{app} v{version}",
                                   "--hash", fake_hash, "--depends", "python3", *extra))


@pytest.fixture(scope="module")
def server(pulld_v1: PulldRelease, fleet: Fleet, boot_server: Callable[[str], RealServer]) -> RealServer:
    # (pulld_v1 is asked for first so that its build starts before the Debian root is built.)
    """A fresh Debian 12 server named web-1, on which pulld will reach the bucket and the push
    server on 127.0.0.1 (a site drop-in, as provisioning would write)."""
    srv = boot_server(SERVER)
    srv.copy_in(f"[Service]\nEnvironment=STORAGE_EMULATOR_HOST={fleet.emulator.url}\n"
                f"Environment=PUSH_URL={fleet.server.url}\n",
                "/etc/systemd/system/pulld.service.d/site.conf")
    return srv


@pytest.fixture(scope="module")
def joined(pulld_v1: PulldRelease, fleet: Fleet, server: RealServer) -> Iterator[dict[str, Any]]:
    """The rest of docs/joining-the-fleet.md: deploy pulld to web-1, run the startup script there.
    Then the newer pulld for test_pulld_updates_itself is built while the other tests run
    (uploaded later than this deploy, so `--latest` above meant the first pulld)."""
    release = pulld_v1.wait()
    fleet.push("deploy", SERVER, "pulld", "--latest")
    server.copy_in(startup_script(fleet.store.removeprefix("gs://")), "/root/join-fleet.sh", 0o755)
    started = time.monotonic()
    # As GCE runs a startup script: a service of the server's systemd, not a child of the test.
    proc = server.run(["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--unit=join-fleet",
                       f"--setenv=STORAGE_EMULATOR_HOST={fleet.emulator.url}", "/bin/bash", "/root/join-fleet.sh"],
                      timeout=600, check=False)
    assert proc.returncode == 0, f"the startup script failed ({proc.returncode}):\n{proc.stdout[-3000:]}" \
                                 f"{proc.stderr[-3000:]}\n{server.journal('join-fleet', 40)}"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # Without lintian (half the build's time): this copy differs from the pulld lintian checked
    # above only in its version string.
    newer = PulldRelease(fleet, newer_pulld_source(fleet.workdir), "a newer pulld", "--hash", head, "--no-lintian")
    try:
        yield {"release": release, "first": pulld_v1, "newer": newer, "seconds": time.monotonic() - started}
    finally:
        newer.stop()


# -- the tests, in the order a server lives them ------------------------------------------------


def test_joining_the_fleet(fleet: Fleet, server: RealServer, joined: dict[str, Any]) -> None:
    release = joined["release"]
    wait_for(lambda: server.unit_state("pulld") == "active", "pulld.service active", server, fleet, timeout=60)
    assert server.run(["systemctl", "is-enabled", "pulld"]).stdout.strip() == "enabled"
    pid = server.main_pid("pulld")
    cmdline = server.read(f"/proc/{pid}/cmdline").split("\0")
    assert "/usr/bin/pulld" in cmdline and cmdline[-3:] == ["--server", SERVER, ""], cmdline
    assert installed_version(server, "push-pulld") == joined["first"].package_version()

    def reported(state: dict[str, Any]) -> bool:
        pulld = app_of(state, "pulld")
        return bool(state["in_sync"] and pulld["actual"] == pulld["desired"] == release)
    converge(fleet, server, reported, "pulld to report itself installed")

    # At every later boot the script finds pulld installed and does nothing at all.
    again = server.run(["bash", "/root/join-fleet.sh"], env={"STORAGE_EMULATOR_HOST": fleet.emulator.url})
    assert again.stdout == again.stderr == ""
    assert server.main_pid("pulld") == pid


def test_deploy_upgrade_rollback_remove(fleet: Fleet, server: RealServer, joined: dict[str, Any]) -> None:
    port = fleet.ports["hello"] = free_port()
    server.copy_in(f"PORT={port}\n", "/etc/default/hello")  # the host's own setting, not the package's
    v1 = fleet.releases["hello-1"] = release_app(fleet, "hello", "1")
    v2 = fleet.releases["hello-2"] = release_app(fleet, "hello", "2")

    def runs(release: str | None, version: str | None) -> Callable[[dict[str, Any]], bool]:
        """The fleet's view, systemd's, dpkg's and the port's agree that `release` runs (None: nothing)."""
        package_version = fleet.package_version(release) if release else None

        def check(state: dict[str, Any]) -> bool:
            app = app_of(state, "hello")
            served = answer(port)
            systemd = server.unit_state("hello.service")
            if release is None:
                return app["actual"] is None and app["desired"] is None and app["units"] == {} \
                    and served is None and systemd != "active"
            return app["actual"] == app["desired"] == release and app["units"] == {"hello.service": "active"} \
                and systemd == "active" and served is not None and served["version"] == version \
                and installed_version(server, "push-hello") == package_version
        return check

    fleet.push("deploy", SERVER, "hello", v1)
    converge(fleet, server, runs(v1, "1"), "hello v1 running")
    assert answer(port) == {"app": "hello", "version": "1", "server": SERVER, "message": "Hello, world!"}
    first_pid = server.main_pid("hello.service")

    fleet.push("deploy", SERVER, "hello", v2)
    converge(fleet, server, runs(v2, "2"), "hello v2 running")
    assert server.main_pid("hello.service") != first_pid, "the upgrade did not restart the unit"
    assert server.run(["systemctl", "is-enabled", "hello.service"]).stdout.strip() == "enabled"

    fleet.push("rollback", SERVER, "hello")
    converge(fleet, server, runs(v1, "1"), "hello rolled back to v1")

    fleet.remove("hello")
    converge(fleet, server, runs(None, None), "hello removed")
    assert installed_version(server, "push-hello") is None
    assert server.run(["test", "-e", "/etc/systemd/system/hello.service"], check=False).returncode == 1
    assert server.run(["test", "-e", "/usr/local/bin/hello"], check=False).returncode == 1
    assert server.unit_state("hello.service") == "inactive"


CRASH = """#!/bin/sh
echo "quotes: cannot read /var/lib/quotes/quotes.db: no such file" >&2
exit 1
"""


def test_health_reverts_a_crashing_release_and_a_hung_check(fleet: Fleet, server: RealServer,
                                                            joined: dict[str, Any]) -> None:
    """Health under systemd: judged through systemctl show; a release whose unit crash-loops
    (Restart=always, until systemd's start limit) is reverted with its journal lines, and so is
    one whose check command hangs past its timeout (killed). Shown by push status --json."""
    port = fleet.ports["quotes"] = free_port()
    server.copy_in(f"PORT={port}\n", "/etc/default/quotes")
    check = ("--health-http", "http://127.0.0.1:${PORT}/", "--health-within", "20", "--no-lintian")
    v1 = release_app(fleet, "quotes", "1", *check)
    crash_tree = stage("quotes", "2", fleet.workdir / "src/quotes-crash")
    (crash_tree / "usr/local/bin/quotes").write_text(CRASH)
    crash = release_app(fleet, "quotes", "2", *check, tree=crash_tree)
    hang = release_app(fleet, "quotes", "1", "--health-command", "/bin/sleep 31.5", "--health-timeout", "1",
                       "--health-within", "3", "--no-lintian", tree=stage("quotes", "1", fleet.workdir / "src/q-h"))

    fleet.push("deploy", SERVER, "quotes", v1)
    state = converge(fleet, server, lambda st: app_of(st, "quotes")["actual"] == v1
                     and app_of(st, "quotes")["health"] == "healthy", "quotes v1 healthy")
    assert "health check passed" in app_of(state, "quotes")["health_detail"]

    fleet.push("deploy", SERVER, "quotes", crash)
    state = converge(fleet, server, lambda st: app_of(st, "quotes")["reverted_from"] == crash
                     and app_of(st, "quotes")["actual"] == v1, "the crashing quotes reverted to v1", timeout=180)
    quotes = app_of(state, "quotes")
    assert quotes["health"] == "unhealthy" and {"unhealthy", "reverted"} <= set(quotes["marks"])
    assert "cannot read /var/lib/quotes/quotes.db" in quotes["health_detail"], quotes["health_detail"]
    wait_for(lambda: (answer(port) or {}).get("version") == "1", "quotes v1 answering again", server, fleet)
    assert server.unit_state("quotes.service") == "active"

    fleet.push("deploy", SERVER, "quotes", hang)  # the file changes: a new release is tried
    state = converge(fleet, server, lambda st: app_of(st, "quotes")["reverted_from"] == hang
                     and app_of(st, "quotes")["actual"] == v1, "quotes with a hung check reverted", timeout=120)
    assert "did not finish within its 1s timeout: killed" in app_of(state, "quotes")["health_detail"]
    cmdlines = server.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"], check=False).stdout
    assert "sleep 31.5" not in cmdlines  # the hung check was killed

    fleet.remove("quotes")  # leave the server in sync for the tests after this one
    converge(fleet, server, lambda st: app_of(st, "quotes")["actual"] is None, "quotes removed")


def test_wait_sees_a_failing_http_check_reverted_and_revert_false_kept(fleet: Fleet, server: RealServer,
                                                                         joined: dict[str, Any]) -> None:
    """`push deploy --wait` through the push server, under systemd: a release whose HTTP check
    answers 503 is reverted (exit 8, with the check's words); one that says `revert = false`
    stays installed and unhealthy (exit 8 at once, its unit left running); a good one exits 0."""
    port = fleet.ports["clock"] = free_port()
    server.copy_in(f"PORT={port}\n", "/etc/default/clock")
    check = ("--health-http", "http://127.0.0.1:${PORT}/healthz", "--health-within", "5", "--no-lintian")
    good = release_app(fleet, "clock", "1", *check, tree=stage("clock", "1", fleet.workdir / "src/clock-good"))
    failing = release_app(fleet, "clock", "2", *check,
                          tree=stage("clock", "2", fleet.workdir / "src/clock-503", healthy=False))
    kept = release_app(fleet, "clock", "3", *check, "--no-revert",  # ("3": its own hash, its own name)
                       tree=stage("clock", "2", fleet.workdir / "src/clock-keep", healthy=False))
    url = ("--push-url", fleet.server.url)

    code, out, err = fleet.push_code("deploy", SERVER, "clock", good, "--wait", "--timeout", "120", *url)
    assert code == 0 and out.splitlines()[-1].endswith("installed, healthy"), out + err

    code, out, err = fleet.push_code("deploy", SERVER, "clock", failing, "--wait", "--timeout", "120", *url)
    assert code == 8, out + err
    last = out.splitlines()[-1]
    assert last.startswith(f"{SERVER}  clock  failed: {failing} was not healthy and was reverted to {good}"), last
    assert "/healthz: HTTP 503: cannot reach the database" in last, last
    state = converge(fleet, server, lambda st: app_of(st, "clock")["actual"] == good
                     and app_of(st, "clock")["health"] == "unhealthy", "clock reverted to v1")
    assert {"unhealthy", "reverted"} <= set(app_of(state, "clock")["marks"])
    wait_for(lambda: (answer(port) or {}).get("version") == "1", "clock v1 answering again", server, fleet)

    code, out, err = fleet.push_code("deploy", SERVER, "clock", kept, "--wait", "--timeout", "120", *url)
    assert code == 8, out + err
    assert out.splitlines()[-1].startswith(f"{SERVER}  clock  failed: not healthy within 5s: health check "
                                           "failed: "), out
    state = fleet.status()
    clock = app_of(state, "clock")
    assert (clock["actual"], clock["reverted_from"], clock["health"]) == (kept, None, "unhealthy")
    assert "unhealthy" in clock["marks"] and "reverted" not in clock["marks"]
    assert server.unit_state("clock.service") == "active"  # kept running, as it said
    assert (answer(port) or {}).get("version") == "2"

    code, out, err = fleet.push_code("deploy", SERVER, "clock", good, "--wait", "--timeout", "120", *url)
    assert code == 0, out + err


def test_a_debian_dependency_is_installed_with_apt(fleet: Fleet, server: RealServer,
                                                    joined: dict[str, Any]) -> None:
    assert installed_version(server, DEBIAN_DEPENDENCY) is None, "the root already has it: pick another"
    tree = fleet.workdir / "src" / "treeview"
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "usr/local/bin/treeview").write_text(f"#!/bin/sh\nexec {DEBIAN_DEPENDENCY} \"$@\"\n")
    (tree / "usr/local/bin/treeview").chmod(0o755)
    release = release_app(fleet, "treeview", "1", "--depends", DEBIAN_DEPENDENCY, tree=tree)
    # Another apt holds the dpkg lock meanwhile (unattended-upgrades, a startup script): pulld
    # waits for it, as dpkg itself would, rather than failing the release.
    server.run(["systemd-run", "--quiet", "--unit=other-apt", "python3", "-c",
                "import fcntl, time; f = open('/var/lib/dpkg/lock-frontend', 'w'); fcntl.lockf(f, fcntl.LOCK_EX); "
                "time.sleep(600)"])
    fleet.push("deploy", SERVER, "treeview", release)

    def pulld_events() -> list[dict[str, Any]]:
        lines = server.run(["journalctl", "-u", "pulld", "-o", "cat"]).stdout.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def pulld_gave_up() -> bool:
        return any(e.get("event") == "app.error" and e.get("app") == "treeview" for e in pulld_events())

    def apt_runs() -> bool:
        return server.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -q '[a]pt-get .*satisfy'"],
                          check=False).returncode == 0
    wait_for(lambda: apt_runs() or pulld_gave_up(), "pulld to run apt-get satisfy", server, fleet)
    held_until = time.monotonic() + 8  # the other apt's run: longer than pulld's own retry takes
    while time.monotonic() < held_until and not pulld_gave_up():
        time.sleep(0.3)
    server.run(["systemctl", "stop", "other-apt"])
    converge(fleet, server, lambda state: app_of(state, "treeview")["actual"] == release, "treeview installed",
             timeout=240)
    assert not [e for e in pulld_events() if e.get("event") == "app.error"]
    assert installed_version(server, DEBIAN_DEPENDENCY) is not None
    assert installed_version(server, "push-treeview") is not None
    listing = server.run(["/usr/local/bin/treeview", "-L", "1", "/etc/systemd"]).stdout
    assert "system" in listing
    assert any(e.get("event") == "apt.satisfy" and DEBIAN_DEPENDENCY in e.get("depends", "") for e in pulld_events())
    # Installed for the release, it is marked so: once the release is gone, apt may remove it.
    assert DEBIAN_DEPENDENCY in server.run(["apt-mark", "showauto"]).stdout.split()
    fleet.remove("treeview")
    converge(fleet, server, lambda state: installed_version(server, "push-treeview") is None
             and app_of(state, "treeview")["actual"] is None, "treeview removed")
    assert installed_version(server, DEBIAN_DEPENDENCY) is not None, "pulld removes only what it installed with dpkg"
    autoremove = server.run(["apt-get", "autoremove", "--simulate"]).stdout
    assert f"Remv {DEBIAN_DEPENDENCY} " in autoremove, autoremove


def test_unit_requests_go_through_systemctl(fleet: Fleet, server: RealServer, joined: dict[str, Any]) -> None:
    port = fleet.ports["clock"] = free_port()
    server.copy_in(f"PORT={port}\n", "/etc/default/clock")
    release = release_app(fleet, "clock", "1")
    fleet.push("deploy", SERVER, "clock", release)

    def unit_is(active: str) -> Callable[[dict[str, Any]], bool]:
        def check(state: dict[str, Any]) -> bool:
            systemd = server.unit_state("clock.service")
            reported = app_of(state, "clock")["units"].get("clock.service")
            serving = answer(port) is not None
            return systemd == reported == active and serving == (active == "active")
        return check

    converge(fleet, server, unit_is("active"), "clock running")
    fleet.push("unit", SERVER, "clock.service", "stop")
    converge(fleet, server, unit_is("inactive"), "clock stopped")
    # Stopped by systemctl, not killed: systemd does not bring it back (Restart=always).
    assert server.run(["systemctl", "show", "--property=Result", "--value", "clock.service"]).stdout.strip() \
        == "success"
    fleet.push("unit", SERVER, "clock.service", "start")
    converge(fleet, server, unit_is("active"), "clock started")
    before = server.main_pid("clock.service")
    fleet.push("unit", SERVER, "clock.service", "restart")
    converge(fleet, server, lambda state: server.main_pid("clock.service") not in (0, before)
             and unit_is("active")(state), "clock restarted")
    history = json.loads(fleet.push("history", SERVER, "--app", "clock", "--json"))
    assert [h["action"] for h in history][:3] == ["unit-restart", "unit-start", "unit-stop"], history

    # pulld's own unit: systemd restarts pulld once, cleanly, and the request is marked done.
    pulld = server.main_pid("pulld")
    stops_before = server.journal("pulld", 10000).count("Stopping pulld.service")
    fleet.push("unit", SERVER, "pulld.service", "restart")
    wait_for(lambda: server.main_pid("pulld") not in (0, pulld), "systemd to restart pulld", server, fleet)
    converge(fleet, server, lambda state: state["in_sync"] and state["last_seen"] > history[0]["time"],
             "the restarted pulld to report")
    last = json.loads(http_get(f"{fleet.server.url}/api/v1/servers/{SERVER}/requests", timeout=30))[-1]
    assert (last["unit"], last["action"], last["state"]) == ("pulld.service", "restart", "done"), last
    assert server.run(["systemctl", "show", "--property=Result", "--value", "pulld"]).stdout.strip() == "success"
    assert server.journal("pulld", 10000).count("Stopping pulld.service") == stops_before + 1


def test_pulld_updates_itself(fleet: Fleet, server: RealServer, joined: dict[str, Any]) -> None:
    new = joined["newer"].wait()
    new_version = joined["newer"].package_version()
    pid = server.main_pid("pulld")
    restarts = server.run(["systemctl", "show", "--property=NRestarts", "--value", "pulld"]).stdout.strip()
    fleet.push("deploy", SERVER, "pulld", "--latest")

    def updated(state: dict[str, Any]) -> bool:
        pulld = app_of(state, "pulld")
        return bool(state["agent_version"] == NEW_AGENT_VERSION and pulld["actual"] == pulld["desired"] == new
                    and state["in_sync"])
    converge(fleet, server, updated, "the new pulld to run and converge", timeout=180)
    assert installed_version(server, "push-pulld") == new_version
    assert server.unit_state("pulld") == "active"
    # It re-executed itself: the same process under systemd, not a restart by systemd.
    assert server.main_pid("pulld") == pid
    assert server.run(["systemctl", "show", "--property=NRestarts", "--value", "pulld"]).stdout.strip() == restarts
    assert f'"version": "{NEW_AGENT_VERSION}"' in server.journal("pulld", 200)
    # The apps it runs were left running.
    assert answer(fleet.ports["clock"]) is not None


def test_kill_and_reboot(fleet: Fleet, server: RealServer, joined: dict[str, Any]) -> None:
    clock = app_of(fleet.status(), "clock")["desired"]
    assert clock is not None, "test_unit_requests_go_through_systemctl deploys clock first"
    pid = server.main_pid("pulld")
    server.run(["sh", "-c", f"kill -9 {pid}"])  # minbase has no /bin/kill: the shell's
    # A change made while pulld is down is picked up by the pulld systemd brings back.
    port = fleet.ports["hello"]
    hello = fleet.releases["hello-2"]
    fleet.push("deploy", SERVER, "hello", hello)
    wait_for(lambda: server.main_pid("pulld") not in (0, pid) and server.unit_state("pulld") == "active",
             "systemd to restart pulld", server, fleet, timeout=60)
    converge(fleet, server, lambda state: app_of(state, "hello")["actual"] == hello
             and (answer(port) or {}).get("version") == "2", "hello v2 installed by the restarted pulld")

    before = fleet.status()["last_seen"]
    server.reboot()
    assert server.unit_state("pulld") == "active"

    def converged(state: dict[str, Any]) -> bool:
        apps = {a["app"]: a for a in state["apps"]}
        return bool(state["last_seen"] > before and state["in_sync"]
                    and all(a["actual"] == a["desired"] for a in apps.values())
                    and apps["hello"]["units"] == {"hello.service": "active"}
                    and apps["clock"]["units"] == {"clock.service": "active"})
    converge(fleet, server, converged, "every app listed to run after the reboot")
    assert (answer(port) or {}).get("version") == "2"
    assert answer(fleet.ports["clock"]) is not None
    for unit in ("pulld", "hello.service", "clock.service"):
        assert server.unit_state(unit) == "active", server.journal(unit)
    assert server.run(["dpkg", "--audit"]).stdout == ""
