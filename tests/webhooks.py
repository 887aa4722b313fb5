"""A webhook receiver on 127.0.0.1 for the notification tests (push.notify).

`Receiver` is a small threaded HTTP server, started and stopped by the test (`with
Receiver() as r:`). Each path is its own webhook: `r.url("name")`; `r.answer("name", 500,
200)` scripts the statuses of its next POSTs (then 200); `r.got("name")` is every POST it
received (a retried event appears once per attempt); `r.events("name")` the JSON bodies of
the ones it accepted. `r.require_signature("name", secret)` makes that webhook check each
POST as a receiver should (`verify`, the code docs/notifications.md shows) and answer 401 to
one that fails. `black_hole()` is a port that accepts connections and never answers.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from waiting import wait_for

TOLERANCE = 300  # seconds: the clock skew and delay docs/notifications.md recommends accepting


def verify(secret: bytes, timestamp: str | None, signature: str | None, body: bytes,
           now: float | None = None) -> bool:
    """A receiver's check of a POST (docs/notifications.md): written from the documented
    format, not with push.notify.signature, so that the two can disagree."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


@dataclass(frozen=True)
class Post:
    path: str
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    verified: bool | None = None   # None: the webhook requires no signature


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: dict[str, deque[int]] = defaultdict(deque)
        self._secrets: dict[str, bytes] = {}
        self._posts: list[Post] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                name = self.path.removeprefix("/hook/")
                with receiver._lock:
                    secret = receiver._secrets.get(name)
                    verified = None if secret is None else verify(
                        secret, self.headers.get("X-Push-Timestamp"), self.headers.get("X-Push-Signature-256"), body)
                    script = receiver._script[name]
                    # A POST that fails the check is refused and does not use up the script.
                    status = 401 if verified is False else script.popleft() if script else 200
                    try:
                        parsed = json.loads(body)
                    except ValueError:
                        parsed = {}
                    receiver._posts.append(Post(name, status, dict(self.headers), parsed, body, verified))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook/{name}"

    def answer(self, name: str, *statuses: int) -> None:
        with self._lock:
            self._script[name].extend(statuses)

    def require_signature(self, name: str, secret: bytes) -> None:
        with self._lock:
            self._secrets[name] = secret

    def got(self, name: str) -> list[Post]:
        with self._lock:
            return [p for p in self._posts if p.path == name]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [p.body for p in self.got(name) if 200 <= p.status < 300]

    def wait_events(self, name: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events(name)) >= count and self.events(name), timeout,
                        f"{count} event(s) at webhook {name}")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def black_hole() -> socket.socket:
    """A listening socket that never accepts: connections complete (the kernel's backlog),
    requests are never answered, so every POST waits out its timeout. Close it after."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s
