"""The durable rollout: `rollouts/{id}.json`, written by compare-and-swap, holding its plan,
each wave and each server's state with what it ran before and the history ids of the
rollout's changes; and `rollouts/active/{app}.json`, the app's one active rollout.

Every writer (the driver, pause/resume/abort/promote from any front end) reads the object
with its generation and writes it back only if unchanged (`update`), so a control request
and a driver step never overwrite each other. The active pointer is created only if absent,
which is what makes "one active rollout per app" hold across push servers and CLIs.
"""

from __future__ import annotations

import difflib
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import Field

from push import layout, timestamps
from push.errors import Conflict, InvalidRequest, NotFound, PushError, StoreUnavailable
from push.lookup import did_you_mean
from push.model import Model
from push.store import Store

# running: waves in progress; paused: nothing written, deadlines stopped; rolling_back: the
# servers the rollout changed go back to what they ran before. The rest are final.
State = Literal["running", "paused", "rolling_back", "completed", "failed", "rolled_back", "aborted"]
FINAL: tuple[str, ...] = ("completed", "failed", "rolled_back", "aborted")
# A server in a rollout: pending (not written yet), changed (the rollout wrote it, health not
# known yet), healthy, unhealthy, left (someone else changed it: left alone, reported),
# reverted (the rollout wrote back what it ran before).
ServerPhase = Literal["pending", "changed", "healthy", "unhealthy", "left", "reverted"]
WRITTEN: tuple[str, ...] = ("changed", "healthy", "unhealthy")

DEFAULT_WAVES = "1,25%,100%"
DEFAULT_BAKE = 60.0
DEFAULT_WAVE_DEADLINE = 600.0


class Plan(Model, frozen=True):
    """What was asked: the servers in wave order, the cumulative wave sizes, the gates."""

    noun = "rollout plan"

    servers: list[str] = Field(description="every server of the rollout, in wave order (the first is the canary)")
    waves: list[int] = Field(description="cumulative server counts: wave i changes servers[:waves[i]]")
    waves_spec: str = Field(description="the waves as given, e.g. 1,25%,100%")
    bake: float = Field(description="seconds a wave stays healthy before the next one starts")
    wave_deadline: float = Field(description="seconds a wave has to become healthy")
    max_unhealthy: int = Field(description="unhealthy servers a wave may have")
    rollback: bool = Field(description="whether a failure returns the changed servers to what they ran")


class ServerStep(Model):
    """One server in the rollout."""

    noun = "rollout server"

    server: str
    wave: int = Field(description="the wave (0-based) that changes it")
    phase: ServerPhase = "pending"
    before: str | None = Field(description="the release it ran when the rollout started (null: none)")
    health: str = Field("unknown", description="healthy | progressing | unhealthy | unknown, as judged")
    detail: str | None = Field(None, description="why: the agent's health detail, who changed it meanwhile, ...")
    changed_at: str | None = None
    healthy_at: str | None = None
    history: list[str] = Field(default_factory=list, description="ids of the history records of its changes")


class Wave(Model):
    """One wave's progress."""

    noun = "rollout wave"

    size: int = Field(description="servers changed once it is done (cumulative)")
    started: str | None = None
    healthy_at: str | None = Field(None, description="when it became healthy: its bake started then")
    done: str | None = None


class Rollout(Model):
    """A rollout of one release of one app: the object at rollouts/{id}.json."""

    noun = "rollout"

    id: str
    app: str
    release: str
    who: str
    via: str = ""
    created: str
    state: State = "running"
    plan: Plan
    wave: int = Field(0, description="the current wave (0-based)")
    waves: list[Wave]
    servers: dict[str, ServerStep]
    # Requests from pause/resume/abort/promote, which the driver carries out at its next step
    # (so a control request and a driver step never write the same fields).
    pause: bool = Field(False, description="paused is asked (resume clears it)")
    promote: bool = Field(False, description="skip the rest of the current bake (asked, not done yet)")
    abort: Literal["rollback", "stop"] | None = Field(None, description="an abort asked, not done yet")
    paused_at: str | None = None
    reason: str | None = Field(None, description="why it stopped (failed, rolled back, aborted)")
    ended: str | None = None
    events: list[str] = Field(default_factory=list, description="what happened, one line each, oldest first")
    # Not stored: the object's generation (compare-and-swap).
    generation: str | None = Field(None, exclude=True)

    @property
    def active(self) -> bool:
        return self.state not in FINAL

    def wave_servers(self, wave: int) -> list[str]:
        """The servers wave `wave` is judged on (cumulative)."""
        return self.plan.servers[:self.plan.waves[wave]]

    def note(self, now: str, text: str) -> None:
        self.events.append(f"{now[:19].replace('T', ' ')}Z {text}")
        del self.events[:-200]


def parse_waves(spec: str, count: int) -> list[int]:
    """Cumulative wave sizes of `count` servers from "1,25%,100%" (counts or percentages,
    rounded up, at least 1): non-decreasing, duplicates dropped, the last one every server."""
    if count <= 0:
        raise InvalidRequest("a rollout needs at least one server")
    sizes: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if part.endswith("%"):
                pct = float(part[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                size = math.ceil(count * pct / 100 - 1e-9)
            else:
                size = int(part)
                if size <= 0:
                    raise ValueError
        except ValueError:
            raise InvalidRequest(f"invalid wave {part!r} in {spec!r}: expected a count (1, 5) or a percentage "
                                 "(25%), cumulative, e.g. 1,25%,100%") from None
        size = max(1, min(count, size))
        if sizes and size < sizes[-1]:
            raise InvalidRequest(f"waves are cumulative and must not shrink: {spec!r}")
        if not sizes or size != sizes[-1]:
            sizes.append(size)
    if sizes[-1] != count:
        sizes.append(count)
    return sizes


# -- the bucket -------------------------------------------------------------------------------


def read(store: Store, rollout_id: str) -> Rollout:
    """The rollout with its generation; NotFound if there is none."""
    try:
        key = layout.rollout_key(rollout_id)
    except ValueError:
        near = did_you_mean(_near_ids(store, rollout_id))
        raise NotFound(f"no rollout {rollout_id!r}" + (near or " (ids look like 01764648000000000000-0a1b2c3d)")) \
            from None
    try:
        got = store.get(key)
    except NotFound:
        raise NotFound(f"no rollout {rollout_id}{did_you_mean(_near_ids(store, rollout_id))}", key=key) from None
    assert got is not None
    data, info = got
    r = Rollout.from_bytes(data, key)
    r.generation = info.generation
    return r


def _near_ids(store: Store, rollout_id: str) -> list[str]:
    """The rollout a typo'd or shortened id most likely meant: those it begins (if few), else
    the one closest (one listing; only after a miss)."""
    try:
        ids = list_ids(store)
    except PushError:
        return []
    given = rollout_id.strip().lower()
    starting = [i for i in ids if given and i.startswith(given)]
    if 0 < len(starting) <= 3:
        return starting
    return difflib.get_close_matches(given, ids, n=1, cutoff=0.9)


def write(store: Store, r: Rollout) -> Rollout:
    """Write `r` only if the stored one is still at `r.generation` (created when None); else Conflict."""
    key = layout.rollout_key(r.id)
    body = r.to_bytes(indent=1)
    if r.generation is None:
        info = store.put(key, body, if_absent=True, content_type="application/json")
    else:
        info = store.put(key, body, if_generation_match=r.generation, content_type="application/json")
    r.generation = info.generation
    return r


def update(store: Store, rollout_id: str, change: Callable[[Rollout], None], deadline: float = 30.0) -> Rollout:
    """Read-modify-write by compare-and-swap, retried on fresh data while others write;
    `change` mutates the rollout or raises to refuse."""
    start = time.monotonic()
    attempt = 0
    while True:
        r = read(store, rollout_id)
        change(r)
        try:
            return write(store, r)
        except Conflict:
            attempt += 1
            if time.monotonic() - start > deadline:
                raise StoreUnavailable(f"rollout {rollout_id}: too many writers at once; nothing was written") from None
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** attempt)))


def list_ids(store: Store) -> list[str]:
    """Every rollout id, oldest first."""
    ids = [rid for info in store.list(layout.ROLLOUTS) if (rid := layout.rollout_of_key(info.key)) is not None]
    return sorted(ids)


def recent(store: Store, limit: int = 50) -> Iterator[Rollout]:
    """Rollouts newest first (unreadable ones skipped)."""
    for rid in reversed(list_ids(store)[-limit:]):
        try:
            yield read(store, rid)
        except (NotFound, Conflict):
            continue
        except Exception:
            continue


class RecentRollouts:
    """`recent()` for a process that lists rollouts again and again (the push server's
    rollouts page and API): one listing of rollouts/ a call, and a read only of the rollouts
    whose generation changed since (a cache keyed by id and generation, of the `limit`
    newest). The rollouts it answers are shared: read them, never change them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: dict[str, Rollout] = {}

    def __call__(self, limit: int = 50) -> list[Rollout]:
        listed = {rid: info.generation for info in self.store.list(layout.ROLLOUTS)
                  if (rid := layout.rollout_of_key(info.key)) is not None}
        newest = sorted(listed)[-limit:][::-1]
        with self._lock:
            cache = dict(self._cache)
        out = []
        for rid in newest:
            r = cache.get(rid)
            if r is None or not listed[rid] or r.generation != listed[rid]:
                try:
                    r = read(self.store, rid)
                except Exception:  # unreadable: skipped, as recent() skips it
                    cache.pop(rid, None)
                    continue
                cache[rid] = r
            out.append(r)
        with self._lock:
            # Kept: the newest, of the largest `limit` asked lately (the page's and the API's).
            keep = set(sorted(listed)[-max(limit, 50):])
            self._cache = {rid: r for rid, r in cache.items() if rid in keep}
        return out


# -- rollouts/active/{app}.json: one active rollout per app --------------------------------------


class ActivePointer(Model, frozen=True):
    noun = "active rollout pointer"

    id: str
    app: str


def claim_active(store: Store, app: str, rollout_id: str) -> None:
    """Make `rollout_id` the app's active rollout; RolloutActive if another one is (and is)."""
    key = layout.active_rollout_key(app)
    body = ActivePointer(id=rollout_id, app=app).to_bytes()
    for _ in range(3):
        try:
            store.put(key, body, if_absent=True, content_type="application/json")
            return
        except Conflict:
            other = active_of(store, app)
            if other is not None:
                raise RolloutActive.of(other) from None
            # The pointer named a finished rollout and was cleared: try again.
    raise StoreUnavailable(f"{key}: could not be claimed; try again")


def active_of(store: Store, app: str) -> Rollout | None:
    """The app's active rollout, if any. A pointer left behind by a rollout that ended (its
    driver died between the two writes) is cleared here."""
    key = layout.active_rollout_key(app)
    try:
        got = store.get(key)
    except NotFound:
        return None
    assert got is not None
    data, info = got
    try:
        pointer = ActivePointer.from_bytes(data, key)
        r = read(store, pointer.id)
    except (NotFound, Conflict):
        r = None
    except Exception:
        r = None
    if r is not None and r.active:
        return r
    release_active(store, app, info.generation)
    return None


def release_active(store: Store, app: str, generation: str | None = None, rollout_id: str | None = None) -> None:
    """Clear the app's pointer (only the one at `generation`, or only if it names `rollout_id`)."""
    key = layout.active_rollout_key(app)
    try:
        if rollout_id is not None:
            got = store.get(key)
            assert got is not None
            if ActivePointer.from_bytes(got[0], key).id != rollout_id:
                return
            generation = got[1].generation
        store.delete(key, if_generation_match=generation) if generation else store.delete(key)
    except (NotFound, Conflict):
        pass


def active_ids(store: Store) -> list[str]:
    """The ids the active pointers name (the driver's work list)."""
    out = []
    for info in store.list(layout.ACTIVE_ROLLOUTS):
        app = layout.app_of_active_key(info.key)
        if app is None:
            continue
        try:
            got = store.get(info.key)
            assert got is not None
            out.append(ActivePointer.from_bytes(got[0], info.key).id)
        except Exception:
            continue
    return out


class RolloutActive(Conflict):
    """The app has an active rollout: a plain change of a server in it, or a second rollout,
    is refused (the message names the rollout)."""

    def __init__(self, message: str, *, rollout_id: str | None = None) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id

    @classmethod
    def of(cls, r: Rollout, server: str | None = None) -> RolloutActive:
        where = f"{server} is in" if server else f"{r.app} has"
        return cls(f"{where} rollout {r.id} of {r.app} ({r.state}, wave {r.wave + 1} of {len(r.waves)}, "
                   f"started by {r.who}): refused while it runs; `push rollout abort {r.id}` or wait for it",
                   rollout_id=r.id)


def check_not_in_rollout(store: Store, server: str, app: str) -> None:
    """Refuse a plain deploy, rollback or removal of `app` on `server` while a rollout of
    `app` that includes `server` is active (one read when there is none)."""
    r = active_of(store, app)
    if r is not None and server in r.servers:
        raise RolloutActive.of(r, server)


def now_text() -> str:
    return timestamps.now_text()
