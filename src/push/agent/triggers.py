"""What wakes the agent: the push server's watch long-poll, GCE metadata, and the poll.

Each trigger is a thread that sets one shared `Wakeup`; the loop in main.py waits on it
with the poll interval as timeout, so the three merge into one event and a burst of
triggers runs one step (plus at most one more for triggers that arrive during it).
Triggers reconnect with jittered backoff. They only ever talk to the URLs they are given.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from push.agent.backoff import Backoff

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RECONNECT = Backoff(base=0.5, cap=30.0, jitter=0.5)
METADATA_HEADERS = {"Metadata-Flavor": "Google"}


class Wakeup:
    """One event with the reasons it was set for."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reasons: list[str] = []

    def set(self, reason: str) -> None:
        with self._cond:
            self._reasons.append(reason)
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> list[str]:
        """Wait until set (or `timeout`); returns and clears the reasons (empty on timeout)."""
        with self._cond:
            if not self._reasons:
                self._cond.wait(timeout)
            reasons, self._reasons = self._reasons, []
            return reasons

    def drain(self) -> list[str]:
        with self._cond:
            reasons, self._reasons = self._reasons, []
            return reasons


class _Trigger(threading.Thread):
    name_prefix = "trigger"

    def __init__(self, wakeup: Wakeup, *, on_fire: Callable[[str], None] | None = None,
                 backoff: Backoff = RECONNECT) -> None:
        super().__init__(name=self.name_prefix, daemon=True)
        self.wakeup = wakeup
        self.on_fire = on_fire
        self.backoff = backoff
        self._stop = threading.Event()
        self._client: httpx.Client | None = None
        self.connected = threading.Event()

    def fire(self, source: str) -> None:
        log.info("triggered", extra={"event": "trigger", "source": source})
        if self.on_fire is not None:
            self.on_fire(source)
        self.wakeup.set(source)

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):  # closing is best effort: the thread ends anyway
                client.close()

    def run(self) -> None:
        import httpx  # here, not at the top: `pulld --once` starts faster without it

        failures = 0
        # Never a proxy: triggers talk to exactly the host they were given.
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(10.0, read=self.read_timeout())) as client:
            self._client = client
            while not self._stop.is_set():
                try:
                    self.poll_once(client)
                    failures = 0
                    self.connected.set()
                except Exception as e:
                    if self._stop.is_set():
                        return
                    failures += 1
                    delay = self.backoff.delay(failures)
                    self.connected.clear()
                    log.warning("trigger reconnecting", extra={"event": "trigger.error", "trigger": self.name,
                                                                "error": f"{type(e).__name__}: {e}",
                                                                "retry_in": round(delay, 2)})
                    self._stop.wait(delay)

    def read_timeout(self) -> float:
        raise NotImplementedError

    def poll_once(self, client: httpx.Client) -> None:
        raise NotImplementedError


class WatchTrigger(_Trigger):
    """`GET {push_url}/api/v1/watch/{server}?since=REV&timeout=S`: answers when REV changes."""

    name_prefix = "watch"

    def __init__(self, push_url: str, server: str, wakeup: Wakeup, *, timeout: float = 55.0, **kw: object) -> None:
        super().__init__(wakeup, **kw)  # type: ignore[arg-type]
        self.url = f"{push_url.rstrip('/')}/api/v1/watch/{server}"
        self.timeout = timeout
        self.rev: str | None = None

    def read_timeout(self) -> float:
        return self.timeout + 15.0

    def params(self) -> dict[str, str]:
        """The query of the next long-poll (benchmarks/bench_agents.py sends it asynchronously)."""
        params = {"timeout": f"{self.timeout:g}"}
        if self.rev is not None:
            params["since"] = self.rev
        return params

    def answered(self, body: Mapping[str, object]) -> bool:
        """Take the push server's answer; True if it is a trigger. The first answer only
        tells the current rev (the agent steps at start anyway); after that, and after a
        reconnect (since= is kept), any change of rev is a trigger."""
        rev = str(body["rev"])
        fired = self.rev is not None and rev != self.rev
        self.rev = rev
        return fired

    def poll_once(self, client: httpx.Client) -> None:
        resp = client.get(self.url, params=self.params())
        resp.raise_for_status()
        if self.answered(resp.json()):
            self.fire("watch")


class GceMetadataTrigger(_Trigger):
    """GCE instance metadata `pushrev`, read with wait_for_change=true and the last ETag."""

    name_prefix = "gce-metadata"

    def __init__(self, host: str, wakeup: Wakeup, *, key: str = "pushrev", timeout: float = 60.0,
                 **kw: object) -> None:
        super().__init__(wakeup, **kw)  # type: ignore[arg-type]
        self.url = f"http://{host}/computeMetadata/v1/instance/attributes/{key}"
        self.timeout = timeout
        self.etag: str | None = None

    def read_timeout(self) -> float:
        return self.timeout + 15.0

    def poll_once(self, client: httpx.Client) -> None:
        params = {}
        if self.etag is not None:
            params = {"wait_for_change": "true", "last_etag": self.etag, "timeout_sec": f"{int(self.timeout)}"}
        resp = client.get(self.url, params=params, headers=METADATA_HEADERS)
        resp.raise_for_status()
        etag = resp.headers.get("ETag")
        if not etag:
            raise ValueError("metadata server sent no ETag")
        if self.etag is not None and etag != self.etag:
            self.fire("gce-metadata")
        self.etag = etag


def gce_instance_name(host: str, timeout: float = 5.0) -> str:
    """The instance name from the metadata server at `host` (GCE_METADATA_HOST)."""
    import httpx

    with httpx.Client(trust_env=False, timeout=timeout) as client:
        resp = client.get(f"http://{host}/computeMetadata/v1/instance/name", headers=METADATA_HEADERS)
        resp.raise_for_status()
        return resp.text.strip()
