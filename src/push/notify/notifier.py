"""The notifier: the one object the rest of Push calls to announce an event.

    notifier = Notifier.from_config(config)        # a no-op when [notify] lists no webhook
    notifier.emit("deploy", {"who": ..., "server": ..., ...})   # never blocks, never raises
    notifier.close(timeout=3.0)                    # at exit: flush, for at most `timeout` s

push.fleet emits deploy, rollback and remove after each change is written (CAS done,
history record written); the rollouts code emits the rollout.* kinds. `emit` builds the
event (push.notify.events) and hands it to each interested webhook's queue
(push.notify.delivery), so the caller pays a JSON encoding and a lock per webhook.
The push server creates one per process and closes it at shutdown; the CLI straight to
the bucket creates one per command and closes it with a 3 s bound (CLI_FLUSH_SECONDS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from push import __version__
from push.notify import events
from push.notify.delivery import Delivery, Outgoing
from push.notify.settings import KINDS, NotifySettings

if TYPE_CHECKING:
    from push.config import Config

log = logging.getLogger("push.notify")

CLI_FLUSH_SECONDS = 3.0      # how long a CLI command waits at exit for its events
SERVER_FLUSH_SECONDS = 5.0   # how long push serve waits at shutdown


@dataclass(frozen=True)
class TargetStats:
    """One webhook's counts, as /metrics shows them."""

    name: str
    delivered: dict[str, int]               # kind -> events delivered
    dropped: dict[tuple[str, str], int]     # (kind, reason) -> events given up
    retries: int
    queued: int


class Notifier:
    """Sends each event to every webhook of `settings` that wants its kind."""

    def __init__(self, settings: NotifySettings | None = None) -> None:
        self.settings = settings or NotifySettings()
        self._targets = tuple(
            Delivery(hook, timeout=self.settings.timeout, attempts=self.settings.attempts,
                     queue_size=self.settings.queue_size, user_agent=f"push/{__version__}")
            for hook in self.settings.webhooks)
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> Notifier:
        """The notifier of skiapush.conf's [notify] table (a no-op without webhooks)."""
        return cls(config.notify)

    @classmethod
    def disabled(cls) -> Notifier:
        """A notifier that sends nothing (no config, tests)."""
        return cls()

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def emit(self, kind: str, fields: Mapping[str, object]) -> None:
        """Queue a `kind` event with `fields` (the subject, and `who`) for every webhook that
        wants it. Returns at once; never raises: a notification must never undo or delay
        the change it reports."""
        if not self._targets:
            return
        try:
            if kind not in KINDS:
                log.error("notify: unknown event kind %r not sent (known: %s)", kind, ", ".join(KINDS))
                return
            wanted = [t for t in self._targets if t.hook.wants(kind)]
            if not wanted:
                return
            event = events.build(kind, fields)
            item = Outgoing(kind=kind, id=event["id"], body=events.encode(event), text=event["text"])
            for target in wanted:
                target.offer(item)
        except Exception:
            log.exception("notify: could not queue a %s event", kind)

    def close(self, timeout: float) -> None:
        """Stop taking events and send what is queued, for at most `timeout` seconds in all;
        what is left then is dropped (counted and logged). Safe to call twice."""
        if self._closed or not self._targets:
            self._closed = True
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        for target in self._targets:
            target.finish(deadline)
        for target in self._targets:
            target.join()

    def stats(self) -> list[TargetStats]:
        """Every webhook's counts (for /metrics and tests)."""
        return [TargetStats(t.name, dict(t.delivered), dict(t.dropped), t.retries, t.queued)
                for t in self._targets]


# The notifier of a context no front end gave one (push.fleet.Context's default): sends nothing.
DISABLED = Notifier()
