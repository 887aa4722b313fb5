#!/usr/bin/env python3
"""Screenshots of the push server's main pages, for the README and docs/push-server.md.

Builds a small demo fleet in a temporary local store (releases, deploys with history,
agent reports with drift, a failure, a release reverted by its agent with its reason and
log lines, one still proving its health, and a stale agent), runs `push serve --no-auth` on
127.0.0.1, and photographs it with Debian's Chromium (the fleet, a server, an app, a
reverted app, a narrow window, the search box):

    .venv/bin/python scripts/screenshots.py          # writes docs/screenshots/*.png
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

CONF = """
[servers.skia-push]
appNames = ["push", "pulld", "logserver"]

[servers.web-1]
appNames = ["hello", "pulld", "logserver"]

[servers.web-2]
appNames = ["hello", "pulld", "logserver"]

[servers.db-1]
appNames = ["pulld", "backup"]
"""

NOTES = {
    "hello": ["Serve /healthz", "Faster startup", "Fix the 404 page", "Log requests as JSON", "Bump TLS settings"],
    "pulld": ["Report unit states", "Back off on failures", "Verify sha256 before install"],
    "push": ["Release picker shows servers", "Rollback from history"],
    "logserver": ["Rotate logs daily", "Compress old logs"],
    "backup": ["Nightly snapshots"],
}
USERS = ["alice", "bob", "carol"]


def build(store_dir: Path) -> None:
    from push import catalog, fleet, status
    from push.config import parse
    from push.release import Release, ReleaseInfo
    from push.store.local import LocalStore

    store = LocalStore(store_dir)
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    rels: dict[str, list[ReleaseInfo]] = {}
    for app, notes in NOTES.items():
        for n, note in enumerate(notes):
            h = hashlib.sha1(f"{app}{n}".encode()).hexdigest()
            info = ReleaseInfo(Release(app, USERS[n % 3], "build-1", t0 + timedelta(days=n, hours=len(app)), h),
                               dirty=(app == "hello" and n == 3), note=note, services=(f"{app}.service",))
            catalog.publish(store, info, b"demo")
            rels.setdefault(app, []).insert(0, info)  # newest first
    ctx = fleet.Context.open(store, parse(CONF), via="push-server@demo")

    def dep(who: str, server: str, app: str, i: int, note: str = "") -> None:
        fleet.deploy(ctx, who, server, app, rels[app][i].name, note=note)

    for server in ("web-1", "web-2"):
        dep("alice@example.com", server, "hello", 2, "weekly release")
        dep("alice@example.com", server, "pulld", 0)
        dep("bob@example.com", server, "logserver", 0)
    dep("bob@example.com", "web-1", "hello", 1, "needs the JSON logs")
    dep("carol@example.com", "web-1", "hello", 0, "TLS update")
    fleet.rollback(ctx, "carol@example.com", "web-1", "hello", note="TLS handshake errors")
    dep("alice@example.com", "web-2", "hello", 0, "TLS update")
    dep("alice@example.com", "skia-push", "push", 0)
    dep("alice@example.com", "skia-push", "pulld", 1)
    dep("alice@example.com", "skia-push", "logserver", 1)
    dep("bob@example.com", "db-1", "pulld", 0)
    dep("bob@example.com", "db-1", "backup", 0)

    now = datetime.now(timezone.utc)

    def agent(server: str, installed: dict[str, str], age: timedelta = timedelta(seconds=20),
              failed: dict[str, str] | None = None, health: dict[str, dict[str, str]] | None = None,
              desired: dict[str, str] | None = None) -> None:
        failed = failed or {}
        st = status.AgentStatus(server=server, agent_version="0.1.0",
                                time=(now - age).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), hostname=server,
                                in_sync=not failed)
        for app, name in installed.items():
            fields: dict[str, str] = {"health": "healthy", **(health or {}).get(app, {})}
            st.apps[app] = status.AppStatus(
                desired=(desired or {}).get(app, name), installed=name, state="failed" if app in failed else "ok",
                error=failed.get(app),
                units={f"{app}.service": "failed" if app in failed else "active"}, **fields)
        status.write(store, st)

    sf = {s: fleet.serverfile.read(store, s) for s in ("web-1", "web-2", "skia-push", "db-1")}
    agent("web-1", {a: r.name for a, r in sf["web-1"].releases.items()})
    web2 = {a: r.name for a, r in sf["web-2"].releases.items()}
    web2["hello"] = rels["hello"][2].name  # the install of the newest failed: still on the old one
    agent("web-2", web2, desired={"hello": rels["hello"][0].name},
          failed={"hello": "dpkg: error processing archive hello.deb (--install): "
                           "trying to overwrite '/etc/hello/tls.conf'"})
    # skia-push: logserver's newest release crashed at start; its agent reverted it.
    dep("alice@example.com", "skia-push", "logserver", 0, "rotate daily")
    sf["skia-push"] = fleet.serverfile.read(store, "skia-push")
    skia = {a: r.name for a, r in sf["skia-push"].releases.items()}
    skia["logserver"] = rels["logserver"][1].name
    deadline = (now + timedelta(seconds=25)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    agent("skia-push", skia, desired={"logserver": rels["logserver"][0].name},
          failed={"logserver": "not healthy within 30s: reverted to the release before"}, health={
        "logserver": {"health": "unhealthy", "reverted_from": rels["logserver"][0].name,
                      "health_detail": "logserver.service is failed (exit code 1, 5 restarts)\n"
                                       "-- last lines of its log --\n"
                                       "logserver: reading /etc/logserver/rotate.conf\n"
                                       "logserver: rotate.conf:3: unknown key 'daily'\n"
                                       "logserver.service: Main process exited, code=exited, status=1/FAILURE"},
        "push": {"health": "progressing", "health_deadline": deadline,
                 "health_detail": "waiting for http://127.0.0.1:8000/healthz (503)"}})
    agent("db-1", {a: r.name for a, r in sf["db-1"].releases.items()}, age=timedelta(hours=3))


def main() -> int:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from emulators import free_port

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir, conf = Path(tmp) / "bucket", Path(tmp) / "skiapush.conf"
        conf.write_text(CONF)
        build(store_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "push.cli", "serve", "--no-auth", "--port", str(port),
                                   "--store", str(store_dir), "--config", str(conf)])
        try:
            for _ in range(100):
                try:
                    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                hello = [line for line in _releases(url, "hello")]

                def shot(path: str, name: str, full: bool = False) -> None:
                    page.goto(url + path)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(OUT / name), full_page=full)
                    print(OUT / name)

                shot("/", "fleet.png", full=True)
                shot("/servers/skia-push", "server.png", full=True)
                shot("/apps/hello", "app.png", full=True)
                shot("/servers/skia-push/apps/logserver", "reverted.png", full=True)
                shot("/servers/web-1/apps/hello", "picker.png")
                shot(f"/servers/web-1/apps/hello/confirm?release={hello[0]}", "confirm.png")
                shot("/servers/web-1/apps/hello/rollback", "rollback.png")
                shot("/history", "history.png")
                shot("/nope", "not-found.png")
                # The search box, as you type (focused with "/").
                page.goto(url + "/")
                page.wait_for_load_state("networkidle")
                page.keyboard.press("/")
                page.keyboard.type("web")
                page.wait_for_selector("#search-results a")
                page.screenshot(path=str(OUT / "search.png"))
                print(OUT / "search.png")
                narrow = browser.new_page(viewport={"width": 420, "height": 900})
                narrow.goto(url + "/")
                narrow.wait_for_load_state("networkidle")
                narrow.screenshot(path=str(OUT / "narrow.png"), full_page=True)
                print(OUT / "narrow.png")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


def _releases(url: str, app: str) -> list[str]:
    import json

    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/api/v1/apps/{app}/releases") as r:
        return [x["name"] for x in json.loads(r.read())]


if __name__ == "__main__":
    sys.exit(main())
