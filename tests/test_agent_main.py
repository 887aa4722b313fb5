"""`pulld` as a process: --once, kill -9 at bad moments, each trigger, /metrics, self-update.

pulld runs as a subprocess in its own process group (as systemd would run it in its own
cgroup), so `kill -9` of the group takes dpkg and maintainer scripts down with it. The
units it starts run in their own sessions and are stopped by pid at the end of each test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agentpkgs import make_release, set_server_file
from emulators import free_port
from push import status
from push.agent.dpkg import Dpkg
from push.layout import server_signature_key
from push.signing import sign_server_file, write_key_pair
from push.store import Store, open_store
from waiting import wait_for

# pulld as a process: seconds each
pytestmark = pytest.mark.slow

SERVER = "s1"


class Pulld:
    """One pulld subprocess (own process group); stop() or kill() by its pid."""

    def __init__(self, store_url: str, root: Path, *args: str, env: dict[str, str] | None = None,
                 server: str | None = SERVER) -> None:
        self.root = root
        self.log_path = root.parent / f"pulld-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "push.agent.main", "--store", store_url, "--root", str(root),
                "--metrics-port", "0", *args]
        if server:
            argv += ["--server", server]
        full_env = {**os.environ, **(env or {})}
        if "GCE_METADATA_HOST" not in (env or {}):
            full_env.pop("GCE_METADATA_HOST", None)  # only the GCE test uses a metadata server
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group, as systemd kills a cgroup
        self.proc.wait()
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_units(root: Path) -> None:
    """Stop what the sandbox supervisor left running in `root`, by the pids in its pid files."""
    for pid_file in (root / "run/push-units").glob("*.pid"):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError):
            pass


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for r in made:
        stop_units(r)


@pytest.fixture
def root(tmp_path: Path, roots: list[Path]) -> Path:
    r = tmp_path / "root"
    roots.append(r)
    return r


@pytest.fixture
def procs() -> Iterator[list[Pulld]]:
    made: list[Pulld] = []
    yield made
    for p in made:
        if p.proc.poll() is None:
            p.stop()


def installed(root: Path) -> dict[str, str]:
    return {p.package: p.version for p in Dpkg(root).installed().values() if p.ok}


def report(store: Store) -> status.AgentStatus | None:
    return status.read(store, SERVER)


# -- --once ------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["local", "s3"], indirect=True)
def test_once_converges_and_exits_zero(store_url: str, tmp_path: Path, root: Path) -> None:
    store = open_store(store_url)
    h1 = make_release(store, tmp_path, "hello", 1)
    set_server_file(store, SERVER, [h1.name])
    p = Pulld(store_url, root, "--once")
    assert p.wait() == 0, p.log()
    assert installed(root) == {"push-hello": "1.1"}
    rep = report(store)
    assert rep is not None and rep.in_sync and rep.apps["hello"].units == {"hello.service": "active"}
    # The unit outlives --once (the next pulld adopts it), as a systemd unit would.
    assert (root / "run/push-units/hello.service.pid").exists()
    assert any(e.get("event") == "install.start" for e in p.events())  # structured (JSON) logs


def test_once_exits_non_zero_unless_in_sync(tmp_path: Path, root: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    bad = make_release(store, tmp_path, "hello", 1, tamper=True)
    set_server_file(store, SERVER, [bad.name])
    p = Pulld(url, root, "--once")
    assert p.wait() == 1
    rep = report(store)
    assert rep is not None and not rep.in_sync and "sha256" in (rep.apps["hello"].error or "")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "push.agent.main", "--interval", "soon"], capture_output=True)
    assert proc.returncode == 2
    help_text = subprocess.run([sys.executable, "-m", "push.agent.main", "--help"], capture_output=True,
                               text=True).stdout
    assert "--root" in help_text and "--push-url" in help_text


# -- kill -9 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["local", "gcs"], indirect=True)
def test_kill_9_mid_download_then_restart_converges(store_url: str, tmp_path: Path, root: Path) -> None:
    store = open_store(store_url)
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2, payload_size=3 * 1024 * 1024, compression="none")
    set_server_file(store, SERVER, [h1.name])
    assert Pulld(store_url, root, "--once").wait() == 0
    unit_pid = json.loads((root / "run/push-units/hello.service.pid").read_text())["pid"]

    set_server_file(store, SERVER, [h2.name])
    p = Pulld(store_url, root, "--once", "--download-rate-limit", "1M")
    downloads = root / "var/lib/pulld/downloads"
    wait_for(lambda: any(f.stat().st_size > 0 for f in downloads.glob("*.partial")), what="a partial download")
    p.kill9()
    assert list(downloads.glob("*.partial"))  # really killed mid-download
    assert installed(root) == {"push-hello": "1.1"}  # the old release is untouched ...
    rep = report(store)
    assert rep is not None and rep.apps["hello"].installed == h1.name  # ... and reported as such

    p2 = Pulld(store_url, root, "--once")
    assert p2.wait() == 0, p2.log()
    assert installed(root) == {"push-hello": "1.2"}
    assert not list(downloads.iterdir())  # downloads started over; nothing left behind
    assert p2.has_event("unit.adopt")  # the running unit was found through its pid file
    assert unit_pid != json.loads((root / "run/push-units/hello.service.pid").read_text())["pid"]
    rep = report(store)
    assert rep is not None and rep.in_sync and rep.apps["hello"].installed == h2.name


@pytest.mark.parametrize("store_url", ["local", "gcs"], indirect=True)
def test_kill_9_mid_dpkg_then_restart_finishes_the_work(store_url: str, tmp_path: Path, root: Path) -> None:
    store = open_store(store_url)
    h1 = make_release(store, tmp_path, "hello", 1)
    slow = 'touch "$DPKG_ROOT/var/lib/hello/postinst-running"; sleep 1'
    h2 = make_release(store, tmp_path, "hello", 2, postinst_extra=slow)
    set_server_file(store, SERVER, [h1.name])
    assert Pulld(store_url, root, "--once").wait() == 0

    set_server_file(store, SERVER, [h2.name])
    p = Pulld(store_url, root, "--once")
    wait_for(lambda: (root / "var/lib/hello/postinst-running").exists(), what="the postinst to run")
    p.kill9()
    # dpkg was killed in the middle of configuring: it knows, and so will the agent.
    assert Dpkg(root).audit() != ""
    assert installed(root) == {}  # push-hello is half-configured, not installed
    rep = report(store)
    assert rep is not None and not rep.in_sync and rep.apps["hello"].installed != h2.name

    p2 = Pulld(store_url, root, "--once")
    assert p2.wait() == 0, p2.log()
    assert p2.has_event("recover.dpkg")
    assert Dpkg(root).audit() == ""
    assert installed(root) == {"push-hello": "1.2"}
    rep = report(store)
    assert rep is not None and rep.in_sync and rep.apps["hello"].installed == h2.name
    assert rep.apps["hello"].units == {"hello.service": "active"}
    assert (root / "run/hello/running").read_text().split()[0] == "1.2"


# -- triggers ----------------------------------------------------------------------------------


class WatchServer:
    """The push server's watch endpoint, as the protocol says, on 127.0.0.1."""

    def __init__(self, port: int = 0, rev: int = 0) -> None:
        self.rev = rev
        self.cond = threading.Condition()
        self.requests = 0
        self.waiting: list[str] = []  # the `since` of each long poll waiting now
        self.closing = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                if not url.path.startswith("/api/v1/watch/"):
                    self.send_error(404)
                    return
                outer.requests += 1
                since = q.get("since", [None])[0]
                timeout = float(q.get("timeout", ["55"])[0])
                with outer.cond:
                    if since is not None:
                        outer.waiting.append(since)
                        outer.cond.wait_for(lambda: str(outer.rev) != since or outer.closing, timeout)
                        outer.waiting.remove(since)
                    rev = str(outer.rev)
                if outer.closing:  # going down: drop the connection, as a dying server does
                    self.close_connection = True
                    return
                body = json.dumps({"rev": rev, "changed": since is not None and rev != since}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def bump(self) -> None:
        with self.cond:
            self.rev += 1
            self.cond.notify_all()

    def caught_up(self) -> bool:
        """A long poll waits for a change of the current rev: every bump has been seen."""
        with self.cond:
            return str(self.rev) in self.waiting

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


class MetadataServer:
    """A fake GCE metadata server on 127.0.0.1: instance name and attributes/pushrev."""

    def __init__(self, instance: str) -> None:
        self.value = "initial"
        self.etag = 1
        self.closed = False
        self.waiting: list[str] = []  # the last_etag of each wait_for_change request waiting now
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, text: str, etag: str | None = None) -> None:
                body = text.encode()
                self.send_response(200)
                self.send_header("Metadata-Flavor", "Google")
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                with contextlib.suppress(OSError):  # pulld may be gone: a long poll outlives it
                    self.end_headers()
                    self.wfile.write(body)

            def do_GET(self) -> None:
                if self.headers.get("Metadata-Flavor") != "Google":
                    self.send_error(403)
                    return
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                if url.path == "/computeMetadata/v1/instance/name":
                    self._send(instance)
                elif url.path == "/computeMetadata/v1/instance/attributes/pushrev":
                    with outer.cond:
                        if q.get("wait_for_change") == ["true"]:
                            last = q.get("last_etag", [""])[0]
                            timeout = float(q.get("timeout_sec", ["60"])[0])
                            outer.waiting.append(last)
                            outer.cond.wait_for(lambda: f"e{outer.etag}" != last or outer.closed, timeout)
                            outer.waiting.remove(last)
                        value, etag = outer.value, f"e{outer.etag}"
                    self._send(value, etag)
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def set(self, value: str) -> None:
        with self.cond:
            self.value = value
            self.etag += 1
            self.cond.notify_all()

    def watched(self) -> bool:
        """A wait_for_change request waits on the current ETag."""
        with self.cond:
            return f"e{self.etag}" in self.waiting

    def close(self) -> None:
        # Long polls still waiting would answer a gone pulld after the test, on its stderr.
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def watch_server() -> Iterator[WatchServer]:
    s = WatchServer()
    yield s
    s.close()


def _steps(metrics_url: str) -> float:
    text = httpx.get(metrics_url, trust_env=False).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("pulld_steps_total"))


@pytest.mark.parametrize("store_url", ["local", "s3"], indirect=True)
def test_watch_trigger_runs_one_step_per_burst(store_url: str, tmp_path: Path, root: Path,
                                               watch_server: WatchServer, procs: list[Pulld]) -> None:
    store = open_store(store_url)
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2)
    set_server_file(store, SERVER, [h1.name])
    port = free_port()
    p = Pulld(store_url, root, "--push-url", watch_server.url, "--interval", "600", "--metrics-port", str(port))
    procs.append(p)
    metrics = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: installed(root) == {"push-hello": "1.1"}, what="the first step")
    wait_for(lambda: watch_server.requests >= 2, what="the long-poll")  # first answer, then waiting
    before = _steps(metrics)
    set_server_file(store, SERVER, [h2.name])
    for _ in range(20):  # a burst of triggers ...
        watch_server.bump()
    wait_for(lambda: installed(root) == {"push-hello": "1.2"}, timeout=10, what="the triggered install")
    wait_for(watch_server.caught_up, what="the trigger to see the last bump")
    # No wake-up can come after this; a quiet moment lets any step it caused show.
    time.sleep(0.3)
    assert 1 <= _steps(metrics) - before <= 3  # ... runs one step (or two), not twenty
    assert p.has_event("trigger")


@pytest.mark.parametrize("store_url", ["local", "gcs"], indirect=True)
def test_gce_metadata_trigger_and_instance_name(store_url: str, tmp_path: Path, root: Path,
                                                procs: list[Pulld]) -> None:
    url = store_url
    store = open_store(url)
    metadata = MetadataServer("gce-vm-1")
    try:
        h1 = make_release(store, tmp_path, "hello", 1)
        h2 = make_release(store, tmp_path, "hello", 2)
        set_server_file(store, "gce-vm-1", [h1.name])
        p = Pulld(url, root, "--interval", "600", env={"GCE_METADATA_HOST": metadata.host}, server=None)
        procs.append(p)
        wait_for(lambda: installed(root) == {"push-hello": "1.1"}, what="the first step")
        wait_for(lambda: status.read(store, "gce-vm-1"), what="a report under the instance name")
        wait_for(metadata.watched, what="the trigger to wait with wait_for_change")
        set_server_file(store, "gce-vm-1", [h2.name])
        metadata.set(f"{h2.name} 1234")
        wait_for(lambda: installed(root) == {"push-hello": "1.2"}, timeout=10, what="the GCE-triggered install")
        assert p.has_event("trigger")
    finally:
        for pr in procs:
            pr.stop()
        metadata.close()


@pytest.mark.parametrize("store_url", ["local", "s3"], indirect=True)
def test_poll_trigger_and_sigterm_stops_units(store_url: str, tmp_path: Path, root: Path,
                                              procs: list[Pulld]) -> None:
    url = store_url
    store = open_store(url)
    h1 = make_release(store, tmp_path, "hello", 1)
    set_server_file(store, SERVER, [])
    p = Pulld(url, root, "--interval", "0.2")
    procs.append(p)
    wait_for(lambda: report(store), what="the first report")
    set_server_file(store, SERVER, [h1.name])
    wait_for(lambda: installed(root) == {"push-hello": "1.1"}, what="the polled install")
    pid_file = root / "run/push-units/hello.service.pid"
    wait_for(pid_file.exists, what="the unit")
    unit_pid = json.loads(pid_file.read_text())["pid"]
    assert p.stop() == 0
    assert not Path(f"/proc/{unit_pid}").exists() or "Z" in Path(f"/proc/{unit_pid}/stat").read_text().split(")")[1][:3]
    assert not pid_file.exists()


def test_failures_back_off_instead_of_retrying_every_poll(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    bad = make_release(store, tmp_path, "hello", 1, tamper=True)
    set_server_file(store, SERVER, [bad.name])
    p = Pulld(url, root, "--interval", "0.05", "--backoff", "0.4", "--backoff-max", "5")
    procs.append(p)

    def attempt_times() -> list[float]:
        return [float(str(e["t"])) for e in p.events() if e.get("event") == "install.start"]

    attempts = wait_for(lambda: (t := attempt_times())[2:] and t, what="three attempts")
    p.stop()
    # Polling every 0.05 s would retry at once; the backoff waits 0.4 s, then 0.8 s (±20 %).
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.4 * 0.8 and gaps[1] >= 0.8 * 0.8, gaps


def test_self_update_reexecs_and_carries_on(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    p1 = make_release(store, tmp_path, "pulld", 1)
    h1 = make_release(store, tmp_path, "hello", 1)
    set_server_file(store, SERVER, [p1.name, h1.name])
    p = Pulld(url, root, "--interval", "600")
    procs.append(p)
    wait_for(lambda: [e for e in p.events() if e.get("event") == "start"][1:], what="pulld to restart itself")
    starts = [e for e in p.events() if e.get("event") == "start"]
    assert len(starts) == 2 and p.proc.poll() is None  # same process, re-executed
    wait_for(lambda: (report(store) or status.AgentStatus("x", "", "")).in_sync, what="in sync after restart")
    assert installed(root) == {"push-pulld": "1.1", "push-hello": "1.1"}
    # The re-executed agent adopted hello's unit instead of starting a second copy.
    assert p.has_event("unit.adopt")
    assert len([e for e in p.events() if e.get("event") == "install.done"]) == 2


def test_self_update_when_signed(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    """pulld's own release is verified like any other, and still re-executes into the new
    pulld (which keeps the trust flags and /etc/default's PULLD_* variables)."""
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    release_key, _, release_pub = write_key_pair(tmp_path / "keys", "release")
    deploy_key, _, deploy_pub = write_key_pair(tmp_path / "keys", "deploy")
    p1 = make_release(store, tmp_path, "pulld", 1, signing_key=release_key)
    h1 = make_release(store, tmp_path, "hello", 1, signing_key=release_key)
    set_server_file(store, SERVER, [p1.name, h1.name])
    data = store.get(f"server/{SERVER}.json")[0]  # type: ignore[index]
    store.put(server_signature_key(SERVER), sign_server_file(SERVER, data, deploy_key, None).to_bytes())
    p = Pulld(url, root, "--interval", "600", "--trust-release-key", str(release_pub),
              env={"PULLD_TRUST_DEPLOY_KEYS": str(deploy_pub)})
    procs.append(p)
    wait_for(lambda: [e for e in p.events() if e.get("event") == "start"][1:], what="pulld to restart itself")
    assert [e["trust"] for e in p.events() if e.get("event") == "start"] == ["verified", "verified"]
    rep = wait_for(lambda: (r := report(store)) is not None and r.in_sync and r, what="in sync after restart")
    assert rep.trust is not None and rep.trust.mode == "verified" and rep.trust.keyid == deploy_key.key_id
    assert installed(root) == {"push-pulld": "1.1", "push-hello": "1.1"}


def test_a_key_that_cannot_be_trusted_stops_pulld(tmp_path: Path, root: Path) -> None:
    key, private, _ = write_key_pair(tmp_path / "keys", "deploy")
    for args, words in ((["--trust-deploy-key", str(private)], "is a private key"),
                        (["--trust-release-key", str(tmp_path / "nope.pub")], "cannot read public key"),
                        (["--revoked-key", "deploy"], "is not 16 hex digits")):
        p = Pulld(f"file://{tmp_path / 'store'}", root, "--once", *args)
        assert p.wait() != 0
        assert words in p.log().splitlines()[-1], p.log()


def test_metrics_endpoint(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    url = f"file://{tmp_path / 'store'}"
    set_server_file(open_store(url), SERVER, [])
    port = free_port()
    p = Pulld(url, root, "--interval", "600", "--metrics-port", str(port))
    procs.append(p)
    text = wait_for(lambda: _get(f"http://127.0.0.1:{port}/metrics"), what="/metrics")
    assert "pulld_steps_total" in str(text) and "pulld_in_sync" in str(text)


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, trust_env=False, timeout=2).text
    except httpx.HTTPError:
        return None


def test_a_release_built_by_push_release_deploys(tmp_path: Path, root: Path) -> None:
    """The builder's package (push-APP, build-time version, its own maintainer scripts)."""
    stage = tmp_path / "stage"
    (stage / "usr/local/bin").mkdir(parents=True)
    (stage / "etc/systemd/system").mkdir(parents=True)
    exe = stage / "usr/local/bin/demo"
    exe.write_text("#!/bin/sh\nexec sleep 3600\n")
    exe.chmod(0o755)
    (stage / "etc/systemd/system/demo.service").write_text(
        "[Unit]\nDescription=demo\n\n[Service]\nExecStart=/usr/local/bin/demo\n\n[Install]\nWantedBy=multi-user.target\n")
    url = f"file://{tmp_path / 'store'}"
    env = {k: v for k, v in os.environ.items() if k != "GCE_METADATA_HOST"}
    built = subprocess.run([sys.executable, "-m", "push.cli", "release", "demo", "--root", str(stage), "--note", "t",
                            "--hash", "0123456789abcdef0123456789abcdef01234567", "--no-lintian", "--store", url],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    if built.returncode != 0:
        pytest.skip(f"push release is not usable here: {built.stderr.strip()[-300:]}")
    name = built.stdout.strip().splitlines()[-1]
    store = open_store(url)
    set_server_file(store, SERVER, [name])
    p = Pulld(url, root, "--once")
    assert p.wait() == 0, p.log()
    pkgs = installed(root)
    assert list(pkgs) == ["push-demo"]
    rep = report(store)
    assert rep is not None and rep.in_sync and rep.apps["demo"].installed == name
    assert rep.apps["demo"].version == pkgs["push-demo"]
    assert rep.apps["demo"].units == {"demo.service": "active"}


@pytest.mark.parametrize("store_url", ["s3"], indirect=True)
def test_unreachable_store_leaves_the_server_as_it_was(store_url: str, tmp_path: Path, root: Path) -> None:
    store = open_store(store_url)
    h1 = make_release(store, tmp_path, "hello", 1)
    set_server_file(store, SERVER, [h1.name])
    assert Pulld(store_url, root, "--once").wait() == 0
    pid = json.loads((root / "run/push-units/hello.service.pid").read_text())["pid"]
    p = Pulld(store_url, root, "--once", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})  # nothing listens there
    assert p.wait() == 1
    errors = [e for e in p.events() if e.get("event") == "step.error"]
    assert errors and "cannot reach" in str(errors[0]["error"])
    assert installed(root) == {"push-hello": "1.1"}
    assert json.loads((root / "run/push-units/hello.service.pid").read_text())["pid"] == pid
    assert Path(f"/proc/{pid}").exists()


def test_watch_trigger_reconnects_and_catches_up(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    h1 = make_release(store, tmp_path, "hello", 1)
    h2 = make_release(store, tmp_path, "hello", 2)
    set_server_file(store, SERVER, [h1.name])
    first = WatchServer()
    p = Pulld(url, root, "--push-url", first.url, "--interval", "600")
    procs.append(p)
    wait_for(lambda: installed(root) == {"push-hello": "1.1"}, what="the first step")
    wait_for(lambda: first.requests >= 2, what="the long-poll")
    first.close()  # the push server goes away ...
    wait_for(lambda: p.has_event("trigger.error"), what="the agent to notice")
    set_server_file(store, SERVER, [h2.name])  # ... a change happens meanwhile ...
    second = WatchServer(port=first.port, rev=7)  # ... and it comes back with a new rev
    try:
        wait_for(lambda: installed(root) == {"push-hello": "1.2"}, timeout=20, what="the catch-up step")
    finally:
        p.stop()
        second.close()
    delays = [e["retry_in"] for e in p.events() if e.get("event") == "trigger.error"]
    assert delays and all(0 < float(d) <= 30 for d in delays)  # type: ignore[arg-type]


def test_kill_9_at_random_moments_always_converges(tmp_path: Path, root: Path) -> None:
    """Kill the agent's whole process group at spread-out moments of an upgrade; every
    restart must converge with dpkg's database clean and the unit running the new version."""
    import random

    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    slow = 'sleep 0.2'
    releases = [make_release(store, tmp_path, "hello", n, postinst_extra=slow, payload_size=512 * 1024,
                             compression="none") for n in (1, 2)]
    set_server_file(store, SERVER, [releases[0].name])
    assert Pulld(url, root, "--once").wait() == 0
    rng = random.Random(4)
    for i in range(6):
        want = releases[(i + 1) % 2]
        set_server_file(store, SERVER, [want.name])
        p = Pulld(url, root, "--once", "--download-rate-limit", "2M")
        time.sleep(0.15 + rng.random() * 0.6)  # start-up, download (~0.25 s), dpkg and postinst
        if p.proc.poll() is None:
            p.kill9()
        else:
            p.wait()
        again = Pulld(url, root, "--once")
        assert again.wait() == 0, again.log()
        assert Dpkg(root).audit() == ""
        assert installed(root) == {"push-hello": f"1.{(i + 1) % 2 + 1}"}
        rep = report(store)
        assert rep is not None and rep.in_sync and rep.apps["hello"].installed == want.name
        assert rep.apps["hello"].units == {"hello.service": "active"}
        assert not list((root / "var/lib/pulld/downloads").iterdir())


def test_heartbeat_reports_between_steps(tmp_path: Path, root: Path, procs: list[Pulld]) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    set_server_file(store, SERVER, [])
    p = Pulld(url, root, "--interval", "600", "--report-interval", "0.3")
    procs.append(p)
    first = wait_for(lambda: report(store), what="the first report")
    assert isinstance(first, status.AgentStatus)
    later = wait_for(lambda: (r := report(store)) is not None and r.time != first.time and r, what="a heartbeat")
    assert isinstance(later, status.AgentStatus) and later.step == first.step == 1  # no step ran
