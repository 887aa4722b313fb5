"""Waiting for a condition in tests, never for a fixed time: the one helper every test uses.

A test that sleeps "long enough" is slow when the machine is idle and flaky when it is
busy; `wait_for` returns as soon as the condition holds and fails, naming it, after a
generous timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Call `condition` until it returns something true, and return that; AssertionError
    naming `what` if it has not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
