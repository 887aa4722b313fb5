"""The demo's sample apps: tiny real HTTP services, each with a systemd unit.

`stage(app, version, dest)` lays out a staged root for `push release APP --root DIR`:
the service script in /usr/local/bin, its unit in /etc/systemd/system, and a version file.
Every service answers its health check, GET /healthz, with 200, but for the broken version
of one app (BROKEN), which answers 503: released with that check declared, it is reverted
by the agents on its own (docs/pulld.md#health).
Each server gives the app its port in /etc/default/APP (written by the demo into the
server's sandbox root, not shipped in the package), as a real fleet would per host.
"""

from __future__ import annotations

from pathlib import Path

SERVICE = r'''#!/usr/bin/env python3
"""{app}: a demo service of Push. Answers GET / with its name, version and server."""
import http.server
import json
import os
import socket

APP = "{app}"
VERSION = "{version}"
GREETING = "{greeting}"
PORT = int(os.environ.get("PORT", "0") or 0)
SERVER = os.environ.get("PUSH_SERVER_NAME") or socket.gethostname()
HEALTHY = {healthy}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and not HEALTHY:
            body = b"cannot reach the database at db.invalid:5432\n"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = json.dumps({{"app": APP, "version": VERSION, "server": SERVER,
                           "message": GREETING}}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


httpd = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"{{APP}} {{VERSION}} listening on 127.0.0.1:{{httpd.server_port}}", flush=True)
httpd.serve_forever()
'''

UNIT = """[Unit]
Description=Push demo app {app}
After=network.target

[Service]
EnvironmentFile=-/etc/default/{app}
ExecStart=/usr/local/bin/{app}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""

# app -> (greeting per version)
APPS: dict[str, dict[str, str]] = {
    "hello": {"1": "Hello, world!", "2": "Hello again, world: version 2 is here.",
              "3": "Hello from version 3, which cannot reach its database."},
    "quotes": {"1": "Ship small changes often.", "2": "Roll back without fear."},
    "clock": {"1": "tick", "2": "tick tock"},
}
# The version whose /healthz fails: released with a declared health check, so that it reverts.
BROKEN = ("hello", "3")
# Its check (push release flags): the app's port comes from the server's /etc/default/APP.
BROKEN_HEALTH = ["--health-http", "http://127.0.0.1:${PORT}/healthz", "--health-within", "10"]


def stage(app: str, version: str, dest: Path, *, healthy: bool | None = None) -> Path:
    """Write the staged root of `app` at `version` under `dest`; returns `dest`. `healthy`:
    whether GET /healthz answers 200 (default: all but the BROKEN version)."""
    greeting = APPS[app][version]
    binary = dest / "usr/local/bin" / app
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text(SERVICE.format(app=app, version=version, greeting=greeting,
                                     healthy=(app, version) != BROKEN if healthy is None else healthy))
    binary.chmod(0o755)
    unit = dest / "etc/systemd/system" / f"{app}.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(UNIT.format(app=app))
    share = dest / "usr/local/share" / app
    share.mkdir(parents=True, exist_ok=True)
    (share / "VERSION").write_text(version + "\n")
    return dest
