"""Following a change the pages asked for: what the banner says while the agent converges.

After a confirmed deploy, rollback or removal the page shows what was requested and polls
`outcome(record, state)` until the server's state answers it: installed and healthy (or
removed), or failed, reverted or refused, with the agent's reason. The judgement is the
model's (push.fleetstate: marks, health, progress); this module only says it in words.
Used by push.server.routes_ui and its banner template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from push.fleetstate import AppState, ServerState
from push.history import Record
from push.release import short
from push.unitrequests import UnitRequest

Phase = Literal["requested", "progressing", "stuck", "done", "failed", "superseded"]
# Phases after which the banner stops following: nothing more will come of the change.
FINAL: frozenset[str] = frozenset({"done", "failed", "superseded"})


@dataclass(frozen=True)
class Outcome:
    """Where a requested change stands: `phase`, `words` for the banner, and `detail` (the
    agent's reason or log lines) when there is one."""

    phase: Phase
    words: str
    detail: str | None = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL


def outcome(record: Record, state: ServerState | None) -> Outcome:
    """What `record` (a deploy, rollback or removal) has come to on its server.

    Whether it is done, failed or stuck is the model's `progress` alone: a failure the
    agent reported about an earlier release (its state, a `reverted_from`) does not fail a
    change made since; the fields only choose the words."""
    a = next((x for x in state.apps if x.app == record.app), None) if state is not None else None
    if state is None or a is None:
        return Outcome("requested", "requested; waiting for the push server to see it")
    if a.desired != record.to:
        return Outcome("superseded", f"changed again since: {record.server} should now run {short(a.desired)}")
    progress, reason = a.progress, a.progress_reason
    if record.to is None:
        return _removal(a, progress, reason)
    if progress == "failed":
        if a.reverted_from == record.to:
            return Outcome("failed", f"reverted by the agent to {short(a.actual)}: not healthy in time",
                           _detail(a.health_detail, a.error, reason))
        if a.actual == record.to and a.health == "unhealthy":
            return Outcome("failed", "installed, unhealthy", _detail(a.health_detail, reason))
        if a.state == "failed":
            return Outcome("failed", "the install failed", _detail(a.error, reason))
        return Outcome("failed", "failed", reason)
    if progress == "stuck":
        done = "installed; " if a.actual == record.to else "not installed yet: "
        return Outcome("stuck", done + (reason or "past its deadline"))
    if a.actual == record.to:
        if progress == "done":
            return Outcome("done", "installed, healthy" if a.health == "healthy"
                           else "installed (its agent does not judge health)")
        until = f" (must be healthy by {a.health_deadline[11:19]} UTC)" if a.health_deadline else ""
        return Outcome("progressing", f"installed; checking its health{until}", a.health_detail)
    if a.state == "installing":
        return Outcome("progressing", f"installing on {record.server}")
    return Outcome("progressing", f"requested; waiting for the agent on {record.server}")


def unit_outcome(record: Record, request: UnitRequest | None) -> Outcome:
    """What a unit request (`record` of unit-start, unit-stop or unit-restart) has come to:
    the agent's outcome written back on the request (docs/unit-requests.md)."""
    action = record.action.removeprefix("unit-")
    if request is None:
        return Outcome("superseded", "the request is no longer in the bucket (pruned)")
    if request.state == "pending":
        return Outcome("progressing", f"asked; waiting for the agent on {record.server}")
    if request.state == "done":
        return Outcome("done", f"done ({action})", request.result)
    if request.state == "expired":
        return Outcome("failed", "expired: the agent did not act on it in time")
    if request.state == "refused":
        return Outcome("failed", "refused by the agent", request.result)
    return Outcome("failed", f"the agent could not {action} it", request.result)


def _removal(a: AppState, progress: str, reason: str | None) -> Outcome:
    if progress == "failed":
        return Outcome("failed", "the removal failed", _detail(a.error, reason))
    if progress == "done":
        return Outcome("done", "removed")
    if progress == "stuck":
        return Outcome("stuck", f"not removed yet: {reason or 'past its deadline'}")
    return Outcome("progressing", "removing")


def _detail(*texts: str | None) -> str | None:
    return next((t for t in texts if t), None)
