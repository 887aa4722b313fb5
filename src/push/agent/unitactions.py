"""Acting on unit requests (start / stop / restart) left for this server in the bucket.

The push server records a request under `requests/{server}/`; the agent, which owns the
units, carries it out with its service manager and writes the outcome back
(docs/unit-requests.md). Only units of packages Push installed for the named app are touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from push import unitrequests
from push.agent.errors import UnitError
from push.agent.services import ServiceManager
from push.errors import Conflict, PushError
from push.store import Store

log = logging.getLogger(__name__)


def act_on_requests(store: Store, server: str, services: ServiceManager,
                    units_of_app: Callable[[str], list[str]], hostname: str, own_app: str | None = None) -> int:
    """Carry out every pending request, oldest first; returns how many were finished.

    A unit of `own_app` (the agent's own) is only queued with the service manager: stopping it
    means stopping this process, which must first write the outcome, else the next agent
    would find the request pending and act on it again, and again.
    """
    finished = 0
    for req in unitrequests.pending(store, server):
        if req.is_expired():
            state, result = "expired", None
        elif req.unit not in units_of_app(req.app):
            state, result = "refused", f"{req.unit} is not a unit of an installed release of {req.app} on {server}"
        else:
            try:
                services.act(req.action, req.unit, wait=req.app != own_app)
                state, result = "done", "ok"
            except UnitError as e:
                state, result = "failed", str(e)
        try:
            unitrequests.complete(store, req, state, result, hostname)
            finished += 1
        except Conflict:
            continue  # someone else finished or rewrote it; it is re-read next time
        log.info("unit request", extra={"event": "unit.request", "unit": req.unit, "action": req.action,
                                        "who": req.who, "state": state, "result": result})
    if finished:
        try:
            unitrequests.prune(store, server)
        except PushError as e:
            log.warning("cannot prune unit requests", extra={"event": "unit.request-prune", "error": str(e)})
    return finished
