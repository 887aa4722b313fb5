"""The web pages over HTTP (Starlette's TestClient): 404 pages in the site's style while the
API keeps JSON, what the pages offer (rollback only where there is something to roll back
to, "roll back to this" on history rows, unit start only when not active, stop and restart
behind a confirmation), the search page without JavaScript, the words of relative times,
and the banner's judgement of a change (push.server.following) case by case. The browser
tests (test_server_browser_ui, test_server_browser_live) show the same in Chromium.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from fleetdata import make_config, make_release, report
from push import fleet
from push.fleetstate import AppState, ServerState
from push.history import new_record
from push.release import Release
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.server.following import outcome, unit_outcome
from push.server.pagetimes import relative, when
from push.unitrequests import UnitRequest

PROXY = "10.0.0.1"
HTML = {"accept": "text/html"}


def user(email: str) -> dict[str, str]:
    return {"X-Forwarded-Email": email, "Origin": "http://testserver", **HTML}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """One push server (in-process) for the module: hello deployed twice on web-1."""
    from push.store.local import LocalStore

    tmp = tmp_path_factory.mktemp("pages")
    bucket = LocalStore(tmp / "bucket")
    rels = [make_release(bucket, "hello", n, note=f"hello change {n}\nsecond line") for n in range(1, 4)]
    make_release(bucket, "pulld", 1)
    config = make_config(tmp)
    ctx = fleet.Context.open(bucket, config, via="test")
    fleet.deploy(ctx, "alice@example.com", "web-1", "hello", rels[0].name, note="first")
    fleet.deploy(ctx, "bob@example.com", "web-1", "hello", rels[1].name, note="second")
    fleet.deploy(ctx, "bob@example.com", "web-2", "hello", rels[1].name)
    report(bucket, "web-1", {"hello": rels[1].name, "pulld": None},
           units={"hello": {"hello.service": "active", "hello-worker.service": "inactive"}})
    app = create_app(bucket, config, auth=AuthSettings(trusted_proxies=(PROXY,)), poll_interval=0.05,
                     catalog_interval=0.1)
    with TestClient(app, client=(PROXY, 40000)) as client:
        yield client, rels


def test_unknown_pages_are_404_pages_and_the_api_keeps_json(site):
    client, _ = site
    viewer = user("viewer@example.com")
    for path, words in [("/nope", "no page at /nope"), ("/servers/nope", "nope"),
                        ("/servers/nope/apps/hello", "nope"), ("/apps/nope", "no such app"),
                        ("/apps/helo", "no such app"), ("/history?server=nope", "&#39;nope&#39; is not in"),
                        ("/history?app=nope", "no such app")]:
        r = client.get(path, headers=viewer)
        assert r.status_code == 404, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html") and '<header class="top">' in r.text, path
        assert "<h1>Not found</h1>" in r.text and words in r.text, path
    assert 'href="/apps/hello"' in client.get("/apps/helo", headers=viewer).text  # did you mean
    for path in ("/api/v1/nope", "/api/v1/servers/nope", "/api/v1/apps/nope/releases"):
        r = client.get(path, headers={"X-Forwarded-Email": "viewer@example.com"})
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", path
        assert r.json()["type"] in ("NoSuchPage", "UnknownServer", "UnknownApp") and r.json()["error"], path
    r = client.put("/api/v1/fleet", headers={"X-Forwarded-Email": "viewer@example.com"})
    assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowed"
    assert client.get("/apps/hello", headers=viewer).status_code == 200


def test_rollback_is_offered_only_where_there_is_something_to_roll_back_to(site):
    client, rels = site
    deployer = user("deployer@example.com")
    page = client.get("/servers/web-1/apps/hello", headers=deployer).text
    assert 'id="rollback"' in page  # web-1 ran rels[0] before
    page = client.get("/servers/web-2/apps/hello", headers=deployer).text
    assert 'id="rollback"' not in page  # web-2's first release of hello: nothing before it
    assert client.get("/servers/web-2/apps/hello/rollback", headers=deployer).status_code == 404


def test_history_rows_offer_roll_back_to_this_through_the_confirmation(site):
    client, rels = site
    page = client.get("/servers/web-1", headers=user("deployer@example.com")).text
    links = re.findall(r'<a class="button small back-to" href="([^"]+)"', page)
    # The row that deployed rels[0] offers it again; the row of what runs now does not.
    assert [unquote(link) for link in links] == [f"/servers/web-1/apps/hello/confirm?release={rels[0].name}"]
    confirm = client.get(links[0].replace("&amp;", "&"), headers=user("deployer@example.com"))
    assert confirm.status_code == 200 and "Deploy hello to web-1?" in confirm.text
    for path in ("/apps/hello", "/servers/web-1/apps/hello", "/history"):
        assert "Roll back to this" in client.get(path, headers=user("deployer@example.com")).text, path
    assert "Roll back to this" not in client.get("/servers/web-1", headers=user("viewer@example.com")).text


def test_units_start_only_when_not_active_and_stop_and_restart_ask_first(site):
    client, _ = site
    deployer = user("deployer@example.com")
    page = client.get("/servers/web-1", headers=deployer).text
    rows = dict(re.findall(r'<tr data-unit="([^"]+)" data-state="[^"]+">(.*?)</tr>', page, re.S))
    assert "/units/hello.service/start" not in rows["hello.service"]
    assert "/units/hello-worker.service/start" in rows["hello-worker.service"]
    assert ">inactive<" in rows["hello-worker.service"] and ">active<" in rows["hello.service"]  # words
    for action in ("stop", "restart"):
        assert f'href="/servers/web-1/units/hello.service/{action}"' in rows["hello.service"]  # a link, not a post
        r = client.get(f"/servers/web-1/units/hello.service/{action}", headers=deployer)
        assert r.status_code == 200 and f"{action.capitalize()} hello.service on web-1?" in r.text
        assert 'method="post"' in r.text and "csrf_token" in r.text
    assert client.get("/servers/web-1/units/nope.service/stop", headers=deployer).status_code == 404
    assert client.get("/servers/web-1/units/hello.service/explode", headers=deployer).status_code == 404


def test_search_page_works_without_javascript(site):
    client, _ = site
    viewer = user("viewer@example.com")
    r = client.get("/search?q=web", headers=viewer)
    assert r.status_code == 200 and 'href="/servers/web-1"' in r.text and 'href="/servers/web-2"' in r.text
    assert 'href="/servers/db-1"' not in r.text and "<html" in r.text
    r = client.get("/search?q=HEL", headers={**viewer, "hx-request": "true"})
    assert 'href="/apps/hello"' in r.text and "<html" not in r.text  # the list alone, for the box
    assert "No server or app matches" in client.get("/search?q=zzz", headers=viewer).text
    fleet_page = client.get("/", headers=viewer).text
    assert '<label for="search-q"' in fleet_page and 'action="/search"' in fleet_page


def test_fleet_rows_show_the_note_and_who_deployed_it(site):
    client, rels = site
    page = client.get("/?server=web-1", headers=user("viewer@example.com")).text
    row = re.search(r'<tr class="app-row" data-app="hello">(.*?)</tr>', page, re.S).group(1)
    assert "hello change 2" in row and "second line" not in row.split('title="')[0]
    assert "deployed by <span class=\"who\">bob@example.com</span>" in row
    assert re.search(r'<time class="when" datetime="[^"]+Z" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">', row)
    assert "<th>Health</th>" in page


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "just now"), (4, "just now"), (12, "12 s ago"), (59, "59 s ago"), (60, "1 min ago"), (3599, "59 min ago"),
    (3600, "1 h ago"), (86399, "23 h ago"), (86400, "1 day ago"), (2 * 86400, "2 days ago"), (-20, "in 20 s"),
    (-180, "in 3 min"), (40 * 86400, "2025-11-22")])
def test_relative_words(seconds, words):
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert relative(now - timedelta(seconds=seconds), now) == words


def test_when_renders_the_absolute_time_on_hover():
    now = datetime(2026, 1, 1, 0, 3, tzinfo=timezone.utc)
    html = when("2026-01-01T00:00:00.123456Z", now=now)
    assert html == '<time class="when" datetime="2026-01-01T00:00:00Z" title="2026-01-01 00:00:00 UTC">3 min ago</time>'
    assert ">2026-01-01 00:00:00 UTC<" in when("2026-01-01T00:00:00Z", fixed=True)  # cached fragments
    name = Release("hello", "alice", "build", datetime(2026, 1, 1, 1, tzinfo=timezone.utc), "a" * 40).name
    assert 'datetime="2026-01-01T01:00:00Z"' in when(name)  # a release: its build time
    assert when(None) == "" and when("not a time") == ""


# -- the banner's judgement, case by case -----------------------------------------------------


def _state(app: dict, **server) -> ServerState:
    a = AppState(**{"app": "hello", "allowed": True, "desired": "B", "actual": None, "state": "ok", "error": None,
                    "units": {}, "latest": "B", "marks": [], **app})
    return ServerState(**{"server": "web-1", "last_seen": "2026-01-01T00:00:00Z", "stale": False,
                          "agent_version": "t", "in_sync": True, "agent_error": None, "file_error": None,
                          "generation": "1", "problems": 0, "apps": [a], **server})


DEPLOY = new_record("alice@example.com", "web-1", "hello", "deploy", from_="A", to="B")
REMOVE = new_record("alice@example.com", "web-1", "hello", "remove", from_="B", to=None)


# Each case as push.fleetstate states it (progress and its reason are the model's).
C, F = {"progress": "converging"}, {"progress": "failed"}


@pytest.mark.parametrize(("record", "app", "server", "phase", "words"), [
    (DEPLOY, {"actual": "A", **C}, {}, "progressing", "requested; waiting for the agent on web-1"),
    (DEPLOY, {"actual": "A", "state": "installing", **C}, {}, "progressing", "installing on web-1"),
    (DEPLOY, {"actual": "B", "health": "progressing", "health_deadline": "2026-01-01T00:00:30Z", **C}, {},
     "progressing", "installed; checking its health (must be healthy by 00:00:30 UTC)"),
    (DEPLOY, {"actual": "B", "health": "healthy"}, {}, "done", "installed, healthy"),
    (DEPLOY, {"actual": "A", "health": "unhealthy", "reverted_from": "B", "health_detail": "hello.service is failed",
              **F}, {}, "failed", "reverted by the agent to A: not healthy in time"),
    (DEPLOY, {"actual": "B", "health": "unhealthy", "health_detail": "HTTP 500", **F}, {}, "failed",
     "installed, unhealthy"),
    (DEPLOY, {"actual": "A", "state": "failed", "error": "dpkg: error", **F}, {}, "failed", "the install failed"),
    (DEPLOY, {"actual": "A", "progress": "stuck", "progress_reason": "its agent is stale"}, {"stale": True},
     "stuck", "not installed yet: its agent is stale"),
    (DEPLOY, {"desired": "C", "actual": "C"}, {}, "superseded", "changed again since: web-1 should now run C"),
    (REMOVE, {"desired": None, "actual": "B", "state": "removing", **C}, {}, "progressing", "removing"),
    # A failure reported about an earlier release (the report's, not this change's): still on its way.
    (REMOVE, {"desired": None, "actual": "A", "state": "failed", "reverted_from": "B", **C}, {}, "progressing",
     "removing"),
    (DEPLOY, {"actual": "A", "state": "failed", "error": "dpkg: error about X", **C}, {}, "progressing",
     "requested; waiting for the agent on web-1"),
    (DEPLOY, {"actual": "B", "health": "unknown"}, {}, "done", "installed (its agent does not judge health)"),
    (REMOVE, {"desired": None, "actual": None}, {}, "done", "removed"),
])
def test_the_banner_follows_a_change(record, app, server, phase, words):
    o = outcome(record, _state(app, **server))
    assert (o.phase, o.words) == (phase, words)
    assert o.final == (phase in ("done", "failed", "superseded"))
    if "health_detail" in app and phase == "failed":
        assert o.detail == app["health_detail"]


@pytest.mark.parametrize(("state", "result", "phase", "words"), [
    ("pending", None, "progressing", "asked; waiting for the agent on web-1"),
    ("done", "restarted", "done", "done (restart)"),
    ("failed", "Job for hello.service failed", "failed", "the agent could not restart it"),
    ("expired", None, "failed", "expired: the agent did not act on it in time"),
    (None, None, "superseded", "the request is no longer in the bucket (pruned)"),
])
def test_the_banner_follows_a_unit_request(state, result, phase, words):
    record = new_record("alice@example.com", "web-1", "hello", "unit-restart", unit="hello.service",
                        result="requested")
    request = None if state is None else UnitRequest(
        id=record.id, server="web-1", app="hello", unit="hello.service", action="restart", who="alice@example.com",
        time=record.time, expires=record.time, state=state, result=result, history_id=record.id)
    o = unit_outcome(record, request)
    assert (o.phase, o.words, o.detail) == (phase, words, result)


def test_the_banner_before_the_push_server_sees_the_server():
    assert outcome(DEPLOY, None).phase == "requested"
