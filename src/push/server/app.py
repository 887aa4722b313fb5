"""The push server's ASGI app: `create_app(store, config, ...)` wires the model to the routes.

State lives in the bucket; the process holds only caches (catalogue, fleet view, history
records), so any number of push servers can serve one bucket. Errors from the model are
mapped here, once, to HTTP statuses: JSON for /api, a page for browsers, never a 500 for
a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from push import __version__
from push.catalog import Catalog
from push.config import Config
from push.errors import (
    AccessDenied,
    Conflict,
    InvalidRequest,
    NoSuchPage,
    NotFound,
    PushError,
    StoreError,
    Unauthenticated,
)
from push.fleet import ChangedMeanwhile, Context, Refusal
from push.fleetview import FULL_INTERVAL, FleetView
from push.history import History
from push.notify import SERVER_FLUSH_SECONDS, Notifier
from push.rollout.model import RecentRollouts
from push.server.auth import Auth, AuthSettings
from push.server.bodies import BodyTooLarge
from push.server.metrics import Metrics, MetricsMiddleware
from push.server.watch import WATCH_GRACE, WatchHub
from push.serversigning import Resigner
from push.signing import Keyring, SigningKey
from push.store import Store
from push.store.counting import CountingStore
from push.triggers import Triggers

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


@dataclass
class PushServer:
    """Everything a route needs, on `request.app.state.push`."""

    ctx: Context
    view: FleetView
    hub: WatchHub
    auth: Auth
    templates: Environment
    metrics: Metrics
    store: CountingStore
    rollouts: RecentRollouts | None = None   # the rollouts page and API's listing, read only when changed


def server_of(request: Request) -> PushServer:
    push: PushServer = request.app.state.push
    return push


class MethodNotAllowed(InvalidRequest):
    """A method the path's routes do not take (405)."""


# The HTTP status of each error, by class: the most specific listed ancestor wins.
HTTP_STATUSES: dict[type[PushError], int] = {
    PushError: 400,          # invalid input, a failed check
    Unauthenticated: 401,
    AccessDenied: 403,
    NotFound: 404,
    Conflict: 409,
    MethodNotAllowed: 405,
    BodyTooLarge: 413,
    StoreError: 503,         # the bucket cannot be used right now
}


def http_status(error: PushError | type[PushError]) -> int:
    for cls in (error if isinstance(error, type) else type(error)).__mro__:
        status = HTTP_STATUSES.get(cls)
        if status is not None:
            return status
    return 400


def create_app(store: Store, config: Config, *, auth: AuthSettings | None = None,
               poll_interval: float = 2.0, catalog_interval: float = 10.0,
               catalog: Catalog | None = None, deploy_key: SigningKey | None = None,
               trusted_deploy_keys: Keyring | None = None, resign_interval: float = 10.0,
               full_interval: float = FULL_INTERVAL, watch_grace: float = WATCH_GRACE,
               rollout_interval: float = 1.0, rollout_lease: float = 15.0) -> FastAPI:
    """`deploy_key` signs every server file this server writes, and renews statements at
    half-life every `resign_interval` seconds (those signed by it or by `trusted_deploy_keys`).
    `full_interval`: the fleet view's full re-list (push.fleetview). `watch_grace`: how long
    after its long-poll ends a watching agent may take to come back before it is stale.
    `rollout_interval`: seconds between the rollout driver's rounds (push.rollout.driver; 0:
    no driver); `rollout_lease`: how long its lease of a rollout lasts unrenewed (push.rollout.lease)."""
    settings = auth or AuthSettings()
    # Every bucket operation of this process is counted (/metrics: push_store_operations).
    counted = store if isinstance(store, CountingStore) else CountingStore(store)
    store = counted
    # A push server keeps the catalogue index up to date for every reader of the bucket.
    catalog = catalog or Catalog(store, writes_index=True)
    ctx = Context(store, config, catalog, History(store), None, via=f"push-server@{socket.gethostname()}",
                  deploy_key=deploy_key)
    view = FleetView(ctx, full_interval=full_interval)
    hub = WatchHub(view, poll_interval=poll_interval, catalog_interval=catalog_interval, watch_grace=watch_grace)
    ctx.triggers = Triggers(config, on_change=hub.wake_from_thread, background=True)
    ctx.notifier = Notifier.from_config(config)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    metrics = Metrics()
    push = PushServer(ctx, view, hub, Auth(lambda: ctx.config, settings), templates, metrics, counted,
                      RecentRollouts(store))
    metrics.watch(push)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        from push.rollout.driver import Driver

        driving = threading.Event()
        driver = Driver(ctx, view, look=hub.poll_soon, ttl=rollout_lease)  # the triggers refresh the view
        app.state.rollout_driver = driver
        driver_thread = threading.Thread(target=driver.run, args=(driving, rollout_interval), name="push-rollouts",
                                         daemon=True)
        if rollout_interval > 0:
            driver_thread.start()
        resigning = (asyncio.create_task(_resign_loop(Resigner(store, deploy_key, trusted_deploy_keys), ctx,
                                                      resign_interval), name="push-resign")
                     if deploy_key is not None else None)
        try:
            yield
        finally:
            driving.set()
            if driver_thread.is_alive():
                await asyncio.to_thread(driver_thread.join, 10)
            if resigning is not None:
                resigning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resigning
            await hub.stop()
            if ctx.triggers is not None:
                ctx.triggers.close()
            # Off the event loop: it may wait up to SERVER_FLUSH_SECONDS for webhooks.
            await asyncio.to_thread(ctx.notifier.close, SERVER_FLUSH_SECONDS)

    app = FastAPI(
        title="Push",
        version=__version__,
        description="See the fleet, deploy releases, roll back, with history and access control. "
                    "Authenticate with `Authorization: Bearer TOKEN` (tokens are listed by sha256 in "
                    "skiapush.conf). Errors are JSON `{\"error\": message, \"type\": name}`.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load its JavaScript from a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.push = push
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    from push.server import routes_api, routes_rollouts, routes_ui

    app.include_router(routes_api.router)
    app.include_router(routes_rollouts.router)  # before routes_ui: /rollouts/... pages are its own
    app.include_router(routes_rollouts.pages)
    app.include_router(routes_ui.router)
    routes_ui.setup_filters(push)

    @app.exception_handler(PushError)
    async def push_error(request: Request, exc: PushError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def no_such_route(request: Request, exc: StarletteHTTPException) -> Response:
        # A path no route serves (or a method it does not take): the API answers a Refusal as
        # for every other error, a browser a page in the site's style, not Starlette's JSON.
        if exc.status_code == 404:
            return error_response(request, NoSuchPage(f"no page at {request.url.path}"))
        if exc.status_code == 405:
            return error_response(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return error_response(request, InvalidRequest(str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, exc: RequestValidationError) -> Response:
        # A query or path parameter FastAPI could not read (a page number that is no number):
        # one clear line, as every other refusal, not FastAPI's 422 list.
        return error_response(request, InvalidRequest(_parameter_problem(exc)))

    return app


def _parameter_problem(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    where = " ".join(str(p) for p in err.get("loc", ()))
    return f"invalid {where}: {err.get('msg', 'not valid')}".replace("  ", " ")


async def _resign_loop(resigner: Resigner, ctx: Context, interval: float) -> None:
    """Renew statements before they expire (TUF's timestamp role), so agents that verify
    can tell a fresh choice from a frozen bucket. Two listings a round; a server is read
    only when its file or statement changed, or its statement reached half-life."""
    while True:
        try:
            await asyncio.to_thread(resigner.resign_all, list(ctx.config.servers))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the store is down: try again next round
            log.warning("re-signing failed: %s: %s", type(e).__name__, e)
        await asyncio.sleep(interval)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")


@dataclass(frozen=True)
class RetryForm:
    """What the conflict page offers after ChangedMeanwhile: review the change again, and for
    a deploy, a form that repeats it over what runs now (`expected_from`)."""

    review: str
    action: str | None = None
    release: str | None = None
    expected_from: str = ""
    note: str = ""


def error_response(request: Request, exc: PushError, retry: RetryForm | None = None) -> Response:
    status = http_status(exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    if wants_json(request):
        return Response(Refusal.of(exc).to_bytes(), status_code=status, headers=headers,
                        media_type="application/json")
    push = server_of(request)
    identity = None
    with contextlib.suppress(PushError):
        identity = push.auth.identify(request)
    template = "conflict.html" if isinstance(exc, ChangedMeanwhile) else "error.html"
    html = push.templates.get_template(template).render(
        error=exc, status=status, kind=type(exc).__name__, identity=identity,
        roles=push.auth.roles(identity),
        csrf_token=push.auth.csrf_token(request), request=request, retry=retry)
    return HTMLResponse(html, status_code=status, headers=headers)
