"""Backoff: how long to wait before retrying something that failed, with jitter.

Used for failed releases (so a bad release is not retried every cycle), for an unreachable
store or a bad server file, and by the triggers when they reconnect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: base, 2×base, 4×base ... up to cap, each with ±jitter."""

    base: float = 15.0
    cap: float = 900.0
    factor: float = 2.0
    jitter: float = 0.2   # fraction of the delay, drawn uniformly either side

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`-th consecutive failure (1 for the first)."""
        if attempts <= 0:
            return 0.0
        raw = min(self.cap, self.base * self.factor ** min(attempts - 1, 62))
        return max(0.0, raw * (1 + random.uniform(-self.jitter, self.jitter)))
