"""Publishing the agent's report to `status/{server}.json`: when it changed, or when it is due.

A report that says nothing new is not written again until `interval` has passed (a
heartbeat, so the push server sees the agent alive); a failed write is logged and tried
again later, and never undoes the step's work. Used by `push.agent.agent`.
"""

from __future__ import annotations

import json
import logging
import random
import time

from push import changes
from push import status as status_mod
from push.agent.metrics import Metrics
from push.errors import PushError
from push.status import AgentStatus
from push.store import Store

log = logging.getLogger(__name__)

# What changes in every report without saying anything new.
_VOLATILE = ("time", "step")
# Each heartbeat comes up to this fraction of the interval early, at random: agents that
# reported at the same moment (all woken by one fleet-wide deploy) drift apart instead of
# writing together every minute.
HEARTBEAT_JITTER = 0.1


class Publisher:
    """Writes one server's reports, skipping the ones that say nothing new."""

    def __init__(self, store: Store, *, interval: float, metrics: Metrics) -> None:
        self.store = store
        self.interval = interval            # publish at least this often (seconds)
        self._factor = 1.0                  # this time, the interval times this (its jitter)
        self.metrics = metrics
        self._last: dict[str, object] | None = None
        self._last_at = 0.0                 # time.monotonic() of the last written report
        self._last_try = 0.0                # ... of the last attempt, written or not

    def publish(self, report: AgentStatus, *, force: bool = False) -> bool:
        """Write `report` unless it says nothing new and the last one is recent; True if written."""
        content = report.to_json()
        comparable = {k: v for k, v in content.items() if k not in _VOLATILE}
        due = time.monotonic() - self._last_at >= self.interval * self._factor
        if not force and not due and comparable == self._last:
            return False
        self._last_try = time.monotonic()
        try:
            status_mod.write(self.store, report)
        except PushError as e:  # retried with the next report; the step's work stands
            self.metrics.reports.labels("failed").inc()
            log.warning("cannot publish status", extra={"event": "report.error", "error": str(e)})
            return False
        if comparable != self._last:
            # Something new: the push server looks at it at its next poll. A heartbeat is
            # not journaled (it would cost the push server a read per agent per minute);
            # the push server's full re-list picks heartbeats up now and then.
            changes.record(self.store, changes.STATUS, report.server)
        self._last, self._last_at = comparable, time.monotonic()
        self._factor = random.uniform(1 - HEARTBEAT_JITTER, 1.0)
        self.metrics.reports.labels("ok").inc()
        log.info("status published", extra={"event": "report", "in_sync": report.in_sync,
                                            "summary": json.dumps({a: s.state for a, s in report.apps.items()})})
        return True

    def due_in(self) -> float:
        """Seconds until a report is due again, counted from the last try, so that a store
        that refuses reports is not hammered."""
        return max(0.0, self._last_try + self.interval * self._factor - time.monotonic())
