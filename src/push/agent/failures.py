"""What failed on this server, and when to try it again: the agent's memory between steps.

The executor records each failed install or removal here (with its backoff), the unit
errors of the apps it (re)started, and the step records a failure of its own (store
unreachable, bad server file). `push.agent.plan` reads the failures to decide what is due;
`push.agent.report` shows them. Kept in memory only: a restarted agent tries everything once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from push import timestamps
from push.agent.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """The last failure of one app's release (or of its removal, release None), or of a step."""

    release: str | None
    error: str
    attempts: int            # consecutive failures of the same release (drives the backoff)
    time: str                # when it failed, as Push writes times
    retry_at: float          # time.monotonic() at which it is due again
    retry_wall: str          # the same, as a time for the report


class Failures:
    """Failures per app, the step's own, and the unit errors of the apps whose units were started."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.apps: dict[str, Failure] = {}
        self.units: dict[str, str] = {}      # app -> what the service manager said
        self.step: Failure | None = None

    def _next(self, prev: Failure | None, release: str | None, error: str, again: bool) -> tuple[Failure, float]:
        attempts = prev.attempts + 1 if prev is not None and again else 1
        delay = self.backoff.delay(attempts)
        return Failure(release, error, attempts, timestamps.now_text(), time.monotonic() + delay,
                       timestamps.text_in(delay)), delay

    def fail(self, app: str, release: str | None, error: str) -> Failure:
        """Record that installing `release` (None: removing the app) failed; returns the failure."""
        prev = self.apps.get(app)
        failure, delay = self._next(prev, release, error, prev is not None and prev.release == release)
        self.apps[app] = failure
        log.warning("app failed", extra={"event": "app.error", "app": app, "release": release, "error": error,
                                         "attempts": failure.attempts, "retry_in": round(delay, 1)})
        return failure

    def fail_step(self, error: str) -> Failure:
        """Record that the step itself failed (the same error again counts as another attempt)."""
        prev = self.step
        failure, delay = self._next(prev, None, error, prev is not None and prev.error == error)
        self.step = failure
        log.warning("step failed", extra={"event": "step.error", "error": error, "attempts": failure.attempts,
                                          "retry_in": round(delay, 1)})
        return failure

    def step_worked(self) -> None:
        self.step = None

    def succeeded(self, app: str) -> None:
        """An install of `app` worked: its failure is over (its unit errors are the units' own)."""
        self.apps.pop(app, None)

    def removed(self, app: str) -> None:
        """`app` is gone from the server: nothing of it is failing any more."""
        self.apps.pop(app, None)
        self.units.pop(app, None)

    def forget(self, apps: Iterable[str]) -> None:
        """Drop failures the plan found no longer apply (another release is wanted now, ...)."""
        for app in apps:
            self.apps.pop(app, None)

    def next_retry_in(self) -> float | None:
        """Seconds until a failure is due for a retry, if any: the step's own first, as no
        release is retried before the step itself works."""
        now = time.monotonic()
        if self.step is not None:
            return max(0.0, self.step.retry_at - now)
        if not self.apps:
            return None
        return max(0.0, min(f.retry_at for f in self.apps.values()) - now)
