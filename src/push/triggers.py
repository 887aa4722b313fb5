"""Triggers fired after each change, so agents act in seconds rather than at their next poll.

Two kinds: waking the watchers of the local push server (a callback the server installs),
and writing the GCE instance metadata key `pushrev` through the Compute API when
skiapush.conf has a [gce] table, as the original push server did. The agent's plain poll
stays the failsafe, so a trigger that fails is logged and counted, never fatal.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from push.config import Config
from push.errors import NotFound, PushError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = logging.getLogger(__name__)

DEFAULT_COMPUTE_ENDPOINT = "https://compute.googleapis.com"
PUSHREV_KEY = "pushrev"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"


class TriggerFailed(PushError):
    """The Compute API refused to set an instance's metadata (logged and counted: the
    agents' poll is the failsafe)."""


class ComputeMetadata:
    """Sets one metadata item on a GCE instance: GET for the fingerprint, then setMetadata.

    Credentials (google-auth's application default) are used only for a *.googleapis.com
    endpoint; a custom `compute_endpoint` (a fake in tests, a private proxy) gets none.
    """

    def __init__(self, project: str, zone: str, endpoint: str = DEFAULT_COMPUTE_ENDPOINT,
                 timeout: float = 10.0) -> None:
        import httpx

        self.project = project
        self.zone = zone
        self.endpoint = endpoint.rstrip("/")
        host = urlparse(self.endpoint).hostname or ""
        self._needs_credentials = host.endswith(".googleapis.com")
        self._credentials: Credentials | None = None
        self._cred_lock = threading.Lock()
        # trust_env=False: no proxy variable may send this anywhere but the endpoint.
        self._http = httpx.Client(timeout=timeout, trust_env=False)

    def _headers(self) -> dict[str, str]:
        if not self._needs_credentials:
            return {}
        with self._cred_lock:
            if self._credentials is None:
                import google.auth

                self._credentials, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
            creds = self._credentials
            if not creds.valid:
                import google.auth.transport.requests

                creds.refresh(google.auth.transport.requests.Request())
            return {"Authorization": f"Bearer {creds.token}"}

    def instance_url(self, instance: str) -> str:
        return f"{self.endpoint}/compute/v1/projects/{self.project}/zones/{self.zone}/instances/{instance}"

    def set_item(self, instance: str, key: str, value: str, attempts: int = 3) -> None:
        """Set `key` = `value`, keeping every other item; retries when the fingerprint moved."""
        url = self.instance_url(instance)
        for attempt in range(attempts):
            headers = self._headers()
            got = self._http.get(url, headers=headers)
            if got.status_code == 404:
                raise NotFound(f"GCE instance {instance!r} not found in {self.project}/{self.zone}")
            if got.status_code != 200:
                raise TriggerFailed(f"Compute API GET {instance}: HTTP {got.status_code}: {got.text[:200]}")
            metadata = got.json().get("metadata") or {}
            items = [i for i in metadata.get("items") or [] if i.get("key") != key]
            items.append({"key": key, "value": value})
            body = {"kind": "compute#metadata", "fingerprint": metadata.get("fingerprint"), "items": items}
            put = self._http.post(url + "/setMetadata", json=body, headers=headers)
            if put.status_code == 200:
                return
            if put.status_code in (409, 412) and attempt < attempts - 1:
                continue  # someone else changed the metadata: read the new fingerprint
            raise TriggerFailed(f"Compute API setMetadata {instance}: HTTP {put.status_code}: {put.text[:200]}")

    def close(self) -> None:
        self._http.close()


class Triggers:
    """What runs after every change to a server. `background=True` (the push server) sends
    the GCE write from a small thread pool so a deploy never waits on the Compute API;
    the CLI sends it before exiting."""

    def __init__(self, config: Config, *, on_change: Callable[[str], None] | None = None,
                 background: bool = False) -> None:
        self.config = config
        self.on_change = on_change
        self.background = background
        gce = config.gce
        self.compute: ComputeMetadata | None = None
        if gce.get("project") and gce.get("zone"):
            self.compute = ComputeMetadata(gce["project"], gce["zone"],
                                           gce.get("compute_endpoint") or DEFAULT_COMPUTE_ENDPOINT)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gce-trigger") if background else None
        # `changed` is called from many threads at once (deploy-all's and a rollout's
        # writers; without `background`, the GCE write runs in them too): the counts below
        # are written under this lock, as `+=` from several threads can lose counts.
        self._count_lock = threading.Lock()
        self.gce_ok = 0
        self.gce_failed = 0
        self.last_gce_error: str | None = None

    def changed(self, server: str, what: str) -> None:
        """Fire every trigger for `server`; `what` (a release name or unit request) goes into pushrev."""
        if self.on_change is not None:
            try:
                self.on_change(server)
            except Exception:
                log.exception("waking watchers of %s failed", server)
        if self.compute is not None:
            value = f"{what} {secrets.token_hex(8)}"
            pool = self._pool
            if pool is not None:
                try:
                    pool.submit(self._set_pushrev, server, value)
                except RuntimeError:  # closed (shutdown) while a deploy wrote: the agents' poll is the failsafe
                    log.warning("GCE pushrev of %s not sent: the trigger pool is closed", server)
            else:
                self._set_pushrev(server, value)

    def _set_pushrev(self, server: str, value: str) -> None:
        assert self.compute is not None
        start = time.monotonic()
        try:
            self.compute.set_item(server, PUSHREV_KEY, value)
        except Exception as e:  # the agent's poll is the failsafe
            with self._count_lock:
                self.gce_failed += 1
                self.last_gce_error = f"{server}: {e}"
            log.warning("could not write GCE pushrev for %s: %s", server, e)
            return
        with self._count_lock:
            self.gce_ok += 1
        log.info("pushrev of %s set in %.0f ms", server, (time.monotonic() - start) * 1000)

    def flush(self) -> None:
        """Wait for background GCE writes (tests, shutdown)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gce-trigger")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.compute is not None:
            self.compute.close()
