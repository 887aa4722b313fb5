"""The JSON API under /api/v1, plus /healthz and /metrics. Thin: every route checks the
caller's role, calls push.fleet, and returns its JSON. Documented at /openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from push import fleet, unitrequests
from push.names import check_app, check_server
from push.server.app import http_status, server_of
from push.server.auth import Identity
from push.server.watch import DEFAULT_TIMEOUT, MAX_TIMEOUT

router = APIRouter()
API = "/api/v1"


# -- documented shapes ----------------------------------------------------------------------


class AppState(BaseModel):
    app: str
    allowed: bool = Field(description="skiapush.conf allows this app on this server")
    desired: str | None = Field(description="release named by server/{server}.json")
    desired_note: str | None = None
    actual: str | None = Field(description="release the agent reports installed")
    state: str | None = Field(description="agent's state for the app: ok, pending, installing, failed, removing")
    error: str | None = Field(description="why it failed, in the agent's words")
    units: dict[str, str]
    latest: str | None = Field(description="newest release of the app")
    marks: list[str] = Field(description=f"any of {', '.join(fleet.MARKS)}")


class ServerStateModel(BaseModel):
    server: str
    last_seen: str | None
    stale: bool | None
    agent_version: str | None
    in_sync: bool | None
    agent_error: str | None
    file_error: str | None
    trust: str | None = Field(description="what the agent verifies: verified, off, releases only, "
                                           "server files only (None: an agent from before signatures)")
    untrusted: list[str] = Field(description="what the agent refused to trust now, as 'subject: reason'")
    generation: str | None
    problems: int
    apps: list[AppState]


class FleetState(BaseModel):
    generated: str
    filter: dict[str, str]
    count: int
    servers: list[ServerStateModel]


class HistoryRecord(BaseModel):
    id: str
    time: str
    who: str
    server: str
    app: str
    action: str
    from_: str | None = Field(alias="from")
    to: str | None
    note: str
    result: str
    unit: str | None = None
    via: str | None = None


class ChangeResult(BaseModel):
    server: str
    app: str
    action: str
    from_: str | None = Field(alias="from")
    to: str | None
    changed: bool
    history: HistoryRecord | None


class ErrorBody(BaseModel):
    error: str
    type: str
    conflict: dict[str, Any] | None = None


class DeployRequest(BaseModel):
    release: str | None = Field(None, description="release name; or set latest")
    latest: bool = False
    expected_from: str | None = Field(
        None, description="the release you saw (null: none). If given and the server now runs "
                          "something else, nothing changes and the answer is 409 with what it runs now")
    note: str = ""


class RollbackRequest(BaseModel):
    expected_from: str | None = Field(None, description="the release you saw running (optional)")
    expected_to: str | None = Field(None, description="the rollback target you confirmed (optional)")
    note: str = ""


class RemoveRequest(BaseModel):
    expected_from: str | None = None
    note: str = ""


class DeployAllRequest(BaseModel):
    release: str
    expected: dict[str, str | None] | None = Field(
        None, description="server -> release you saw; exactly these servers are changed, each only if unchanged")
    note: str = ""


class UnitRequestBody(BaseModel):
    note: str = ""


class WatchAnswer(BaseModel):
    rev: str
    changed: bool


REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no or unknown credentials"},
    403: {"model": ErrorBody, "description": "not allowed (role, skiapush.conf, CSRF)"},
    404: {"model": ErrorBody, "description": "no such server, app, release or history"},
}
WRITE_REFUSALS: dict[int | str, dict[str, Any]] = {
    **REFUSALS, 409: {"model": ErrorBody, "description": "changed meanwhile: `conflict` says how"}}


def _expected(body: BaseModel, name: str = "expected_from") -> Any:
    """A field the client sent (even as null), or ANY when it left it out."""
    return getattr(body, name) if name in body.model_fields_set else fleet.ANY


def _writer(request: Request, role: str) -> Identity:
    push = server_of(request)
    identity = push.auth.require(request, role)
    push.auth.check_csrf(request, identity, None)
    return identity


def _count(request: Request, change: fleet.Change) -> None:
    if change.changed:
        server_of(request).metrics.changes.labels(change.action).inc()


def json_bytes(data: bytes) -> Response:
    return Response(content=data, media_type="application/json")


# -- reading --------------------------------------------------------------------------------


@router.get(f"{API}/whoami", tags=["access"], responses=REFUSALS)
def whoami(request: Request) -> dict[str, Any]:
    """Who the server thinks you are, and which roles you hold."""
    push = server_of(request)
    identity = push.auth.require(request, "view")
    return {"identity": identity.name, "via": identity.via, "token": identity.token_name,
            "roles": push.auth.roles(identity)}


@router.get(f"{API}/fleet", tags=["fleet"], response_model=None,
            responses={200: {"model": FleetState}, **REFUSALS})
def get_fleet(request: Request, server: str = Query("", description="substring of server names"),
              app: str = Query("", description="substring of app names")) -> Response:
    """Every server in skiapush.conf with each app: desired, actual, units, last seen, marks."""
    push = server_of(request)
    push.auth.require(request, "view")
    return json_bytes(push.view.state_json(server or None, app or None))


@router.get(f"{API}/servers/{{server}}", tags=["fleet"], response_model=None,
            responses={200: {"model": ServerStateModel}, **REFUSALS})
def get_server(request: Request, server: str) -> Response:
    """One server's state (404 if skiapush.conf does not list it)."""
    push = server_of(request)
    push.auth.require(request, "view")
    push.ctx.config.require_server(server)
    states = [s for s in push.view.server_states(server) if s.server == server]
    return json_bytes(states[0].json_bytes)


@router.get(f"{API}/apps", tags=["releases"], responses=REFUSALS)
def get_apps(request: Request) -> list[dict[str, Any]]:
    """Every app with releases, its newest release, and the servers that may run it."""
    push = server_of(request)
    push.auth.require(request, "view")
    push.view.ensure_loaded()
    catalog = push.ctx.catalog
    apps = sorted(set(catalog.apps()) | {a for apps in push.ctx.config.servers.values() for a in apps})
    out = []
    for app in apps:
        releases = catalog.releases(app)
        out.append({"app": app, "releases": len(releases), "latest": releases[0].name if releases else None,
                    "servers": [s for s, allowed in push.ctx.config.servers.items() if app in allowed]})
    return out


@router.get(f"{API}/apps/{{app}}/releases", tags=["releases"], responses=REFUSALS)
def get_releases(request: Request, app: str) -> list[dict[str, Any]]:
    """Every release of `app`, newest first, with the servers that list it (desired_on) and
    those whose agent reports it installed (running_on)."""
    push = server_of(request)
    push.auth.require(request, "view")
    check_app(app)
    return push.view.releases(app)


@router.get(f"{API}/servers/{{server}}/apps/{{app}}/rollback", tags=["changes"], responses=REFUSALS)
def preview_rollback(request: Request, server: str, app: str) -> dict[str, Any]:
    """What a rollback would do now: from the current release to the one it ran before,
    by the history (404 if the history cannot say)."""
    push = server_of(request)
    push.auth.require(request, "view")
    push.ctx.config.check_allowed(check_server(server), check_app(app))
    current, target, basis = fleet.rollback_target(push.ctx, server, app)
    return {"server": server, "app": app, "from": current, "to": target,
            "basis": basis.to_json() if basis else None}


@router.get(f"{API}/history", tags=["history"], responses=REFUSALS)
def get_history(request: Request, server: str | None = None, app: str | None = None,
                limit: int = Query(100, ge=1, le=1000),
                before: str | None = Query(None, description="a record id: only older records (paging)")
                ) -> list[HistoryRecord]:
    """Every change, newest first, for a server, an app, both, or the whole fleet."""
    push = server_of(request)
    push.auth.require(request, "view")
    records = push.ctx.history.records(server or None, app or None, limit=limit, before=before)
    return [HistoryRecord.model_validate(r.to_json()) for r in records]


@router.get(f"{API}/servers/{{server}}/requests", tags=["units"], responses=REFUSALS)
def get_requests(request: Request, server: str) -> list[dict[str, Any]]:
    """The server's unit requests (pending and recently finished), oldest first."""
    push = server_of(request)
    push.auth.require(request, "view")
    return [r.to_json() for r in unitrequests.list_requests(push.ctx.store, server)]


# -- changing -------------------------------------------------------------------------------


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/deploy", tags=["changes"], response_model=ChangeResult,
             responses=WRITE_REFUSALS)
def deploy(request: Request, server: str, app: str, body: DeployRequest) -> Any:
    """Deploy a release (or the newest, `latest: true`) of `app` to `server`. Needs *deploy*."""
    identity = _writer(request, "deploy")
    push = server_of(request)
    change = fleet.deploy(push.ctx, identity.name, server, app, body.release, latest=body.latest,
                          expected_from=_expected(body), note=body.note)
    _count(request, change)
    return JSONResponse(change.to_json())


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/rollback", tags=["changes"], response_model=ChangeResult,
             responses=WRITE_REFUSALS)
def rollback(request: Request, server: str, app: str, body: RollbackRequest | None = None) -> Any:
    """Return `app` on `server` to the release it ran before the current one (by the history,
    not "the second newest"). Needs *deploy*."""
    identity = _writer(request, "deploy")
    push = server_of(request)
    body = body or RollbackRequest()
    change = fleet.rollback(push.ctx, identity.name, server, app, expected_from=_expected(body),
                            expected_to=_expected(body, "expected_to"), note=body.note)
    _count(request, change)
    return JSONResponse(change.to_json())


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/remove", tags=["changes"], response_model=ChangeResult,
             responses=WRITE_REFUSALS)
def remove(request: Request, server: str, app: str, body: RemoveRequest | None = None) -> Any:
    """Take `app` off `server` (its agent then removes the package). Needs *admin*."""
    identity = _writer(request, "admin")
    push = server_of(request)
    body = body or RemoveRequest()
    change = fleet.remove(push.ctx, identity.name, server, app, expected_from=_expected(body), note=body.note)
    _count(request, change)
    return JSONResponse(change.to_json())


@router.post(f"{API}/apps/{{app}}/deploy-all", tags=["changes"], responses=WRITE_REFUSALS)
def deploy_all(request: Request, app: str, body: DeployAllRequest) -> dict[str, Any]:
    """Deploy one release to every server that runs `app`, each server by its own
    compare-and-swap: one failure stops no other. Needs *deploy*. The answer is 200 with
    one outcome per server (`ok`, or `error` with its HTTP `status`)."""
    identity = _writer(request, "deploy")
    push = server_of(request)
    outcomes = fleet.deploy_everywhere(push.ctx, identity.name, app, body.release,
                                       expected=body.expected, note=body.note)
    for o in outcomes:
        if o.change is not None:
            _count(request, o.change)
    return {"app": app, "release": body.release, "outcomes": [_outcome(o) for o in outcomes],
            "ok": all(o.error is None for o in outcomes)}


def _outcome(outcome: fleet.Outcome) -> dict[str, object]:
    data = outcome.to_json()
    if outcome.error is not None:
        data["status"] = http_status(outcome.error)
    return data


@router.post(f"{API}/servers/{{server}}/units/{{unit}}/{{action}}", tags=["units"], responses=WRITE_REFUSALS)
def unit_action(request: Request, server: str, unit: str, action: str,
                body: UnitRequestBody | None = None) -> dict[str, Any]:
    """Ask the server's agent to start, stop or restart one of its apps' units (recorded in
    the bucket, see docs/unit-requests.md). Needs *deploy*."""
    identity = _writer(request, "deploy")
    push = server_of(request)
    change = fleet.unit_action(push.ctx, identity.name, server, unit, action,
                               report=push.view.report(server), note=(body or UnitRequestBody()).note)
    _count(request, change)
    return change.to_json()


# -- agents, health, metrics ----------------------------------------------------------------


@router.get(f"{API}/watch/{{server}}", tags=["agents"], response_model=WatchAnswer)
async def watch(request: Request, server: str, since: str | None = None,
                timeout: float = Query(DEFAULT_TIMEOUT, ge=0, description=f"seconds, at most {MAX_TIMEOUT:.0f}")
                ) -> dict[str, Any]:
    """The agents' long-poll. Without `since`: the current revision at once. With it: as
    soon as the revision differs, else after `timeout` seconds with changed=false. The
    revision changes when server/{server}.json or its unit requests change, whoever wrote
    them. No authentication: it reveals only an opaque revision."""
    check_server(server)
    rev, changed = await server_of(request).hub.wait(server, since, timeout)
    return {"rev": rev, "changed": changed}


@router.get("/healthz", tags=["agents"])
def healthz(request: Request) -> Response:
    """200 once the bucket has been read and the last poll worked; 503 otherwise."""
    push = server_of(request)
    body = {"ok": push.view.loaded and push.hub.last_poll_error is None, "loaded": push.view.loaded,
            "last_poll": push.view.last_refresh, "last_poll_error": push.hub.last_poll_error,
            "watchers": push.hub.watchers, "store": push.ctx.store.url}
    return JSONResponse(body, status_code=200 if body["ok"] else 503)


@router.get("/metrics", tags=["agents"], include_in_schema=True)
def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(server_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
