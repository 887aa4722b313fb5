"""The JSON API under /api/v1, plus /healthz and /metrics. Thin: every route checks the
caller's role, calls the model (push.fleet to change, the fleet view to read) and returns
the model's own object, which is the route's response model: /openapi.json documents
exactly what is sent (tests/test_server_openapi.py holds every route to it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from push import fleet, lookup, unitrequests
from push.errors import PushError, error_class
from push.fleet import Change, EverywherePlan, FleetDeploy, Refusal, Refused, RollbackTarget
from push.fleetstate import AppSummary, FleetState, ReleaseState, ServerState
from push.history import Record
from push.model import Model
from push.names import check_app, check_server
from push.server import bodies
from push.server.app import http_status, server_of
from push.server.auth import Identity
from push.server.watch import DEFAULT_TIMEOUT, MAX_TIMEOUT
from push.unitrequests import UnitRequest

router = APIRouter()
API = "/api/v1"


# -- what clients send, and the answers only this edge gives ----------------------------------
# (The facts themselves are push.fleetstate, push.fleet, push.history and push.unitrequests.)


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


class WatchAnswer(Model):
    """The agents' long-poll answer."""

    rev: str = Field(description="the server's watch revision (opaque)")
    changed: bool = Field(description="it differs from `since`")


class Whoami(Model):
    """Who the server thinks you are."""

    identity: str
    via: str = Field(description="token, proxy or local")
    token: str | None = Field(description="the API token's name, if one was used")
    roles: dict[str, bool]


class Health(Model):
    """Whether this push server has read the bucket and its last poll worked. Objects that
    cannot be read are skipped one by one: counted here, never a reason for 503."""

    ok: bool
    loaded: bool
    last_poll: float | None = Field(description="Unix time of the last bucket poll")
    last_poll_error: str | None
    watchers: int
    store: str
    unreadable: int = Field(description="objects in the bucket that cannot be read (GET /api/v1/problems)")
    empty: bool = Field(description="the bucket holds no server file, agent report or release (a wrong store?)")


class BucketProblem(Model):
    """An object in the bucket that cannot be read, and why; it is skipped, everything else works."""

    key: str
    error: str


REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Refusal, "description": "invalid input (a name, a release, a request)"},
    401: {"model": Refusal, "description": "no or unknown credentials"},
    403: {"model": Refusal, "description": "not allowed (role, skiapush.conf, CSRF)"},
    404: {"model": Refusal, "description": "no such server, app, release or history"},
    503: {"model": Refusal, "description": "the bucket cannot be used right now"},
}
WRITE_REFUSALS: dict[int | str, dict[str, Any]] = {
    **REFUSALS, 409: {"model": Refusal, "description": "changed meanwhile: `conflict` says how"}}


def _expected(body: BaseModel, name: str = "expected_from") -> Any:
    """A field the client sent (even as null), or ANY when it left it out."""
    return getattr(body, name) if name in body.model_fields_set else fleet.ANY


def writer(role: str) -> Callable[[Request], Identity]:
    """A dependency: the caller, if they hold `role` and (for a browser) pass the CSRF check.
    Declared before the body's, so refusals come before the body is read (401/403, not 400)."""

    def check(request: Request) -> Identity:
        push = server_of(request)
        identity = push.auth.require(request, role)
        push.auth.check_csrf(request, identity, None)
        return identity

    return check


# The dependencies of the write routes, in the order FastAPI solves them: the caller first
# (401/403), then the body (400), so a refused caller's body is never even read.
Deployer = Annotated[Identity, Depends(writer("deploy"))]
Admin = Annotated[Identity, Depends(writer("admin"))]
DeployRequestBody = Annotated[DeployRequest, Depends(bodies.body(DeployRequest))]
RollbackRequestBody = Annotated[RollbackRequest, Depends(bodies.body(RollbackRequest, optional=True))]
RemoveRequestBody = Annotated[RemoveRequest, Depends(bodies.body(RemoveRequest, optional=True))]
DeployAllRequestBody = Annotated[DeployAllRequest, Depends(bodies.body(DeployAllRequest))]
UnitRequestBodyOf = Annotated[UnitRequestBody, Depends(bodies.body(UnitRequestBody, optional=True))]


def _count(request: Request, change: Change) -> None:
    if change.changed:
        server_of(request).metrics.changes.labels(change.action).inc()


def json_bytes(data: bytes) -> Response:
    """JSON text the model already serialized (the fleet view caches each server's), sent as is."""
    return Response(content=data, media_type="application/json")


# -- reading --------------------------------------------------------------------------------


@router.get(f"{API}/whoami", tags=["access"], responses=REFUSALS)
def whoami(request: Request) -> Whoami:
    """Who the server thinks you are, and which roles you hold."""
    push = server_of(request)
    identity = push.auth.require(request, "view")
    return Whoami(identity=identity.name, via=identity.via, token=identity.token_name,
                  roles=push.auth.roles(identity))


# GET /fleet and /servers/{server} send the JSON text the fleet view keeps for each server
# (a warm fleet of 1,000 servers is then a join, not 20,000 serializations); it is that
# response model's own serialization, so the model still documents exactly what is sent.


@router.get(f"{API}/fleet", tags=["fleet"], response_model=FleetState, responses=REFUSALS)
def get_fleet(request: Request, server: str = Query("", description="substring of server names"),
              app: str = Query("", description="substring of app names")) -> Response:
    """Every server in skiapush.conf with each app: desired, actual, units, last seen, marks."""
    push = server_of(request)
    push.auth.require(request, "view")
    return json_bytes(push.view.state_json(server or None, app or None))


@router.get(f"{API}/servers/{{server}}", tags=["fleet"], response_model=ServerState, responses=REFUSALS)
def get_server(request: Request, server: str) -> Response:
    """One server's state (404 if skiapush.conf does not list it)."""
    push = server_of(request)
    push.auth.require(request, "view")
    snapshot = push.view.snapshot
    snapshot.config.require_server(server)
    return json_bytes(snapshot.servers[server].json)


@router.get(f"{API}/apps", tags=["releases"], responses=REFUSALS)
def get_apps(request: Request) -> list[AppSummary]:
    """Every app with releases, its newest release, and the servers that may run it."""
    push = server_of(request)
    push.auth.require(request, "view")
    return push.view.apps()


@router.get(f"{API}/apps/{{app}}/releases", tags=["releases"], responses=REFUSALS)
def get_releases(request: Request, app: str) -> list[ReleaseState]:
    """Every release of `app`, newest first, with the servers that list it (desired_on) and
    those whose agent reports it installed (running_on)."""
    push = server_of(request)
    push.auth.require(request, "view")
    lookup.require_app(push.ctx.catalog, push.ctx.config, app)  # 404 "no such app", with near names
    return push.view.releases(app)


@router.get(f"{API}/servers/{{server}}/apps/{{app}}/rollback", tags=["changes"], responses=REFUSALS)
def preview_rollback(request: Request, server: str, app: str) -> RollbackTarget:
    """What a rollback would do now: from the current release to the one it ran before,
    by the history (404 if the history cannot say)."""
    push = server_of(request)
    push.auth.require(request, "view")
    push.ctx.config.check_allowed(check_server(server), check_app(app))
    return fleet.rollback_target(push.ctx, server, app)


@router.get(f"{API}/history", tags=["history"], responses=REFUSALS)
def get_history(request: Request, server: str | None = None, app: str | None = None,
                limit: int = Query(100, ge=1, le=1000),
                before: str | None = Query(None, description="a record id: only older records (paging)")
                ) -> list[Record]:
    """Every change, newest first, for a server, an app, both, or the whole fleet."""
    push = server_of(request)
    push.auth.require(request, "view")
    # An unknown server or app is an error, not an empty history.
    if server:
        push.ctx.config.require_server(server)
    if app:
        lookup.require_app(push.ctx.catalog, push.ctx.config, app)
    return push.ctx.history.records(server or None, app or None, limit=limit, before=before)


@router.get(f"{API}/problems", tags=["fleet"], responses=REFUSALS)
def get_problems(request: Request) -> list[BucketProblem]:
    """Objects in the bucket that cannot be read (damaged, malformed, foreign), by key: each
    is skipped on its own and logged with its key; every other object works."""
    push = server_of(request)
    push.auth.require(request, "view")
    return [BucketProblem(key=k, error=why) for k, why in push.view.problems().items()]


@router.get(f"{API}/servers/{{server}}/requests", tags=["units"], responses=REFUSALS)
def get_requests(request: Request, server: str) -> list[UnitRequest]:
    """The server's unit requests (pending and recently finished), oldest first."""
    push = server_of(request)
    push.auth.require(request, "view")
    return unitrequests.list_requests(push.ctx.store, check_server(server))


# -- changing -------------------------------------------------------------------------------


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/deploy", tags=["changes"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(DeployRequest))
def deploy(request: Request, server: str, app: str, identity: Deployer,
           body: DeployRequestBody) -> Change:
    """Deploy a release (or the newest, `latest: true`) of `app` to `server`. Needs *deploy*."""
    push = server_of(request)
    change = fleet.deploy(push.ctx, identity.name, server, app, body.release, latest=body.latest,
                          expected_from=_expected(body), note=body.note)
    _count(request, change)
    return change


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/rollback", tags=["changes"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(RollbackRequest, optional=True))
def rollback(request: Request, server: str, app: str, identity: Deployer,
             body: RollbackRequestBody) -> Change:
    """Return `app` on `server` to the release it ran before the current one (by the history,
    not "the second newest"). Needs *deploy*."""
    push = server_of(request)
    change = fleet.rollback(push.ctx, identity.name, server, app, expected_from=_expected(body),
                            expected_to=_expected(body, "expected_to"), note=body.note)
    _count(request, change)
    return change


@router.post(f"{API}/servers/{{server}}/apps/{{app}}/remove", tags=["changes"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(RemoveRequest, optional=True))
def remove(request: Request, server: str, app: str, identity: Admin,
           body: RemoveRequestBody) -> Change:
    """Take `app` off `server`: writes the placeholder "APP/", and its agent then removes the
    package. Needs *admin*."""
    push = server_of(request)
    change = fleet.remove(push.ctx, identity.name, server, app, expected_from=_expected(body), note=body.note)
    _count(request, change)
    return change


@router.get(f"{API}/apps/{{app}}/deploy-all", tags=["changes"], responses=REFUSALS)
def preview_deploy_all(request: Request, app: str,
                       release: str = Query(..., description="any release name: full, hash prefix, latest")
                       ) -> EverywherePlan:
    """What a deploy of `release` to every server that runs `app` would change now: the
    release's full name and each server with what it runs (send them back as `expected`)."""
    push = server_of(request)
    push.auth.require(request, "view")
    return fleet.plan_everywhere(push.ctx, app, release)


@router.post(f"{API}/apps/{{app}}/deploy-all", tags=["changes"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(DeployAllRequest))
def deploy_all(request: Request, app: str, identity: Deployer,
               body: DeployAllRequestBody) -> FleetDeploy:
    """Deploy one release to every server that runs `app`, each server by its own
    compare-and-swap: one failure stops no other. Needs *deploy*. The answer is 200 with
    one outcome per server (`ok`, or `error` with its HTTP `status`)."""
    push = server_of(request)
    result = fleet.deploy_everywhere(push.ctx, identity.name, app, body.release,
                                     expected=body.expected, note=body.note)
    outcomes: list[fleet.Deployed | Refused] = []
    for o in result.outcomes:
        if isinstance(o, Refused):
            o = o.model_copy(update={"status": http_status(error_class(o.type) or PushError)})
        else:
            _count(request, o)
        outcomes.append(o)
    return result.model_copy(update={"outcomes": outcomes})


@router.post(f"{API}/servers/{{server}}/units/{{unit}}/{{action}}", tags=["units"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(UnitRequestBody, optional=True))
def unit_action(request: Request, server: str, unit: str, action: str, identity: Deployer,
                body: UnitRequestBodyOf) -> Change:
    """Ask the server's agent to start, stop or restart one of its apps' units (recorded in
    the bucket, see docs/unit-requests.md). Needs *deploy*."""
    push = server_of(request)
    change = fleet.unit_action(push.ctx, identity.name, server, unit, action,
                               report=push.view.report(server), note=body.note)
    _count(request, change)
    return change


# -- agents, health, metrics ----------------------------------------------------------------


@router.get(f"{API}/watch/{{server}}", tags=["agents"])
async def watch(request: Request, server: str, since: str | None = None,
                timeout: float = Query(DEFAULT_TIMEOUT, ge=0, description=f"seconds, at most {MAX_TIMEOUT:.0f}")
                ) -> WatchAnswer:
    """The agents' long-poll. Without `since`: the current revision at once. With it: as
    soon as the revision differs, else after `timeout` seconds with changed=false. The
    revision changes when server/{server}.json or its unit requests change, whoever wrote
    them. No authentication: it reveals only an opaque revision."""
    check_server(server)
    rev, changed = await server_of(request).hub.wait(server, since, timeout)
    return WatchAnswer(rev=rev, changed=changed)


@router.get("/healthz", tags=["agents"], responses={503: {"model": Health, "description": "not ready, or the "
                                                                                           "last poll failed"}})
def healthz(request: Request, response: Response) -> Health:
    """200 once the bucket has been read and the last poll worked; 503 otherwise."""
    push = server_of(request)
    health = Health(ok=push.view.loaded and push.hub.last_poll_error is None, loaded=push.view.loaded,
                    last_poll=push.view.last_refresh, last_poll_error=push.hub.last_poll_error,
                    watchers=push.hub.watchers, store=push.ctx.store.url,
                    unreadable=len(push.view.problems()) if push.view.loaded else 0,
                    empty=push.view.loaded and push.view.snapshot.empty and not push.ctx.catalog.releases())
    response.status_code = 200 if health.ok else 503
    return health


@router.get("/metrics", tags=["agents"], response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(server_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
