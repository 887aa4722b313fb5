"""A call run in a thread, its result or its error collected later.

How the builder overlaps its steps with the package's write: the unit check and dpkg's
read-back of the control member during compression, the fsync and lintian during the hash.
The calls are subprocesses and system calls, which release the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """`call(*args)` started in a daemon thread; `result()` waits for it and returns or raises."""

    def __init__(self, call: Callable[..., T], *args: object) -> None:
        self._result: T | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = call(*args)
            except BaseException as e:  # handed to whoever asks for the result
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait, and leave any error for result()."""
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
