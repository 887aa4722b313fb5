"""`--wait`: following changed servers until each app is done, failed or stuck.

`push deploy|rollback|remove --wait` (and `push deploy --all-servers --wait`) hand the
(server, app) pairs they changed to `follow`, with a function that fetches the fleet state
(straight from the bucket or from a push server: push.fleetcli's backends). The judgement
is the fleet state's own `progress` (push.fleetstate): this module only looks again until
every pair has an outcome, and prints it: a live line per server on a terminal, a plain
line per change of progress otherwise. Used by push.fleetcli.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from push.errors import StoreUnavailable
from push.exits import WAIT_FAILED, WAIT_STUCK
from push.fleetstate import AppState, FleetState
from push.release import short

# How often the state is looked at again (a push server's own poll is 2 s; the bucket's
# change journal is one listing page).
INTERVAL = 1.0
# Without --timeout: the progress deadlines end the wait (300 s after the write, or a
# release's health deadline); this only bounds a wait on a fleet state that never moves.
DEFAULT_TIMEOUT = 3600.0
# A push server (or bucket) that does not answer is looked at again for this long before the
# wait ends with its error: a push server restarted meanwhile (an upgrade of Push itself)
# must not end a wait on its agents, which carry on without it.
OUTAGE_GRACE = 60.0


@dataclass
class Followed:
    """One (server, app) being followed, and what was last seen of it."""

    server: str
    app: str
    state: AppState | None = None
    timed_out: bool = False

    @property
    def progress(self) -> str:
        if self.timed_out:
            return "stuck"
        return self.state.progress if self.state is not None else "converging"

    @property
    def finished(self) -> bool:
        return self.timed_out or (self.state is not None and self.state.progress != "converging")

    def line(self) -> str:
        state = self.state
        if self.timed_out:
            why = "--timeout passed: " + ((state.progress_reason or "") if state is not None else "no state seen")
        elif state is None:
            why = "not in the fleet state yet"
        elif state.progress == "done":
            why = "removed" if state.desired is None else f"{short(state.desired)} installed, healthy"
        else:
            why = state.progress_reason or ""
        why = "; ".join(part.strip() for part in why.splitlines() if part.strip())  # one line per server
        return f"{self.server}  {self.app}  {self.progress}: {why}"


def follow(targets: Sequence[tuple[str, str]], fetch: Callable[[], FleetState], *, out: TextIO, live: bool,
           timeout: float | None = None, interval: float = INTERVAL,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Look at the fleet state until every target is done, failed or stuck (or `timeout`
    seconds pass); 0 if all are done, else WAIT_FAILED if any failed, else WAIT_STUCK.
    `live`: rewrite one line per target in place (a terminal), else print a line per change."""
    followed = [Followed(server, app) for server, app in targets]
    if not followed:
        return 0
    limit = clock() + (timeout if timeout is not None else DEFAULT_TIMEOUT)
    printed: dict[int, str] = {}
    drawn = False
    down_since: float | None = None
    while True:
        try:
            state = fetch()
        except StoreUnavailable as e:
            if down_since is None:
                down_since = clock()
                out.write(f"{e}; looking again for up to {OUTAGE_GRACE:.0f} s\n")
                out.flush()
                drawn = False  # live lines: drawn afresh below this one
            elif clock() - down_since >= OUTAGE_GRACE or clock() >= limit:
                raise
            sleep(interval)
            continue
        down_since = None
        by_server = {s.server: s for s in state.servers}
        for f in followed:
            if f.finished:
                continue
            server = by_server.get(f.server)
            f.state = next((a for a in server.apps if a.app == f.app), None) if server is not None else None
        if clock() >= limit:
            for f in followed:
                if not f.finished:
                    f.timed_out = True
        if live:
            if drawn:
                out.write(f"\x1b[{len(followed)}F")  # back to the first line
            for f in followed:
                out.write("\x1b[2K" + f.line() + "\n")
            drawn = True
        else:
            for i, f in enumerate(followed):
                text = f.line()
                if printed.get(i) != text:
                    out.write(text + "\n")
                    printed[i] = text
        out.flush()
        if all(f.finished for f in followed):
            break
        sleep(interval)
    if any(f.progress == "failed" for f in followed):
        return WAIT_FAILED
    if any(f.progress != "done" for f in followed):
        return WAIT_STUCK
    return 0
