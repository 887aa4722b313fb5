"""server/{server}.json: the releases a server should run, read and written with compare-and-swap.

The file is a JSON array of release names, exactly as the original Push wrote it. An entry
`"app/"` is a placeholder meaning "nothing of app on this server": pulld removes the app if
it installed it. Removal is only ever that explicit entry; an app the file does not mention
is left as it is (docs/pulld.md#removal). Every write is conditional on
the generation that was read, so concurrent edits never silently overwrite each other.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from push import changes
from push.errors import Conflict, InvalidInput, InvalidServerFile, NotFound, StoreUnavailable
from push.layout import server_file_key
from push.names import check_app, check_server
from push.release import Release, app_of
from push.store import Store


def _invalid(server: str, what: str) -> InvalidServerFile:
    key = server_file_key(server)
    return InvalidServerFile(f"{key}: {what}", key=key, server=server)


@dataclass(frozen=True)
class ServerFile:
    """The parsed contents of one server file, with the generation it was read at.

    `generation` is None for a server that has no file yet; writing it then creates the
    file only if nobody else created it first.
    """

    server: str
    entries: tuple[str, ...] = ()
    generation: str | None = None
    # When the store says it was written (None: unknown, or no file). The fleet state counts
    # an app's convergence deadline from it (push.fleetstate).
    written: datetime | None = field(default=None, compare=False)
    _releases: dict[str, Release] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_server(self.server)
        releases: dict[str, Release] = {}
        seen: set[str] = set()
        for entry in self.entries:
            if not isinstance(entry, str):
                raise _invalid(self.server, f"entry {entry!r} is not a string")
            app = app_of(entry)
            try:
                check_app(app)
                if entry != app + "/":
                    releases[app] = Release.parse(entry)
            except InvalidInput as e:
                raise _invalid(self.server, str(e)) from None
            if app in seen:
                raise _invalid(self.server, f"app {app!r} is listed twice")
            seen.add(app)
        object.__setattr__(self, "_releases", releases)

    @classmethod
    def parse(cls, server: str, data: bytes, generation: str | None, written: datetime | None = None) -> ServerFile:
        try:
            entries = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise _invalid(server, f"not valid JSON ({e})") from None
        except RecursionError:  # "[[[[…" nested deeper than the parser goes
            raise _invalid(server, "not a JSON array of release names (nested too deeply)") from None
        if not isinstance(entries, list):
            raise _invalid(server, "expected a JSON array of release names")
        return cls(server=server, entries=tuple(entries), generation=generation, written=written)

    def to_bytes(self) -> bytes:
        return (json.dumps(list(self.entries), indent=2) + "\n").encode()

    @property
    def releases(self) -> dict[str, Release]:
        """The chosen release per app; placeholder entries are left out."""
        return dict(self._releases)

    @property
    def apps(self) -> list[str]:
        """Every app the file names, placeholders included, in file order."""
        return [app_of(e) for e in self.entries]

    def release_of(self, app: str) -> Release | None:
        return self._releases.get(app)

    def with_release(self, release: Release) -> ServerFile:
        """A copy that runs `release` for its app, replacing the app's entry in place."""
        entries = list(self.entries)
        for i, entry in enumerate(entries):
            if app_of(entry) == release.app:
                entries[i] = release.name
                break
        else:
            entries.append(release.name)
        return ServerFile(self.server, tuple(entries), self.generation)

    def with_placeholder(self, app: str) -> ServerFile:
        """A copy that says `app/` for `app` (in place, else appended): pulld removes it.
        The entry is never dropped: an app the file does not mention is left running."""
        placeholder = check_app(app) + "/"
        entries = list(self.entries)
        for i, entry in enumerate(entries):
            if app_of(entry) == app:
                entries[i] = placeholder
                break
        else:
            entries.append(placeholder)
        return ServerFile(self.server, tuple(entries), self.generation)


def read(store: Store, server: str, if_generation_not_match: str | None = None) -> ServerFile | None:
    """The server's file; an empty one (generation None) if it has none yet.

    With `if_generation_not_match`, returns None and downloads nothing when the file is
    still at that generation (a missing file always reads as empty).
    """
    key = server_file_key(server)
    try:
        got = store.get(key, if_generation_not_match=if_generation_not_match)
    except NotFound:
        return ServerFile(server)
    if got is None:
        return None
    data, info = got
    return ServerFile.parse(server, data, info.generation, info.updated)


def write(store: Store, new: ServerFile) -> ServerFile:
    """Write `new` only if the stored file is still at `new.generation`; else Conflict."""
    key = server_file_key(new.server)
    if new.generation is None:
        info = store.put(key, new.to_bytes(), if_absent=True, content_type="application/json")
    else:
        info = store.put(key, new.to_bytes(), if_generation_match=new.generation,
                         content_type="application/json")
    changes.record(store, changes.SERVER, new.server)  # after the write: whoever sees it reads this one
    return ServerFile(new.server, new.entries, info.generation, info.updated)


# Backoff between compare-and-swap attempts: "full jitter" (a random wait up to a cap that
# doubles per attempt), so writers that collided once spread out instead of colliding again.
BACKOFF_FIRST = 0.005
BACKOFF_CAP = 0.5
# A change that still applies is retried this long before the store is called too busy.
UPDATE_DEADLINE = 60.0


def update(store: Store, server: str, change: Callable[[ServerFile], ServerFile],
           attempts: int | None = None, deadline: float = UPDATE_DEADLINE) -> tuple[ServerFile, ServerFile]:
    """Read-modify-write with compare-and-swap, re-reading on Conflict.

    `change` is called on fresh data each attempt and raises when the change no longer
    applies (the caller's own expectation, e.g. ChangedMeanwhile); as long as it applies, a
    write that lost a race to another writer (another app's change) is retried with jittered
    backoff, so concurrent changes of different apps all go through. Only after `deadline`
    seconds of lost races is the store called too busy (StoreUnavailable, nothing written).
    `attempts` bounds the tries instead (then the last Conflict is raised; for benchmarks).
    Returns (before, after).
    """
    start = time.monotonic()
    attempt = 0
    while True:
        before = read(store, server)
        assert before is not None
        after = change(before)
        if after.entries == before.entries:
            return before, before
        try:
            return before, write(store, after)
        except Conflict:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            if time.monotonic() - start > deadline:
                raise StoreUnavailable(
                    f"{server_file_key(server)} is being changed by too many writers at once: "
                    f"{attempt} tries in {deadline:.0f} s lost the race; nothing was written, try again",
                    key=server_file_key(server)) from None
            time.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** attempt)))

