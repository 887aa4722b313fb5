"""Delivery to one webhook: a bounded queue, a worker thread, and POSTs with retries.

Each webhook has its own worker, so a receiver that is down (every event waiting out its
retries) delays no other receiver and never the change that caused the event. An event is
POSTed at most `attempts` times: again after a connection error, a timeout, a 5xx or a 429
(after exponential backoff with jitter, or after the answer's Retry-After in seconds, at
most BACKOFF_CAP); not again after any other answer (a 4xx says the event itself is refused,
a redirect is not followed). Then it is dropped, counted and logged. Nothing is kept on
disk: events still queued when the process ends are dropped (counted, logged). A webhook
with a secret gets each attempt signed with that attempt's time (push.notify.signature).
Used by push.notify.notifier.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from push.notify import signature
from push.notify.settings import Webhook

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("push.notify")

BACKOFF_BASE = 0.5    # seconds before the first retry (at most; jitter takes up to half off)
BACKOFF_CAP = 30.0
# Why an event was dropped, the `reason` label of push_notify_dropped.
REJECTED, ATTEMPTS, QUEUE_FULL, SHUTDOWN = "rejected", "attempts", "queue_full", "shutdown"


@dataclass(frozen=True)
class Outgoing:
    """One event as sent: the JSON event, and its one line for webhooks with format "text"."""

    kind: str
    id: str
    body: bytes
    text: str


class _Retry(Exception):
    def __init__(self, why: str, wait: float | None = None) -> None:
        super().__init__(why)
        self.wait = wait


class _Refused(Exception):
    pass


def backoff(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): doubling from BACKOFF_BASE up to
    BACKOFF_CAP, less up to half at random so that many senders do not retry in step."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Delivery:
    """One webhook's queue and worker; `offer` never blocks, `finish` flushes until a deadline."""

    def __init__(self, hook: Webhook, *, timeout: float, attempts: int, queue_size: int,
                 user_agent: str) -> None:
        self.hook = hook
        self.name = hook.name
        self.timeout = timeout
        self.attempts = attempts
        self.queue_size = queue_size
        self.user_agent = user_agent
        self._items: deque[Outgoing] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._current: Outgoing | None = None   # the event being sent
        self._abandoned = False                  # given up at exit while sending: counted already
        # Counts read by /metrics (push.server.metrics) and tests; written by the worker
        # (and `offer` for queue_full) under the condition's lock.
        self.delivered: Counter[str] = Counter()              # kind -> events
        self.dropped: Counter[tuple[str, str]] = Counter()    # (kind, reason) -> events
        self.retries = 0
        # Started by the first event: a command that changes nothing starts no thread.
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Events waiting, and the one being sent."""
        with self._cond:
            return len(self._items) + (self._current is not None and not self._abandoned)

    def offer(self, item: Outgoing) -> None:
        with self._cond:
            if self._closing:
                self.dropped[item.kind, SHUTDOWN] += 1
                log.warning("notify %s: %s event %s dropped: shutting down", self.name, item.kind, item.id)
                return
            if len(self._items) >= self.queue_size:
                self.dropped[item.kind, QUEUE_FULL] += 1
                log.error("notify %s: %s event %s dropped: %d events already waiting",
                          self.name, item.kind, item.id, len(self._items))
                return
            self._items.append(item)
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
                self._thread.start()

    def finish(self, deadline: float) -> None:
        """Stop taking events; the worker sends what is queued until `deadline` (monotonic)."""
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()

    def join(self) -> None:
        """Wait for the worker until the deadline given to `finish`; drop what is left."""
        assert self._deadline is not None
        if self._thread is not None:
            self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._cond:
            left = list(self._items)
            self._items.clear()
            if self._current is not None:  # a POST still waiting on its answer: given up too
                left.append(self._current)
                self._abandoned = True
            for item in left:
                self.dropped[item.kind, SHUTDOWN] += 1
        if left:
            log.warning("notify %s: %d event(s) dropped: not sent before the exit deadline (first: %s event %s)",
                        self.name, len(left), left[0].kind, left[0].id)

    def _run(self) -> None:
        import httpx

        # trust_env=False: no proxy variable reroutes events (docs/notifications.md).
        with httpx.Client(trust_env=False, follow_redirects=False,
                          headers={"User-Agent": self.user_agent, "Content-Type": "application/json"}) as http:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait()
                    if not self._items:
                        return
                    item = self._current = self._items.popleft()
                try:
                    self._deliver(http, item)
                except Exception:  # a worker that dies would silently drop every later event
                    log.exception("notify %s: %s event %s failed", self.name, item.kind, item.id)
                    self._count(self.dropped, (item.kind, ATTEMPTS))
                finally:
                    with self._cond:
                        self._current = None

    def _deliver(self, http: httpx.Client, item: Outgoing) -> None:
        start = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            timeout = self._time_left(self.timeout)
            if timeout <= 0:
                self._drop(item, SHUTDOWN, "the exit deadline passed")
                return
            try:
                self._post(http, item, timeout)
            except _Refused as e:
                self._drop(item, REJECTED, str(e))
                return
            except _Retry as e:
                if attempt == self.attempts:
                    self._drop(item, ATTEMPTS, f"{e} (attempt {attempt} of {self.attempts})")
                    return
                wait = backoff(attempt) if e.wait is None else min(e.wait, BACKOFF_CAP)
                log.info("notify %s: %s event %s: %s; retrying in %.1f s (attempt %d of %d)",
                            self.name, item.kind, item.id, e, wait, attempt, self.attempts)
                with self._cond:
                    self.retries += 1
                    if self._abandoned:
                        return
                if not self._pause(wait):
                    self._drop(item, SHUTDOWN, f"{e}, and the exit deadline comes before the next attempt")
                    return
                continue
            self._count(self.delivered, item.kind)
            log.info("notify %s: %s event %s delivered (attempt %d, %.0f ms)",
                     self.name, item.kind, item.id, attempt, (time.monotonic() - start) * 1000)
            return

    def _post(self, http: httpx.Client, item: Outgoing, timeout: float) -> None:
        import httpx

        body = item.body if self.hook.format == "event" else json.dumps({"text": item.text}).encode()
        headers = {"X-Push-Event": item.kind, "X-Push-Delivery": item.id}
        if self.hook.secret is not None:
            # Signed now, for this attempt: a retry carries its own time (push.notify.signature).
            headers.update(signature.headers(self.hook.secret, body))
        try:
            # Streamed, so that only the start of an answer is read, whatever its size.
            with http.stream("POST", self.hook.url, content=body, timeout=timeout, headers=headers) as answer:
                status = answer.status_code
                start = b"" if 200 <= status < 300 else _start_of(answer.iter_bytes())
                retry_after = answer.headers.get("Retry-After")
        except httpx.TransportError as e:
            # The message names the host at most; never the URL, which may hold a secret.
            raise _Retry(f"{type(e).__name__}: {_clean(str(e), self.hook.url)}") from None
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}", _retry_after(retry_after))
        if 300 <= status < 400:
            raise _Refused(f"HTTP {status} (redirects are not followed)")
        raise _Refused(f"HTTP {status}: {start.decode(errors='replace')!r}")

    def _count(self, counter: Counter[Any], key: object) -> None:
        """Count an outcome, unless join() already counted this event as given up."""
        with self._cond:
            if not self._abandoned:
                counter[key] += 1

    def _drop(self, item: Outgoing, reason: str, why: str) -> None:
        with self._cond:
            if self._abandoned:
                return
            self.dropped[item.kind, reason] += 1
        log.error("notify %s: %s event %s dropped: %s", self.name, item.kind, item.id, why)

    def _time_left(self, wanted: float) -> float:
        with self._cond:
            if self._deadline is None:
                return wanted
            return min(wanted, self._deadline - time.monotonic())

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False, at once, if the exit deadline comes first."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                if self._deadline is not None and end > self._deadline:
                    return False
                left = end - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, when it is a number (an HTTP date is ignored: backoff then)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _start_of(chunks: Iterator[bytes], limit: int = 200) -> bytes:
    """The first `limit` bytes of an answer, for the log."""
    start = b""
    for chunk in chunks:
        start += chunk
        if len(start) >= limit:
            break
    return start[:limit]


def _clean(message: str, url: str) -> str:
    return message.replace(url, "<webhook url>")
