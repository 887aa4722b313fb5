"""The web pages: fleet, server, app, release picker, confirmations, history.

Server-rendered with Jinja2; htmx (vendored) refreshes what they show of the fleet in
place (every page that shows fleet state polls it, and gets 204 while nothing changed) and
follows a confirmed change in its banner (push.server.following); static/push.js only
words times relatively and gives the search box its keys, so every page works without
JavaScript. Every form posts a CSRF token and redirects back (post/redirect/get), so a
reload never repeats a deploy. Permissions and skiapush.conf are enforced by the same
calls as the API; the buttons shown merely mirror them.
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from push import fleet, lookup, serverfile, unitrequests
from push.errors import InvalidRequest, NotFound, PushError, error_class
from push.fleetview import ServerView
from push.history import CHANGES, Record
from push.names import check_app, check_server
from push.release import Release, short
from push.server import following
from push.server.app import PushServer, RetryForm, error_response, http_status, server_of
from push.server.auth import Identity
from push.server.pagetimes import when
from push.serverfile import ServerFile

router = APIRouter(include_in_schema=False)


@functools.lru_cache(maxsize=100_000)
def _parse(name: str) -> Release | None:
    try:
        return Release.parse(name)
    except PushError:
        return None


def rel_hash(name: str | None) -> str:
    r = _parse(name) if name else None
    return r.short_hash if r else (name or "")


def rel_user(name: str | None) -> str:
    r = _parse(name) if name else None
    return r.user if r else ""


def iso_short(text: str | None) -> str:
    """A timestamp as plain text (`2026-01-02 03:04:05Z`), for where markup cannot go; pages
    show times with `when`."""
    return text[:19].replace("T", " ") + "Z" if text else ""


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def setup_filters(push: PushServer) -> None:
    env = push.templates
    if "when" not in env.filters:
        env.filters.update(rel_hash=rel_hash, rel_user=rel_user, iso=iso_short,
                           short=short, when=when, firstline=first_line)


def _page(request: Request, template: str, identity: Identity | None, status: int = 200,
          **context: Any) -> HTMLResponse:
    push = server_of(request)
    setup_filters(push)
    snapshot = push.view.snapshot

    def desired_now(server: str, app: str) -> str | None:
        """What `server`'s file names for `app` now (the history rows offer the others)."""
        state = snapshot.state(server)
        a = next((x for x in state.apps if x.app == app), None) if state is not None else None
        return a.desired if a is not None else None

    html = push.templates.get_template(template).render(
        request=request, identity=identity, roles=push.auth.roles(identity),
        csrf_token=push.auth.csrf_token(request), desired_now=desired_now, **context)
    return HTMLResponse(html, status_code=status)


def _live(request: Request, *inputs: object) -> tuple[str, bool]:
    """The link a page polls to stay current, and whether this request is such a poll that
    finds nothing changed (answer 204: htmx swaps nothing). `inputs` are what the page shows."""
    digest = hashlib.sha1(repr(inputs).encode()).hexdigest()[:16]
    unchanged = bool(request.headers.get("hx-request")) and request.query_params.get("since") == digest
    params = {k: v for k, v in request.query_params.items() if k not in ("since", "done")}
    return request.url.path + "?" + urlencode({**params, "since": digest}), unchanged


def _viewer(request: Request) -> tuple[PushServer, Identity]:
    push = server_of(request)
    return push, push.auth.require(request, "view")


def _writer(request: Request, role: str, csrf: str) -> tuple[PushServer, Identity]:
    push = server_of(request)
    identity = push.auth.require(request, role)
    push.auth.check_csrf(request, identity, csrf)
    return push, identity


def _role(role: str) -> Any:
    """A route dependency requiring `role`: solved before the form is read, so an anonymous or
    under-privileged post is 401/403 whatever it sends (the CSRF check follows in the route)."""

    def check(request: Request) -> None:
        server_of(request).auth.require(request, role)

    return Depends(check)


DEPLOYER = [_role("deploy")]
ADMIN = [_role("admin")]


def _back(url: str, **params: str | None) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(url + ("?" + query if query else ""), status_code=303)


DEPLOYER_LOOKUPS = 16


def _fleet_rows(push: PushServer, views: list[ServerView]) -> Markup:
    """Each server's rows, rendered once per state: the fleet view carries them over with it
    (so their times are absolute, made relative by push.js, and who deployed each desired
    release is read from the history once per state)."""
    template = push.templates.get_template("_fleet_server.html")
    fresh = [view for view in views if "fleet" not in view.fragments]
    # Who deployed is a history lookup per app (a listing and a read): a round trip each on
    # GCS or S3, so a page of servers not rendered yet looks them up in parallel.
    if len(fresh) > 1:
        with ThreadPoolExecutor(max_workers=DEPLOYER_LOOKUPS, thread_name_prefix="push-deployers") as pool:
            deployers = dict(zip((id(v) for v in fresh), pool.map(lambda v: _deployed(push, v), fresh), strict=True))
    else:
        deployers = {id(v): _deployed(push, v) for v in fresh}
    parts = []
    for view in views:
        html = view.fragments.get("fleet")
        if html is None:
            html = template.render(s=view.state, deployed=deployers[id(view)])
            view.fragments["fleet"] = html
        parts.append(html)
    return Markup("".join(parts))


def _deployed(push: PushServer, view: ServerView) -> dict[str, Record]:
    """app -> the history record that made its desired release desired (none for a server file
    written outside Push, or a history that does not reach that far)."""
    out = {}
    for a in view.state.apps:
        if a.desired is None:
            continue
        try:
            record = push.ctx.history.last_change(view.state.server, a.app)
        except PushError:
            continue
        if record is not None and record.to == a.desired:
            out[a.app] = record
    return out


def _after_change(push: PushServer, change: fleet.Change, url: str) -> RedirectResponse:
    """Count a change that changed something, and go back to `url` showing its record."""
    if change.changed:
        push.metrics.changes.labels(change.action).inc()
    return _back(url, done=change.record.id if change.record else None)


def _allowed(push: PushServer, server: str, app: str | None = None) -> None:
    push.ctx.config.require_server(server)
    if app is not None:
        check_app(app)


def _flash(push: PushServer, done: str | None, server: str | None = None, app: str | None = None) -> Flash | None:
    """The record of the change `done` names, with how it stands now (`following.Outcome`):
    the banner says what was requested and follows it (a unit request by its outcome)."""
    if not done:
        return None
    for record in push.ctx.history.records(server, app, limit=50):
        if record.id == done:
            if record.action in CHANGES:
                return Flash(record, following.outcome(record, push.view.snapshot.state(record.server)))
            request = next((r for r in unitrequests.list_requests(push.ctx.store, record.server)
                            if r.history_id == record.id), None)
            return Flash(record, following.unit_outcome(record, request))
    return None


@dataclass(frozen=True)
class Flash:
    """A change just made (`record`) and what it has come to (`outcome`)."""

    record: Record
    outcome: following.Outcome


def _fresh_file(push: PushServer, server: str) -> ServerFile:
    """The server file read now (not from the cache): confirmations show the truth."""
    return serverfile.read(push.ctx.store, server) or ServerFile(server)


def _release_info(push: PushServer, name: str | None) -> Any:
    if not name:
        return None
    try:
        return push.ctx.catalog.get(name)
    except PushError:
        return None


# -- fleet ----------------------------------------------------------------------------------


PER_PAGE = 100


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request, server: str = "", app: str = "", problems: str = "", page: int = 1,
               all: str = "", since: str = "") -> Response:
    push, identity = _viewer(request)
    states = push.view.snapshot.select(server or None, app or None)
    if problems:
        states = [s for s in states if s.state.problems]
    pages = max(1, -(-len(states) // PER_PAGE))
    page = min(max(1, page), pages)
    shown = states if all else states[(page - 1) * PER_PAGE: page * PER_PAGE]
    params = {k: v for k, v in (("server", server), ("app", app), ("problems", problems)) if v}

    def link(n: int) -> str:
        return "/?" + urlencode({**params, "page": str(n)})

    rows = _fleet_rows(push, shown)
    # The page refreshes itself: the table polls every two seconds with the digest of what
    # it shows, and gets 204 (htmx then swaps nothing) until something changed.
    digest = hashlib.sha1(f"{len(states)}|{page}|{rows}".encode()).hexdigest()[:16]
    if since and since == digest and request.headers.get("hx-request"):
        return Response(status_code=204)
    live_params = {**params, **({"page": str(page)} if page > 1 else {}), **({"all": "1"} if all else {})}
    context: dict[str, Any] = dict(rows=rows, count=len(states), server=server, app=app,
                   bucket_problems=push.view.problems(),
                   empty_store=push.view.snapshot.empty and not push.ctx.catalog.releases(),
                   store_url=push.ctx.store.url,
                   live_link="/?" + urlencode({**live_params, "since": digest}),
                   problems=problems, total=len(push.ctx.config.servers),
                   with_problems=sum(1 for s in states if s.state.problems),
                   in_progress=sum(1 for s in states if s.state.progress == "converging"),
                   first=(page - 1) * PER_PAGE + 1 if not all else 1,
                   last=(page - 1) * PER_PAGE + len(shown) if not all else len(states),
                   pages=1 if all else pages, page=page,
                   prev_link=link(page - 1) if page > 1 and not all else None,
                   next_link=link(page + 1) if page < pages and not all else None,
                   all_link="/?" + urlencode({**params, "all": "1"}) if pages > 1 and not all else None)
    if request.headers.get("hx-request") and request.headers.get("hx-target") == "fleet":
        return _page(request, "_fleet_table.html", identity, **context)
    return _page(request, "fleet.html", identity, **context)


@router.get("/servers/{server}", response_class=HTMLResponse)
def server_page(request: Request, server: str, done: str | None = None) -> Response:
    push, identity = _viewer(request)
    _allowed(push, server)
    snapshot = push.view.snapshot
    state = snapshot.servers[server].state
    units = fleet.units_of(push.ctx, server, snapshot.report(server))
    states = {}
    for app_state in state.apps:
        for unit, st in app_state.units.items():
            states[unit] = st
    requests = list(reversed(unitrequests.list_requests(push.ctx.store, server)))[:20]
    history = push.ctx.history.records(server, limit=20)
    live_link, unchanged = _live(request, state, sorted(units.items()), [(r.id, r.state, r.result) for r in requests],
                                 [r.id for r in history])
    if unchanged:
        return Response(status_code=204)
    return _page(request, "server.html", identity, s=state, units=sorted(units.items()),
                 unit_states=states, requests=requests, flash=_flash(push, done, server),
                 history=history, live_link=live_link)


WHERE_ROWS = 100


@router.get("/apps/{app}", response_class=HTMLResponse)
def app_page(request: Request, app: str, done: str | None = None) -> Response:
    push, identity = _viewer(request)
    fleet.require_app(push.ctx, app)  # an unknown app is 404 (with near names), not an empty page
    snapshot = push.view.snapshot
    servers = [s for s, apps in push.ctx.config.servers.items() if app in apps]
    # Every server that may run it or whose file or agent has it, with its state there (the
    # first WHERE_ROWS; the fleet view filtered by the app shows them all).
    where = []
    for view in snapshot.select(None, app):
        a = next((x for x in view.state.apps if x.app == app), None)
        if a is not None and (view.state.server in servers or a.desired or a.actual):
            where.append((view.state, a))
    more = max(0, len(where) - WHERE_ROWS)
    where = where[:WHERE_ROWS]
    releases = push.view.releases(app)[:200]
    history = push.ctx.history.records(app=app, limit=30)
    live_link, unchanged = _live(request, where, [(r.name, r.desired_on, r.running_on) for r in releases],
                                 [r.id for r in history])
    if unchanged:
        return Response(status_code=204)
    return _page(request, "app.html", identity, app=app, releases=releases, servers=servers, where=where, more=more,
                 history=history, flash=_flash(push, done, None, app), live_link=live_link)


# -- the release picker and deploying -------------------------------------------------------


@router.get("/servers/{server}/apps/{app}", response_class=HTMLResponse)
def picker(request: Request, server: str, app: str, done: str | None = None) -> Response:
    push, identity = _viewer(request)
    _allowed(push, server, app)
    state = push.view.snapshot.servers[server].state
    app_state = next((a for a in state.apps if a.app == app), None)
    if app_state is None:
        raise NotFound(f"{app} is not allowed on {server} (see {push.ctx.config.source})")
    releases = push.view.releases(app)
    history = push.ctx.history.records(server, app, limit=10)
    live_link, unchanged = _live(request, state, [(r.name, r.desired_on, r.running_on) for r in releases],
                                 [r.id for r in history])
    if unchanged:
        return Response(status_code=204)
    return _page(request, "picker.html", identity, server=server, app=app, a=app_state, s=state,
                 releases=releases, flash=_flash(push, done, server, app), history=history,
                 rollback_to=_rollback_to(push, server, app, app_state.desired), live_link=live_link)


def _rollback_to(push: PushServer, server: str, app: str, desired: str | None) -> str | None:
    """The release a rollback would return to, or None when there is nothing to roll back to
    (no earlier release in the history): the page then offers no "Roll back…"."""
    if desired is None:
        return None
    try:
        return fleet.rollback_target(push.ctx, server, app).to
    except PushError:
        return None


@router.get("/servers/{server}/apps/{app}/follow", response_class=HTMLResponse)
def follow(request: Request, server: str, app: str, done: str) -> Response:
    """The banner of a confirmed change, as it stands now (polled by the banner itself until
    the change is installed and healthy, or failed)."""
    push, identity = _viewer(request)
    _allowed(push, server, app)
    record = _flash(push, done, server, app)
    if record is None:
        raise NotFound(f"no change {done} of {app} on {server}")
    return _page(request, "_flash.html", identity, flash=record)


@router.get("/servers/{server}/apps/{app}/confirm", response_class=HTMLResponse)
def confirm_deploy(request: Request, server: str, app: str, release: str) -> Response:
    push, identity = _viewer(request)
    _allowed(push, server, app)
    push.ctx.config.check_allowed(server, app)
    # Any name push.lookup takes: /servers/web-1/apps/hello/confirm?release=9c64614 works.
    target = lookup.release(push.ctx.catalog, app, release,
                            previous=lambda: fleet.rollback_target(push.ctx, server, app).to)
    sf = _fresh_file(push, server)
    current = sf.release_of(app)
    current_info = _release_info(push, current.name if current else None)
    newest = push.ctx.catalog.latest(app)
    snapshot = push.view.snapshot
    where = snapshot.release_servers.get(target.name, ([], []))
    report = snapshot.report(server)
    return _page(request, "confirm.html", identity, server=server, app=app, target=target,
                 current=current_info, current_name=current.name if current else None,
                 newest=newest, desired_on=where[0], running_on=where[1],
                 report=report.apps.get(app) if report is not None else None)


@router.post("/servers/{server}/apps/{app}/deploy", dependencies=DEPLOYER)
def post_deploy(request: Request, server: str, app: str, release: str = Form(""),
                expected_from: str = Form(""), note: str = Form(""), csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "deploy", csrf_token)
    if not release:
        raise InvalidRequest("no release given")
    try:
        change = fleet.deploy(push.ctx, identity.name, server, app, release,
                              expected_from=expected_from or None, note=note)
    except fleet.ChangedMeanwhile as e:
        return error_response(request, e, RetryForm(
            review=f"/servers/{server}/apps/{app}/confirm?" + urlencode({"release": release}),
            action=f"/servers/{server}/apps/{app}/deploy", release=release, expected_from=e.current or "",
            note=note))
    return _after_change(push, change, f"/servers/{server}/apps/{app}")


@router.get("/servers/{server}/apps/{app}/rollback", response_class=HTMLResponse)
def confirm_rollback(request: Request, server: str, app: str) -> Response:
    push, identity = _viewer(request)
    _allowed(push, server, app)
    push.ctx.config.check_allowed(server, app)
    plan = fleet.rollback_target(push.ctx, server, app)
    return _page(request, "rollback.html", identity, server=server, app=app,
                 current=_release_info(push, plan.from_), current_name=plan.from_,
                 target=_release_info(push, plan.to), target_name=plan.to, basis=plan.basis)


@router.post("/servers/{server}/apps/{app}/rollback", dependencies=DEPLOYER)
def post_rollback(request: Request, server: str, app: str, expected_from: str = Form(""),
                  expected_to: str = Form(""), note: str = Form(""), csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "deploy", csrf_token)
    try:
        change = fleet.rollback(push.ctx, identity.name, server, app, expected_from=expected_from or None,
                                expected_to=expected_to or None, note=note)
    except fleet.ChangedMeanwhile as e:
        return error_response(request, e, RetryForm(review=f"/servers/{server}/apps/{app}/rollback"))
    return _after_change(push, change, f"/servers/{server}/apps/{app}")


@router.get("/servers/{server}/apps/{app}/remove", response_class=HTMLResponse)
def confirm_remove(request: Request, server: str, app: str) -> Response:
    push, identity = _viewer(request)
    _allowed(push, server, app)
    current = _fresh_file(push, server).release_of(app)
    return _page(request, "remove.html", identity, server=server, app=app,
                 current_name=current.name if current else None)


@router.post("/servers/{server}/apps/{app}/remove", dependencies=ADMIN)
def post_remove(request: Request, server: str, app: str, expected_from: str = Form(""),
                note: str = Form(""), csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "admin", csrf_token)
    try:
        change = fleet.remove(push.ctx, identity.name, server, app, expected_from=expected_from or None, note=note)
    except fleet.ChangedMeanwhile as e:
        return error_response(request, e, RetryForm(review=f"/servers/{server}/apps/{app}/remove"))
    return _after_change(push, change, f"/servers/{server}")


@router.get("/apps/{app}/deploy-all", response_class=HTMLResponse)
def confirm_deploy_all(request: Request, app: str, release: str) -> Response:
    push, identity = _viewer(request)
    check_app(app)
    target = lookup.release(push.ctx.catalog, app, release)
    rows = []
    for server in fleet.servers_running(push.ctx, app):
        current = _fresh_file(push, server).release_of(app)
        rows.append({"server": server, "current": current.name if current else None})
    return _page(request, "deploy_all.html", identity, app=app, target=target, rows=rows)


@router.post("/apps/{app}/deploy-all", response_class=HTMLResponse, dependencies=DEPLOYER)
async def post_deploy_all(request: Request, app: str) -> Response:
    form = await request.form()
    push = server_of(request)
    identity = push.auth.require(request, "deploy")
    push.auth.check_csrf(request, identity, str(form.get("csrf_token", "")))
    expected: dict[str, str | None] = {}
    for item in form.getlist("expected"):
        server, _, current = str(item).partition("=")
        expected[server] = current or None
    release, note = str(form.get("release", "")), str(form.get("note", ""))
    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(fleet.deploy_everywhere, push.ctx, identity.name, app, release,
                                     expected=expected, note=note)
    for o in result.outcomes:
        if isinstance(o, fleet.Deployed) and o.changed:
            push.metrics.changes.labels("deploy").inc()
    refused = [o for o in result.outcomes if isinstance(o, fleet.Refused)]
    statuses = {o.server: http_status(error_class(o.type) or PushError) for o in refused}
    status = 200
    if result.outcomes and len(refused) == len(result.outcomes):
        # Every server refused: the page says so, and so does its status (the most common refusal's).
        counts = list(statuses.values())
        status = max(counts, key=lambda s: (counts.count(s), s))
    return _page(request, "deploy_all_done.html", identity, app=app, release=release, outcomes=result.outcomes,
                 refused=len(refused), statuses=statuses,
                 changed=sum(1 for o in result.outcomes if isinstance(o, fleet.Deployed) and o.changed),
                 status=status)


# -- units ------------------------------------------------------------------------------------


@router.get("/servers/{server}/units/{unit}/{action}", response_class=HTMLResponse)
def confirm_unit(request: Request, server: str, unit: str, action: str) -> Response:
    """Stop and restart ask first (a stop takes a service down; start is asked for by its button)."""
    push, identity = _viewer(request)
    _allowed(push, server)
    if action not in ("start", "stop", "restart"):
        raise NotFound(f"no unit action {action!r}: start, stop or restart")
    units = fleet.units_of(push.ctx, server, push.view.report(server))
    if unit not in units:
        raise NotFound(f"no unit {unit!r} known on {server}")
    state = push.view.snapshot.servers[server].state
    unit_state = next((a.units[unit] for a in state.apps if unit in a.units), "unknown")
    return _page(request, "unit.html", identity, server=server, unit=unit, app=units[unit], action=action,
                 unit_state=unit_state)


@router.post("/servers/{server}/units/{unit}/{action}", dependencies=DEPLOYER)
def post_unit(request: Request, server: str, unit: str, action: str, note: str = Form(""),
              csrf_token: str = Form("")) -> Response:
    push, identity = _writer(request, "deploy", csrf_token)
    change = fleet.unit_action(push.ctx, identity.name, server, unit, action, report=push.view.report(server),
                               note=note)
    return _after_change(push, change, f"/servers/{server}")


# -- search -----------------------------------------------------------------------------------


SEARCH_LIMIT = 20


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, q: str = "") -> Response:
    """Servers and apps whose name contains `q`: a page of its own, or (asked by the header's
    search box as you type) the list of matches."""
    push, identity = _viewer(request)
    wanted = q.strip().lower()
    servers = [s for s in push.ctx.config.servers if wanted and wanted in s.lower()]
    apps = [a for a in lookup.known_apps(push.ctx.catalog, push.ctx.config) if wanted and wanted in a.lower()]
    context: dict[str, Any] = dict(q=q, servers=servers[:SEARCH_LIMIT], apps=apps[:SEARCH_LIMIT],
                                   more=max(0, len(servers) - SEARCH_LIMIT) + max(0, len(apps) - SEARCH_LIMIT))
    if request.headers.get("hx-request"):
        return _page(request, "_search_results.html", identity, **context)
    return _page(request, "search.html", identity, **context)


# -- history ----------------------------------------------------------------------------------


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request, server: str = "", app: str = "", before: str = "") -> Response:
    push, identity = _viewer(request)
    # An unknown server or app is a 404 page, as in the API, not an empty history.
    if server:
        push.ctx.config.require_server(check_server(server))
    if app:
        lookup.require_app(push.ctx.catalog, push.ctx.config, check_app(app))
    records = push.ctx.history.records(server or None, app or None, limit=100, before=before or None)
    older = None
    if len(records) == 100:
        query = (("server", server), ("app", app), ("before", records[-1].id))
        older = "/history?" + urlencode({k: v for k, v in query if v})
    context: dict[str, Any] = dict(records=records, server=server, app=app, older=older,
                   servers=list(push.ctx.config.servers),
                   apps=sorted({a for apps in push.ctx.config.servers.values() for a in apps}))
    if request.headers.get("hx-request") and request.headers.get("hx-target") == "history":
        return _page(request, "_history_table.html", identity, **context)
    return _page(request, "history.html", identity, **context)
