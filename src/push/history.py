"""History: who changed what, when, on which server, kept in the bucket under `history/`.

Every change (deploy, rollback, remove, unit request) is one immutable JSON record, written
under three keys so that each view is one listing, newest first:

    history/server/{server}/{inv}-{rand}~{app}.json     per server (and per server+app)
    history/app/{app}/{inv}-{rand}~{server}.json        per app
    history/all/{inv}-{rand}~{server}~{app}.json        the whole fleet

`inv` is 99999999999999999999 minus the record's time in nanoseconds, 20 digits, so stores
that list in key order list newest first; the names after `~` let a listing be filtered
without reading records ('~' is in no server or app name). Rollback reads this history
(`previous_release`), never "the second newest release".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator

from pydantic import Field

from push import layout, timestamps
from push.errors import CorruptObject, InvalidData, InvalidRequest, NotFound, PushError, StoreError
from push.model import Model
from push.names import check_app, check_note, check_server
from push.store import Store

log = logging.getLogger(__name__)
# At most this many unreadable history keys are remembered (for the problems list).
SKIPPED_MAX = 1000

ACTIONS = ("deploy", "rollback", "remove", "unit-start", "unit-stop", "unit-restart")
# Actions that change what a server should run (the others are requests to its agent).
CHANGES = ("deploy", "rollback", "remove")


class Record(Model, frozen=True):
    """One change, stored under its three keys. `from_`/`to` are release names (None: the
    app was not listed); `unit` names the unit of a unit request."""

    noun = "history record"

    id: str
    time: str
    who: str
    server: str
    app: str
    action: str
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    note: str = ""
    result: str = "ok"
    unit: str | None = None
    via: str = ""          # "push-server@HOST" or "cli@HOST": which front end wrote it
    rollout: str | None = None  # the rollout that made the change (push.rollout), None for a plain one
    extra: dict[str, str] = Field(default_factory=dict)

    @property
    def ns(self) -> int:
        """When it was made, in ns since the epoch (from its id)."""
        return timestamps.id_parts(self.id)[0]

    def bucket_keys(self) -> list[str]:
        """Its three keys: per server, per app, whole fleet (written in that order)."""
        return layout.history_keys(self.id, self.server, self.app)


def new_record(who: str, server: str, app: str, action: str, *, from_: str | None = None,
               to: str | None = None, note: str = "", result: str = "ok", unit: str | None = None,
               via: str = "", now_ns: int | None = None, rollout: str | None = None) -> Record:
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown history action {action!r}")
    check_server(server)
    check_app(app)
    check_note(note)
    record_id = timestamps.new_id(now_ns)
    return Record(id=record_id, time=timestamps.format_time(timestamps.id_time(record_id)), who=who,
                  server=server, app=app, action=action, from_=from_, to=to, note=note, result=result,
                  unit=unit, via=via, rollout=rollout)


class History:
    """Reads and writes history records; records are immutable, so reads are cached."""

    def __init__(self, store: Store, cache_size: int = 50_000) -> None:
        self.store = store
        self._cache: OrderedDict[str, Record] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.reads = 0  # record bodies fetched from the store (for tests and /metrics)
        # Keys under history/ that hold no readable record: key -> why (skipped when listed).
        self.skipped: dict[str, str] = {}

    # -- writing ------------------------------------------------------------------------

    def write(self, record: Record) -> Record:
        """Store a record under its three keys (create-only: ids never collide silently)."""
        body = record.to_bytes(indent=1) + b"\n"
        for key in record.bucket_keys():
            self.store.put(key, body, if_absent=True, content_type="application/json")
        self._remember(record.id, record)
        return record

    # -- reading ------------------------------------------------------------------------

    def _remember(self, rid: str, record: Record) -> None:
        with self._lock:
            self._cache[rid] = record
            self._cache.move_to_end(rid)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _skip(self, key: str, why: str) -> None:
        with self._lock:
            if key not in self.skipped:
                log.warning("skipping %s: %s", key, why)
                if len(self.skipped) < SKIPPED_MAX:
                    self.skipped[key] = why

    def _read(self, key: str) -> Record | None:
        """The record at `key`; None (skipped, counted, logged) for anything that is not one:
        a foreign key, a damaged object, a record of another id. One bad object never
        fails a listing."""
        rid = layout.history_id_of_key(key)
        if rid is None:
            self._skip(key, "not a history record's key ({20 digits}-{8 hex}~...)")
            return None
        with self._lock:
            cached = self._cache.get(rid)
        if cached is not None:
            return cached
        try:
            got = self.store.get(key)
        except NotFound:
            return None
        except InvalidData as e:
            self._skip(key, str(e))
            return None
        except PushError as e:
            if not isinstance(e, StoreError) or isinstance(e, CorruptObject):
                self._skip(key, str(e))
                return None
            raise
        assert got is not None
        self.reads += 1
        try:
            record = Record.from_bytes(got[0], key)
        except InvalidData as e:  # not a record: skipped, as a listing skips foreign keys
            self._skip(key, str(e))
            return None
        if record.id != rid:
            self._skip(key, f"holds record {record.id!r}, not {rid!r}")
            return None
        self._remember(rid, record)
        return record

    def _keys(self, server: str | None, app: str | None, before: str | None) -> Iterator[str]:
        """Keys of the matching records, newest first, from the cheapest index."""
        prefix, suffix = layout.history_listing(None if server is None else check_server(server),
                                                None if app is None else check_app(app))
        start_after = None
        if before is not None:
            try:
                start_after = layout.history_start_after(prefix, before)
            except ValueError:
                raise InvalidRequest(f"invalid history id {before!r}") from None
        for info in self.store.list(prefix, start_after=start_after):
            if not layout.is_history_record(prefix, info.key):
                continue
            if suffix is not None and not info.key.endswith(suffix):
                continue
            yield info.key

    def records(self, server: str | None = None, app: str | None = None, *,
                limit: int | None = 100, before: str | None = None,
                actions: tuple[str, ...] | None = None) -> list[Record]:
        """Records newest first, for a server, an app, both, or the whole fleet.

        `before` is a record id: only older records are returned (for paging).
        """
        out: list[Record] = []
        for record in self.iter_records(server, app, before=before):
            if actions is not None and record.action not in actions:
                continue
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
        return out

    def iter_records(self, server: str | None = None, app: str | None = None, *,
                     before: str | None = None) -> Iterator[Record]:
        for key in self._keys(server, app, before):
            record = self._read(key)
            if record is not None:
                yield record

    def last_change(self, server: str, app: str) -> Record | None:
        """The newest deploy/rollback/remove of `app` on `server`."""
        for record in self.iter_records(server, app):
            if record.action in CHANGES:
                return record
        return None

    def previous_release(self, server: str, app: str, current: str | None) -> tuple[str | None, Record | None]:
        """What `app` on `server` ran before `current`, by the history: (release, basis).

        Rollbacks undo deploys like a stack: after A→B, B→C and a rollback to B, the
        next rollback goes to A, not back to C. If the server file was changed outside
        Push (no record ends at `current`), the answer is the last release the history
        knew. NotFound when the history cannot say.
        """
        skip = 0
        first = True
        for record in self.iter_records(server, app):
            if record.action not in CHANGES or record.result != "ok":
                continue
            if first:
                first = False
                if record.to != current:
                    return record.to, record
            if record.action == "rollback":
                skip += 1
                continue
            if skip == 0:
                return record.from_, record
            skip -= 1
        if first:
            raise NotFound(f"no history of {app} on {server}: choose a release to deploy instead")
        raise NotFound(f"the history of {app} on {server} has no release before {current}")
