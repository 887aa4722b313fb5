"""Unit requests: start / stop / restart a systemd unit on a server, through the bucket.

The agent owns the units, so the push server (or `push unit` straight to the bucket) only
records a request under `requests/{server}/`; pulld acts on it at its next step and writes
the outcome back into the same object. docs/unit-requests.md is the protocol.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import Field, field_validator

from push import changes, layout, timestamps
from push.errors import InvalidData, InvalidRequest, NotFound, PushError
from push.model import Model
from push.names import check_app, check_server, check_unit
from push.store import Store
from push.units import ACTIONS

State = Literal["pending", "done", "failed", "expired", "refused"]
STATES: tuple[str, ...] = get_args(State)
# A request the agent has not picked up by then is never acted on: an agent that was down
# for a day must not restart things nobody asked for today.
DEFAULT_TTL_SECONDS = 600
# Finished requests are deleted (by the agent, or by `prune`) after this long.
KEEP_SECONDS = 24 * 3600


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown unit action {action!r} (known: {', '.join(ACTIONS)})")
    return action


class UnitRequest(Model, frozen=True):
    """One request, as stored in `requests/{server}/{id}.json`."""

    noun = "unit request"

    id: str                      # "{20-digit ns}-{8 hex}": sorts in request order
    server: str
    app: str
    unit: str
    action: str                  # start | stop | restart (push.units.ACTIONS)
    who: str
    time: str                    # UTC ISO-8601, when it was requested
    expires: str                 # UTC ISO-8601; not acted on after this
    state: State = "pending"
    result: str | None = None    # the agent's words (systemctl's stderr on failure)
    done_time: str | None = None
    done_by: str | None = None   # the agent's hostname
    history_id: str | None = None
    # The generation of the stored object it was read from (for the compare-and-swap that
    # writes the outcome back); not part of the JSON.
    generation: str | None = Field(default=None, exclude=True)

    @field_validator("action")
    @classmethod
    def _known_action(cls, action: str) -> str:
        if action not in ACTIONS:
            raise ValueError(f"unknown unit action {action!r}")
        return action

    @property
    def key(self) -> str:
        return layout.request_key(self.server, self.id)

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or timestamps.now()) > timestamps.parse(self.expires)


def create(store: Store, server: str, app: str, unit: str, action: str, who: str, *,
           ttl: float = DEFAULT_TTL_SECONDS, history_id: str | None = None) -> UnitRequest:
    """Record a pending request (create-only: ids never collide silently)."""
    check_app(app)
    check_unit(unit)
    check_action(action)
    req = UnitRequest(id=timestamps.new_id(), server=check_server(server), app=app, unit=unit,
                      action=action,
                      who=who, time=timestamps.now_text(), expires=timestamps.text_in(ttl), history_id=history_id)
    info = store.put(req.key, req.to_bytes(indent=1), if_absent=True, content_type="application/json")
    changes.record(store, changes.REQUESTS, server)  # a new key: the server's watch revision moves
    return req.model_copy(update={"generation": info.generation})


def list_requests(store: Store, server: str) -> list[UnitRequest]:
    """Every request of `server`, oldest first; unreadable objects are skipped."""
    out = []
    for info in store.list(layout.requests_prefix(server)):
        if layout.request_of_key(info.key) is None:
            continue
        try:
            got = store.get(info.key)
        except NotFound:
            continue
        assert got is not None
        data, obj = got
        try:
            req = UnitRequest.from_bytes(data, info.key)
        except InvalidData:
            continue
        out.append(req.model_copy(update={"generation": obj.generation}))
    return out


def pending(store: Store, server: str) -> list[UnitRequest]:
    """The requests the agent still has to act on (or mark expired), oldest first."""
    return [r for r in list_requests(store, server) if r.state == "pending"]


def complete(store: Store, req: UnitRequest, state: str, result: str | None, by: str) -> UnitRequest:
    """Write the outcome back, only if the object is still the one that was read (else Conflict)."""
    if state not in STATES or state == "pending":
        raise InvalidRequest(f"cannot complete a unit request as {state!r}")
    done = UnitRequest.model_validate({**req.to_json(), "state": state, "result": result,
                                       "done_time": timestamps.now_text(), "done_by": by})
    info = store.put(req.key, done.to_bytes(indent=1), if_generation_match=req.generation,
                     content_type="application/json")
    return done.model_copy(update={"generation": info.generation})


def prune(store: Store, server: str, keep_seconds: float = KEEP_SECONDS) -> int:
    """Delete finished requests older than `keep_seconds`; returns how many went."""
    now = timestamps.now()
    gone = 0
    for req in list_requests(store, server):
        if req.state == "pending" or req.done_time is None:
            continue
        if (now - timestamps.parse(req.done_time)).total_seconds() > keep_seconds:
            try:
                store.delete(req.key, if_generation_match=req.generation)
                gone += 1
            except PushError:
                continue
    if gone:
        changes.record(store, changes.REQUESTS, server)
    return gone
