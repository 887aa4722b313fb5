"""The fleet's change journal: one empty object under `changes/` per write of a server's objects.

Push's writers add an entry after each write: `push.serverfile.write` (kind `server`),
`push.unitrequests` (`requests`) and pulld's `Publisher` for a report that says something
new (`status`; a heartbeat that only moves the time writes none). The push server's fleet
view (push.fleetview) then lists only the journal's tail at each poll, and re-reads only
the servers it names, so a poll of a fleet where nothing changes is one listing page,
whatever its size. Writers that write no journal (the original tools, pulld before this
one, a heartbeat, an entry whose write failed) are found by the full re-list the view
still makes every `full_interval`. Entries are written after the object, so whoever sees
an entry reads the object at least as new as that write; they are pruned after
`KEEP_SECONDS` by the push server (a bucket lifecycle rule on `changes/` may do the same).
"""

from __future__ import annotations

import logging
import time

from push import layout
from push.errors import NotFound, PushError
from push.names import check_server
from push.store import Store
from push.timestamps import new_id

log = logging.getLogger(__name__)

SERVER, STATUS, REQUESTS = "server", "status", "requests"
KINDS = (SERVER, STATUS, REQUESTS)
# Entries are read back this far behind the newest one seen, so a writer whose clock lags a
# little, or whose entry lands late, is still found (an older one waits for the full re-list).
SKEW_NS = 30 * 10**9
KEEP_SECONDS = 3600.0


def record(store: Store, kind: str, server: str) -> None:
    """Journal a write of `server`'s `kind` object; best effort (the full re-list finds it anyway)."""
    try:
        store.put(layout.change_key(new_id(), kind, server), b"", if_absent=True)
    except PushError as e:
        log.warning("could not journal the change of %s of %s (seen at the next full re-list): %s", kind, server, e)


class Journal:
    """A reader's place in the journal: `read()` gives each entry once, oldest first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor_ns = 0                  # the newest entry seen (or the start of the last full look)
        self._seen: dict[str, int] = {}     # keys within SKEW_NS of the cursor, already given

    def covered_until(self, ns: int) -> None:
        """A full look that started at `ns` saw every write journaled before it."""
        self.cursor_ns = max(self.cursor_ns, ns)

    def read(self) -> list[tuple[str, str]]:
        """(kind, server) of every entry not given before, oldest first (one listing page
        when nothing changed)."""
        out: list[tuple[str, str]] = []
        for info in self.store.list(layout.CHANGES, start_after=layout.changes_start_after(self.cursor_ns - SKEW_NS)):
            entry = layout.change_entry(info.key)
            if entry is None or info.key in self._seen:
                continue
            ns, kind, server = entry
            self._seen[info.key] = ns
            self.cursor_ns = max(self.cursor_ns, ns)
            try:
                check_server(server)
            except PushError:
                continue
            out.append((kind, server))
        floor = self.cursor_ns - SKEW_NS
        self._seen = {k: ns for k, ns in self._seen.items() if ns > floor}
        return out


def prune(store: Store, keep_seconds: float = KEEP_SECONDS, limit: int = 1000) -> int:
    """Delete up to `limit` entries older than `keep_seconds`, oldest first; returns how many.
    Costs a listing page per 1,000 old entries and nothing more (keys are in time order)."""
    cutoff = time.time_ns() - int(keep_seconds * 10**9)
    deleted = 0
    for info in store.list(layout.CHANGES):
        entry = layout.change_entry(info.key)
        if entry is not None and entry[0] >= cutoff:
            break
        if deleted >= limit:
            break
        try:
            store.delete(info.key)
            deleted += 1
        except NotFound:  # another push server pruned it
            continue
    return deleted
