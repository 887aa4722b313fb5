"""`push demo`: set up a local fleet, build the sample apps, run it until Ctrl-C.

Everything lives in one work directory (a new temporary one unless --dir is given): the
bucket, skiapush.conf, the signing keys, the sandbox root and state of each agent, and the
logs. It runs signed end to end (docs/trust.md): releases are signed with a release key,
server files with a deploy key (by `push deploy` and the push server), and the agents
trust only those two keys.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import webbrowser
from pathlib import Path

from push.demo.apps import APPS, BROKEN, BROKEN_HEALTH, stage
from push.demo.fleet import HOST, LocalFleet, bin_path, free_port, http_get, port_is_free
from push.errors import PushError
from push.signing import write_key_pair

SERVERS = ("demo-1", "demo-2", "demo-3")
# Which apps each server may run (skiapush.conf); every server runs hello.
ALLOWED = {"demo-1": ("hello", "quotes", "clock"), "demo-2": ("hello", "quotes"), "demo-3": ("hello", "clock")}


class DemoError(PushError):
    """The demo could not run: a step failed, a port is taken, a process died."""


def say(text: str = "") -> None:
    print(text, flush=True)


def write_config(path: Path) -> None:
    lines = ["# skiapush.conf of the Push demo: which apps may run where.", ""]
    for server in SERVERS:
        apps = ", ".join(f'"{a}"' for a in ALLOWED[server])
        lines += [f"[servers.{server}]", f"appNames = [{apps}]", ""]
    path.write_text("\n".join(lines))


def app_ports(base: int) -> dict[tuple[str, str], int]:
    """A port per (server, app): demo-1 gets base+1.., demo-2 base+101.., unless taken."""
    ports = {}
    for i, server in enumerate(SERVERS):
        for j, app in enumerate(APPS):
            wanted = base + 100 * i + j + 1
            ports[(server, app)] = wanted if port_is_free(wanted) else free_port()
    return ports


def run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DemoError(f"{what} failed: {last}")
    return result.stdout


def make_keys(workdir: Path) -> dict[str, Path]:
    """The demo's own keys, in WORKDIR/keys (kept when the directory is reused): name.key and name.pub."""
    paths = {}
    for name in ("release", "deploy"):
        key, pub = workdir / "keys" / f"{name}.key", workdir / "keys" / f"{name}.pub"
        if not key.exists():
            write_key_pair(workdir / "keys", name)
        paths[f"{name}.key"], paths[f"{name}.pub"] = key, pub
    return paths


def build_releases(workdir: Path, store: str, signing_key: Path) -> dict[str, list[str]]:
    """Build every sample app in each of its versions with `push release` (two; hello's third
    fails its health check); returns app -> [v1, v2, ...] names."""
    names: dict[str, list[str]] = {app: [] for app in APPS}
    for version in ("1", "2", "3"):
        if version != "1":
            # Release names carry whole seconds: make each version strictly newer.
            time.sleep(1.05 - (time.time() % 1))
        for app in APPS:
            if version not in APPS[app]:
                continue
            tree = stage(app, version, workdir / "src" / f"{app}-{version}")
            fake_hash = hashlib.sha1(f"{app} {version}".encode()).hexdigest()
            health = BROKEN_HEALTH if (app, version) == BROKEN else []
            out = run([bin_path("push"), "release", app, "--root", str(tree), "--note",
                       f"{app} version {version}: {APPS[app][version]}", "--hash", fake_hash, "--depends", "python3",
                       "--store", store, "--signing-key", str(signing_key), *health], f"push release {app}")
            names[app].append(out.strip().splitlines()[-1])
    return names


def setup(workdir: Path, server_port: int, app_port_base: int
          ) -> tuple[LocalFleet, dict[str, list[str]], dict[tuple[str, str], int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"file://{workdir / 'bucket'}"
    config = workdir / "skiapush.conf"
    write_config(config)
    keys = make_keys(workdir)
    fleet = LocalFleet(workdir=workdir, store=store, config=config, servers=list(SERVERS),
                       server_port=server_port,
                       agent_args=["--interval", "30", "--trust-release-key", str(keys["release.pub"]),
                                   "--trust-deploy-key", str(keys["deploy.pub"])],
                       server_args=["--deploy-key", str(keys["deploy.key"])])
    ports = app_ports(app_port_base)
    for server in SERVERS:
        default = fleet.root(server) / "etc" / "default"
        default.mkdir(parents=True, exist_ok=True)
        for app in APPS:
            (default / app).write_text(f"PORT={ports[(server, app)]}\nPUSH_SERVER_NAME={server}\n")
    say("building the sample apps (two versions each, and a third of hello that fails its health check) "
        "with push release ...")
    names = build_releases(workdir, store, keys["release.key"])
    # Start with version 1 everywhere, so there is something to upgrade and roll back.
    for server in SERVERS:
        for app in ALLOWED[server]:
            run([bin_path("push"), "deploy", server, app, names[app][0], "--store", store, "--config", str(config),
                 "--note", "demo: initial version", "--deploy-key", str(keys["deploy.key"])],
                f"push deploy {server} {app}")
    return fleet, names, ports


def _hash_of(name: str) -> str:
    """The short git hash that names a release on the command line."""
    from push.release import Release

    return Release.parse(name).short_hash


def main(workdir: Path | None, server_port: int, app_port_base: int, open_browser: bool) -> int:
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="push-demo-"))
    if not port_is_free(server_port):
        raise DemoError(f"port {server_port} on {HOST} is in use: choose another with --port")
    fleet, names, ports = setup(workdir, server_port, app_port_base)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        say("starting the push server and three agents ...")
        fleet.start_server()
        for server in SERVERS:
            fleet.start_agent(server)

        def all_running() -> bool:
            for server in SERVERS:
                report = fleet.status(server)
                if not report or not report.get("in_sync"):
                    return False
            return True

        fleet.wait_until(all_running, timeout=90, what="the agents to install version 1")

        def all_answering() -> bool:
            for server in SERVERS:
                for app in ALLOWED[server]:
                    try:
                        http_get(f"http://{HOST}:{ports[(server, app)]}/", timeout=1)
                    except OSError:
                        return False
            return True

        fleet.wait_until(all_answering, timeout=30, what="the sample apps to answer")
        url = fleet.url
        say()
        say(f"Push demo is running: {url}")
        say()
        say("  servers:  " + ", ".join(f"{s} ({', '.join(ALLOWED[s])})" for s in SERVERS))
        for server in SERVERS:
            for app in ALLOWED[server]:
                say(f"  {server:7} {app:7} http://{HOST}:{ports[(server, app)]}/")
        say()
        say("Try:")
        say(f"  - open {url}, pick version 2 of hello on demo-1, confirm, and watch it go live;")
        say(f"    then `curl http://{HOST}:{ports[('demo-1', 'hello')]}/` answers with version 2;")
        say("  - roll it back with one click, and read the history;")
        say(f"  - from a shell: {bin_path('push')} status --push-url {url}")
        say(f"                  {bin_path('push')} deploy demo-2 quotes --latest --push-url {url}")
        say("  - deploy hello version 3, whose health check fails, and watch demo-3 revert it by itself:")
        say(f"                  {bin_path('push')} deploy demo-3 hello {_hash_of(names['hello'][2])} --wait "
            f"--push-url {url}")
        say("    (it exits 8 about 10 s later: not healthy in time, reverted to version 1; the fleet page")
        say("    shows it reverted, with its reason)")
        say("  - roll hello version 2 out to every server in waves (one canary first), from the app page's")
        say("    release picker (\"in waves…\") or from a shell, and watch it on the rollouts page:")
        say(f"                  {bin_path('push')} rollout start hello {_hash_of(names['hello'][1])} --bake 5 "
            f"--wait --push-url {url}")
        say("    then the same with version 3: it stops at the canary, which reverts it, and the rollout rolls")
        say("    back by itself (exit 10); no other server ever gets version 3")
        say(f"  work directory (bucket, keys, roots, logs): {workdir}")
        say("  signed end to end: the agents install only releases signed by keys/release.key, chosen by")
        say("  server files signed by keys/deploy.key (the push server's key); see docs/trust.md")
        say()
        say("Press Ctrl-C to stop everything.")
        if open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            webbrowser.open(url)
        while True:
            for proc in fleet.processes():
                if not proc.alive():
                    raise DemoError(f"{proc.name} exited unexpectedly; its log:\n{proc.log_tail()}")
            time.sleep(1)
    except KeyboardInterrupt:
        say("\nstopping ...")
    finally:
        fleet.stop()
    say("stopped: no process of the demo is left running.")
    return 0
