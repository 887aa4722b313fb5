"""Rollouts over HTTP: the JSON API under /api/v1/rollouts (start and control need the
*deploy* role, as a deploy does; reading needs *view*) and the pages: the plan before a
start, the list of rollouts, one rollout's waves × servers (refreshed in place by htmx)
with its control buttons. Every route calls push.rollout.control, as the CLI does straight
to the bucket; the push server's driver thread (push.rollout.driver) drives them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from push.names import check_app
from push.rollout import control
from push.rollout.control import RolloutPlan, RolloutRequest
from push.rollout.model import DEFAULT_BAKE, DEFAULT_WAVE_DEADLINE, DEFAULT_WAVES, Rollout
from push.server import bodies
from push.server.app import server_of
from push.server.routes_api import API, REFUSALS, WRITE_REFUSALS, writer
from push.server.routes_ui import _page, _viewer, _writer

router = APIRouter()
pages = APIRouter(include_in_schema=False)


def _wake(request: Request) -> None:
    """The push server's driver steps now: a start or a control request is news."""
    driver = getattr(request.app.state, "rollout_driver", None)
    if driver is not None:
        driver.wake()


class ControlRequest(BaseModel):
    rollback: bool = True


Deployer = Annotated[Any, Depends(writer("deploy"))]
StartBody = Annotated[RolloutRequest, Depends(bodies.body(RolloutRequest))]
ControlBody = Annotated[ControlRequest, Depends(bodies.body(ControlRequest, optional=True))]


@router.get(f"{API}/rollouts", tags=["rollouts"], responses=REFUSALS)
def list_rollouts(request: Request, limit: int = Query(50, ge=1, le=500)) -> list[Rollout]:
    """Recent rollouts, newest first (each with its state: running, paused, rolling_back, completed,
    failed, rolled_back, aborted)."""
    push = server_of(request)
    push.auth.require(request, "view")
    return control.listing(push.ctx, limit, push.rollouts)


@router.get(f"{API}/rollouts/plan", tags=["rollouts"], responses=REFUSALS)
def plan_rollout(request: Request, app: str, release: str, servers: str = "", all: bool = False,
                 waves: str = DEFAULT_WAVES) -> RolloutPlan:
    """What starting a rollout would do now: the release, the servers in wave order and what each runs."""
    push = server_of(request)
    push.auth.require(request, "view")
    req = RolloutRequest(app=app, release=release, servers=[s for s in servers.split(",") if s] or None, all=all,
                         waves=waves)
    return control.plan(push.ctx, req)


@router.post(f"{API}/rollouts", tags=["rollouts"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(RolloutRequest))
def start_rollout(request: Request, identity: Deployer, body: StartBody) -> Rollout:
    """Start a rollout (409 if the app has an active one). Needs *deploy*."""
    push = server_of(request)
    r = control.start(push.ctx, identity.name, body)
    _wake(request)
    return r


@router.get(f"{API}/rollouts/{{rollout_id}}", tags=["rollouts"], responses=REFUSALS)
def get_rollout(request: Request, rollout_id: str) -> Rollout:
    """One rollout: its plan, waves, each server's state and the history ids of its changes."""
    push = server_of(request)
    push.auth.require(request, "view")
    return control.get(push.ctx, rollout_id)


@router.post(f"{API}/rollouts/{{rollout_id}}/{{action}}", tags=["rollouts"], responses=WRITE_REFUSALS,
             openapi_extra=bodies.openapi(ControlRequest, optional=True))
def control_rollout(request: Request, rollout_id: str, action: str, identity: Deployer,
                    body: ControlBody) -> Rollout:
    """pause, resume, abort (`rollback: false` stops only) or promote: carried out by the driver at
    its next step. Needs *deploy*."""
    push = server_of(request)
    r = control.control(push.ctx, identity.name, rollout_id, action, rollback=body.rollback)
    _wake(request)
    return r


# -- pages ------------------------------------------------------------------------------------------


@pages.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request) -> Response:
    push, identity = _viewer(request)
    rollouts = control.listing(push.ctx, recent=push.rollouts)
    return _page(request, "rollouts.html", identity, active=[r for r in rollouts if r.active],
                 past=[r for r in rollouts if not r.active])


@pages.get("/apps/{app}/rollout", response_class=HTMLResponse)
def confirm_rollout(request: Request, app: str, release: str, servers: str = "", all: bool = False,
                    waves: str = DEFAULT_WAVES, bake: float = DEFAULT_BAKE,
                    wave_deadline: float = DEFAULT_WAVE_DEADLINE) -> Response:
    push, identity = _viewer(request)
    check_app(app)
    req = RolloutRequest(app=app, release=release, servers=[s for s in servers.split(",") if s] or None, all=all,
                         waves=waves, bake=bake, wave_deadline=wave_deadline)
    p = control.plan(push.ctx, req)
    return _page(request, "rollout_confirm.html", identity, app=app, p=p, req=req)


@pages.post("/apps/{app}/rollout", response_class=HTMLResponse)
def post_rollout(request: Request, app: str, release: str = Form(...), servers: str = Form(""),
                 waves: str = Form(DEFAULT_WAVES), bake: float = Form(DEFAULT_BAKE),
                 wave_deadline: float = Form(DEFAULT_WAVE_DEADLINE), max_unhealthy: int = Form(0),
                 rollback: str = Form(""), note: str = Form(""), csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "deploy", csrf_token)
    req = RolloutRequest(app=app, release=release, servers=[s for s in servers.split(",") if s] or None,
                         waves=waves, bake=bake, wave_deadline=wave_deadline, max_unhealthy=max_unhealthy,
                         rollback=bool(rollback), note=note)
    r = control.start(push.ctx, identity.name, req)
    _wake(request)
    return RedirectResponse(f"/rollouts/{r.id}", status_code=303)


@pages.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: str, part: str = "") -> Response:
    push, identity = _viewer(request)
    r = control.get(push.ctx, rollout_id)
    snapshot = push.view.snapshot
    actual = {}
    for name in r.plan.servers:
        report = snapshot.report(name)
        st = report.apps.get(r.app) if report is not None else None
        actual[name] = st.installed if st is not None else None
    template = "_rollout_body.html" if part == "body" else "rollout.html"
    return _page(request, template, identity, r=r, actual=actual)


@pages.post("/rollouts/{rollout_id}/{action}", response_class=HTMLResponse)
def post_control(request: Request, rollout_id: str, action: str, rollback: str = Form("1"),
                 csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "deploy", csrf_token)
    control.control(push.ctx, identity.name, rollout_id, action, rollback=rollback == "1")
    _wake(request)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
