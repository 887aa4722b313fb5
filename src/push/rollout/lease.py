"""Who drives a rollout: `leases/rollouts/{id}.json`, taken and renewed by compare-and-swap.

Rules: a lease names its holder (a random id per driver process, with its host) and an
expiry. A driver may drive a rollout only while it holds an unexpired lease; it takes a
lease that is absent (create-only) or expired (compare-and-swap on the generation it read),
and renews its own before each step (compare-and-swap again). Two drivers racing for one
lease: one write wins, the other gets Conflict and does not drive. A driver that dies
stops renewing; after `ttl` seconds another takes over, and resumes from the rollout
object. Clocks: expiry is the writer's wall clock, so drivers' clocks must agree to well
within `ttl` (15 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta

from pydantic import Field

from push import layout, timestamps
from push.errors import Conflict, InvalidData, NotFound
from push.model import Model
from push.store import Store

log = logging.getLogger(__name__)
TTL = 15.0


class Lease(Model, frozen=True):
    noun = "lease"

    holder: str = Field(description="the driver holding it: {host}:{pid}:{random}")
    expires: str = Field(description="UTC: after this anyone may take it")
    taken: str = Field(description="UTC: when this holder took it")


class Leases:
    """One driver's leases (one per rollout it drives)."""

    def __init__(self, store: Store, holder: str, ttl: float = TTL) -> None:
        self.store, self.holder, self.ttl = store, holder, ttl
        self._generations: dict[str, str] = {}
        self._renewed: dict[str, float] = {}  # monotonic time of the last write of each lease held

    def hold(self, rollout_id: str) -> bool:
        """Take or renew the lease of `rollout_id`; False if another driver holds it. A
        lease held is rewritten once a third of its time has passed, not at every call."""
        if rollout_id in self._generations and time.monotonic() - self._renewed.get(rollout_id, 0) < self.ttl / 3:
            return True
        key = layout.rollout_lease_key(rollout_id)
        now = timestamps.now()
        try:
            got = self.store.get(key)
        except NotFound:
            got = None
        taken = timestamps.format_time(now)
        generation = None
        if got is not None:
            data, info = got
            generation = info.generation
            try:
                lease = Lease.from_bytes(data, key)
                expired = timestamps.parse(lease.expires) <= now
                mine = lease.holder == self.holder
            except (InvalidData, ValueError):
                lease, expired, mine = None, True, False
            if not (mine or expired):
                self._generations.pop(rollout_id, None)
                return False
            if mine and lease is not None:
                taken = lease.taken
            elif lease is not None:
                log.info("rollout %s: taking over the lease of %s (expired %s)", rollout_id, lease.holder,
                         lease.expires)
        body = Lease(holder=self.holder, expires=timestamps.format_time(now + timedelta(seconds=self.ttl)),
                     taken=taken).to_bytes()
        try:
            if generation is None:
                info = self.store.put(key, body, if_absent=True, content_type="application/json")
            else:
                info = self.store.put(key, body, if_generation_match=generation, content_type="application/json")
        except Conflict:
            self._generations.pop(rollout_id, None)
            return False
        self._generations[rollout_id] = info.generation
        self._renewed[rollout_id] = time.monotonic()
        return True

    def release(self, rollout_id: str) -> None:
        """Give the lease up (the rollout ended): deleted if still ours."""
        generation = self._generations.pop(rollout_id, None)
        if generation is None:
            return
        with contextlib.suppress(NotFound, Conflict):
            self.store.delete(layout.rollout_lease_key(rollout_id), if_generation_match=generation)


def holder_of(store: Store, rollout_id: str) -> Lease | None:
    """The lease of `rollout_id` (None: nobody drives it)."""
    key = layout.rollout_lease_key(rollout_id)
    try:
        got = store.get(key)
    except NotFound:
        return None
    assert got is not None
    try:
        return Lease.from_bytes(got[0], key)
    except InvalidData:
        return None
