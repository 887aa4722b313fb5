"""The push server's JSON API, auth, CSRF and watch endpoint, through Starlette's TestClient.

Every endpoint is called with and without the right role: a refusal is 401 or 403 with a
message, a lost race is 409 with what changed, never a 500.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient

from fleetdata import TOKENS, make_config, make_release, report
from push import fleet, serverfile, unitrequests
from push.errors import NotAllowed, StoreUnavailable
from push.release import short
from push.server.app import create_app
from push.server.auth import AuthSettings, check_bind
from waiting import wait_for

PROXY = "10.0.0.1"
SECRET = "proxy-shared-secret"


def token(name):
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def user(email):
    """A browser session signed in through the proxy (a browser sends Origin on every POST)."""
    return {"X-Forwarded-Email": email, "Origin": "http://testserver"}


@pytest.fixture
def app(bucket, tmp_path, rels):
    make_release(bucket, "pulld", 1)
    report(bucket, "web-1", {"hello": None, "pulld": None})
    settings = AuthSettings(trusted_proxies=(PROXY,), proxy_secret=SECRET)
    return create_app(bucket, make_config(tmp_path), auth=settings, poll_interval=0.05, catalog_interval=0.1)


@pytest.fixture
def client(app):
    with TestClient(app, client=(PROXY, 40000)) as c:
        yield c


def deploy(client, release, headers=None, **body):
    return client.post("/api/v1/servers/web-1/apps/hello/deploy", json={"release": release, **body},
                       headers=token("ci") if headers is None else headers)


def browser_csrf(client, email="deployer@example.com"):
    """Sign in as a browser would: a page carries the CSRF token signed for `email`."""
    r = client.get("/", headers={**user(email), "accept": "text/html"})
    assert r.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"|"X-CSRF-Token": "([^"]+)"', r.text).group(2)


# -- the API document -------------------------------------------------------------------------


def test_openapi_documents_the_api(client):
    doc = client.get("/openapi.json").json()
    paths = set(doc["paths"])
    for p in ["/api/v1/fleet", "/api/v1/servers/{server}", "/api/v1/apps", "/api/v1/apps/{app}/releases",
              "/api/v1/history", "/api/v1/servers/{server}/apps/{app}/deploy",
              "/api/v1/servers/{server}/apps/{app}/rollback", "/api/v1/servers/{server}/apps/{app}/remove",
              "/api/v1/apps/{app}/deploy-all", "/api/v1/servers/{server}/units/{unit}/{action}",
              "/api/v1/servers/{server}/requests", "/api/v1/watch/{server}", "/api/v1/whoami",
              "/healthz", "/metrics"]:
        assert p in paths, p
    deploy_doc = doc["paths"]["/api/v1/servers/{server}/apps/{app}/deploy"]["post"]
    assert {"401", "403", "404", "409"} <= set(deploy_doc["responses"])
    assert not any(p == "/" or p.startswith("/servers") for p in paths)  # pages are not API


# -- authentication and roles ----------------------------------------------------------------


def test_no_identity_is_401_with_a_message(client):
    r = client.get("/api/v1/fleet")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "not signed in" in r.json()["error"] and r.json()["type"] == "Unauthenticated"


def test_unknown_or_malformed_token_is_401(client):
    assert client.get("/api/v1/fleet", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/api/v1/fleet", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]


def test_identity_without_role_is_403(client):
    r = client.get("/api/v1/fleet", headers=user("stranger@example.net"))
    assert r.status_code == 403 and "stranger@example.net may not view" in r.json()["error"]


def test_roles_from_access_table(client):
    roles = {who: client.get("/api/v1/whoami", headers=token(who)).json()["roles"] for who in ("dash", "ci")}
    assert roles["dash"] == {"view": True, "deploy": False, "admin": False}
    assert roles["ci"] == {"view": True, "deploy": True, "admin": False}
    got = client.get("/api/v1/whoami", headers=token("ops")).json()
    assert got["roles"] == {"view": True, "deploy": True, "admin": True} and got["token"] == "ops"
    # "@example.org" grants view to the whole domain.
    assert client.get("/api/v1/whoami", headers=user("anyone@example.org")).json()["roles"]["view"]


def test_proxy_header_believed_only_from_trusted_proxy_or_with_secret(app):
    with TestClient(app, client=("10.9.9.9", 1)) as c:
        assert c.get("/api/v1/whoami", headers=user("admin@example.com")).status_code == 401
        r = c.get("/api/v1/whoami", headers={**user("admin@example.com"), "X-Push-Proxy-Secret": SECRET})
        assert r.status_code == 200 and r.json()["via"] == "proxy"
        r = c.get("/api/v1/whoami", headers={**user("admin@example.com"), "X-Push-Proxy-Secret": "guess"})
        assert r.status_code == 401


def test_iap_style_header_value(app, bucket, tmp_path):
    settings = AuthSettings(trusted_proxies=("10.0.0.0/8",), user_header="X-Goog-Authenticated-User-Email")
    iap = create_app(bucket, make_config(tmp_path), auth=settings)
    with TestClient(iap, client=("10.3.4.5", 1)) as c:
        iap = {"X-Goog-Authenticated-User-Email": "accounts.google.com:viewer@example.com"}
        r = c.get("/api/v1/whoami", headers=iap)
        assert r.json()["identity"] == "viewer@example.com"


def test_no_auth_only_on_loopback(bucket, tmp_path):
    check_bind("127.0.0.1", AuthSettings(no_auth=True))
    check_bind("::1", AuthSettings(no_auth=True))
    check_bind("0.0.0.0", AuthSettings())
    with pytest.raises(NotAllowed, match=r"only when binding to 127\.0\.0\.1"):
        check_bind("0.0.0.0", AuthSettings(no_auth=True))
    local = create_app(bucket, make_config(tmp_path), auth=AuthSettings(no_auth=True))
    with TestClient(local) as c:
        assert c.get("/api/v1/whoami").json() == {
            "identity": "local", "via": "local", "token": None, "roles": {"view": True, "deploy": True, "admin": True}}


# -- reading ---------------------------------------------------------------------------------


def test_fleet_state(client, rels):
    assert deploy(client, rels[1].name).status_code == 200
    state = client.get("/api/v1/fleet", headers=token("dash")).json()
    assert [s["server"] for s in state["servers"]] == ["web-1", "web-2", "db-1"]
    hello = state["servers"][0]["apps"][0]
    # Deployed a moment ago: converging within its deadline, so no drift (not a problem).
    assert hello["desired"] == rels[1].name and set(hello["marks"]) == {"out_of_date"}
    assert (hello["progress"], hello["progress_reason"]) == (
        "converging", f"waiting for the agent to pick up {short(rels[1].name)}")
    assert hello["progress_deadline"] is not None and state["servers"][0]["progress"] == "converging"
    assert hello["latest"] == rels[3].name
    filtered = client.get("/api/v1/fleet?server=web-2&app=pull", headers=token("dash")).json()
    assert [(s["server"], [a["app"] for a in s["apps"]]) for s in filtered["servers"]] == [("web-2", ["pulld"])]


def test_one_server(client):
    r = client.get("/api/v1/servers/web-1", headers=token("dash"))
    assert r.status_code == 200 and r.json()["server"] == "web-1"
    assert client.get("/api/v1/servers/nowhere", headers=token("dash")).status_code == 404
    assert client.get("/api/v1/servers/web-1").status_code == 401


def test_apps_and_releases(client, rels):
    deploy(client, rels[0].name)
    apps = {a["app"]: a for a in client.get("/api/v1/apps", headers=token("dash")).json()}
    assert apps["hello"]["releases"] == 4 and apps["hello"]["servers"] == ["web-1", "web-2"]
    releases = client.get("/api/v1/apps/hello/releases", headers=token("dash")).json()
    assert [r["name"] for r in releases] == [r.name for r in reversed(rels)]
    assert releases[-1]["desired_on"] == ["web-1"]
    assert client.get("/api/v1/apps/hello/releases").status_code == 401
    assert client.get("/api/v1/apps/bad..name/releases", headers=token("dash")).status_code == 400


# -- deploying -------------------------------------------------------------------------------


def test_deploy_needs_deploy_role(client, rels):
    r = deploy(client, rels[0].name, headers=token("dash"))
    assert r.status_code == 403 and "viewer@example.com may not deploy" in r.json()["error"]
    assert deploy(client, rels[0].name, headers={}).status_code == 401


def test_deploy_records_who(client, bucket, rels):
    r = deploy(client, rels[2].name, note="ship it")
    assert r.status_code == 200
    body = r.json()
    assert body["changed"] and body["from"] is None and body["to"] == rels[2].name
    assert body["history"]["who"] == "deployer@example.com" and body["history"]["note"] == "ship it"
    assert serverfile.read(bucket, "web-1").entries == (rels[2].name,)
    again = deploy(client, rels[2].name)
    assert again.status_code == 200 and again.json()["changed"] is False


def test_deploy_latest(client, rels):
    r = client.post("/api/v1/servers/web-1/apps/hello/deploy", json={"latest": True}, headers=token("ci"))
    assert r.json()["to"] == rels[3].name


def test_releases_by_any_name_in_the_api_and_the_pages(client, rels):
    """push.lookup's names: a hash prefix, latest and previous in a deploy's body and in the
    confirmation page's URL; an ambiguous or unknown name refused with what to do."""
    assert deploy(client, rels[0].release.hash[:7]).json()["to"] == rels[0].name
    assert deploy(client, "latest").json()["to"] == rels[-1].name
    assert deploy(client, "previous").json()["to"] == rels[0].name
    r = deploy(client, "0000000")
    assert r.status_code == 404 and "no release of hello has a git hash starting 0000000" in r.json()["error"]
    r = deploy(client, "12")
    assert r.status_code == 400 and r.json()["type"] == "InvalidRelease"
    r = client.post("/api/v1/servers/web-1/apps/helo/deploy", json={"release": "latest"}, headers=token("ci"))
    assert r.status_code == 404 and r.json()["type"] == "UnknownApp" and "did you mean hello?" in r.json()["error"]
    page = client.get(f"/servers/web-1/apps/hello/confirm?release={rels[1].release.hash[:9]}",
                      headers={**user("deployer@example.com"), "accept": "text/html"})
    assert page.status_code == 200 and f'name="release" value="{rels[1].name}"' in page.text
    page = client.get("/apps/hello/deploy-all?release=latest",
                      headers={**user("deployer@example.com"), "accept": "text/html"})
    assert page.status_code == 200 and f'value="{rels[-1].name}"' in page.text


def test_deploy_conflict_says_what_changed(client, rels):
    deploy(client, rels[0].name, headers=token("ops"))
    r = deploy(client, rels[1].name, expected_from=None)
    assert r.status_code == 409
    body = r.json()
    assert body["type"] == "ChangedMeanwhile" and "changed meanwhile" in body["error"]
    assert body["conflict"]["current"] == rels[0].name and body["conflict"]["expected"] is None
    assert body["conflict"]["last_change"]["who"] == "admin@example.com"
    # Retry with what is there now.
    assert deploy(client, rels[1].name, expected_from=rels[0].name).status_code == 200


def test_config_enforced_on_the_server_side(client, bucket, rels):
    other = make_release(bucket, "secret", 1)
    r = client.post("/api/v1/servers/db-1/apps/hello/deploy", json={"release": rels[0].name}, headers=token("ops"))
    assert r.status_code == 403 and "may not be deployed" in r.json()["error"]
    r = client.post("/api/v1/servers/web-1/apps/secret/deploy", json={"release": other.name}, headers=token("ops"))
    assert r.status_code == 403
    r = client.post("/api/v1/servers/nowhere/apps/hello/deploy", json={"release": rels[0].name}, headers=token("ops"))
    assert r.status_code == 404
    assert deploy(client, rels[0].name.replace("2026", "2030")).status_code == 404
    assert deploy(client, other.name).status_code == 400
    r = client.post("/api/v1/servers/web-1/apps/hello/deploy", json={}, headers=token("ci"))
    assert r.status_code == 400 and "no release" in r.json()["error"]
    assert serverfile.read(bucket, "web-1").entries == ()


def test_odd_input_is_never_a_500(client):
    for path in ["/api/v1/servers/-bad/apps/hello/deploy", "/api/v1/servers/web-1/apps/..x/deploy",
                 "/api/v1/servers/web-1/units/bad/start", "/api/v1/servers/web-1/units/x.service/reboot"]:
        r = client.post(path, json={"release": "nonsense"}, headers=token("ops"))
        assert 400 <= r.status_code < 500, (path, r.status_code)
    r = client.post("/api/v1/servers/web-1/apps/hello/deploy", content=b"{not json",
                    headers={**token("ci"), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not JSON")
    assert client.get("/api/v1/history?before=zz", headers=token("dash")).status_code == 400


# -- CSRF for browser sessions -----------------------------------------------------------------


def test_browser_session_writes_need_csrf_token(client, rels):
    csrf = browser_csrf(client)
    assert "push_csrf" not in client.cookies  # nothing a cookie says is trusted
    hdr = user("deployer@example.com")
    r = deploy(client, rels[0].name, headers=hdr)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = deploy(client, rels[0].name, headers={**hdr, "X-CSRF-Token": "forged-forged-forged-forged"})
    assert r.status_code == 403
    r = deploy(client, rels[0].name, headers={**hdr, "X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    r = deploy(client, rels[0].name, headers={**hdr, "X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert r.status_code == 200


def test_csrf_tokens_are_signed_for_the_identity_and_origin_is_required(client, rels):
    deployer, other = browser_csrf(client), browser_csrf(client, "admin@example.com")
    nonce, _, mac = deployer.partition(".")
    assert len(nonce) >= 22 and mac  # 128 random bits, and a MAC over them and the identity
    hdr = user("deployer@example.com")
    for forged in ("abc", other, nonce + "." + "A" * len(mac), deployer + "x"):
        r = deploy(client, rels[0].name, headers={**hdr, "X-CSRF-Token": forged})
        assert r.status_code == 403 and "CSRF" in r.json()["error"], forged
    # An attacker's cookie is no token: the old double-submit check accepted any value matched to itself.
    client.cookies.set("push_csrf", "abc")
    assert deploy(client, rels[0].name, headers={**hdr, "X-CSRF-Token": "abc"}).status_code == 403
    no_origin = {"X-Forwarded-Email": "deployer@example.com", "X-CSRF-Token": deployer}
    r = deploy(client, rels[0].name, headers={**no_origin, "Origin": "null"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    r = deploy(client, rels[0].name, headers=no_origin)
    assert r.status_code == 403 and "Origin or Referer" in r.json()["error"]
    r = deploy(client, rels[0].name, headers={**no_origin, "Referer": "https://evil.example/x"})
    assert r.status_code == 403
    r = deploy(client, rels[0].name, headers={**no_origin, "Referer": "http://testserver/servers/web-1"})
    assert r.status_code == 200, r.text


def test_authentication_and_roles_come_before_the_body(client, rels):
    """An anonymous or under-privileged write is 401/403 whatever its body, never 400/422."""
    url = "/api/v1/servers/web-1/apps/hello/deploy"
    for body in (b"not json", b'{"release": 5}', b"[" * 5000, b'{"release": NaN}', b"\xff"):
        r = client.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401, (body[:20], r.status_code, r.text)
        r = client.post(url, content=body, headers={**token("dash"), "content-type": "application/json"})
        assert r.status_code == 403, (body[:20], r.status_code, r.text)
        r = client.post(url, content=body, headers={**token("ci"), "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["type"] == "InvalidRequest", (body[:20], r.text)
    r = client.post("/api/v1/servers/web-1/apps/hello/remove", content=b"{", headers=token("ci"))
    assert r.status_code == 403
    # The pages' forms too: a missing field from a stranger is 401, from a viewer 403.
    html = {"accept": "text/html"}
    assert client.post("/servers/web-1/apps/hello/deploy", data={}, headers=html).status_code == 401
    r = client.post("/servers/web-1/apps/hello/deploy", data={}, headers={**user("viewer@example.com"), **html})
    assert r.status_code == 403


def test_form_posts_need_csrf_token(client, rels):
    csrf = browser_csrf(client)
    hdr = {**user("deployer@example.com"), "accept": "text/html"}
    form = {"release": rels[0].name, "expected_from": ""}
    r = client.post("/servers/web-1/apps/hello/deploy", data=form, headers=hdr, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text and "<html" in r.text
    r = client.post("/servers/web-1/apps/hello/deploy", data={**form, "csrf_token": csrf}, headers=hdr,
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/servers/web-1/apps/hello?done=")
    page = client.get(r.headers["location"], headers=hdr)
    assert "Requested: <b>hello " + rels[0].release.short_hash + "</b> on <b>web-1</b>" in page.text
    # The same form again, as if a second user had looked before the first deploy: 409 page.
    r = client.post("/servers/web-1/apps/hello/deploy", data={**form, "release": rels[1].name, "csrf_token": csrf},
                    headers=hdr, follow_redirects=False)
    assert r.status_code == 409 and "Changed meanwhile" in r.text and 'id="retry"' in r.text
    assert "deployer@example.com" in r.text


def test_viewer_form_post_is_403_page(client, rels):
    csrf = browser_csrf(client, "viewer@example.com")
    r = client.post("/servers/web-1/apps/hello/deploy", data={"release": rels[0].name, "csrf_token": csrf},
                    headers={**user("viewer@example.com"), "accept": "text/html"})
    assert r.status_code == 403 and "may not deploy" in r.text


# -- rollback, remove, deploy everywhere, units ------------------------------------------------


def test_rollback(client, rels):
    assert client.post("/api/v1/servers/web-1/apps/hello/rollback", headers=token("ci")).status_code == 404
    deploy(client, rels[3].name)
    deploy(client, rels[0].name)
    preview = client.get("/api/v1/servers/web-1/apps/hello/rollback", headers=token("dash")).json()
    assert (preview["from"], preview["to"]) == (rels[0].name, rels[3].name)
    assert client.post("/api/v1/servers/web-1/apps/hello/rollback", headers=token("dash")).status_code == 403
    r = client.post("/api/v1/servers/web-1/apps/hello/rollback", json={"expected_to": rels[2].name},
                    headers=token("ci"))
    assert r.status_code == 409
    r = client.post("/api/v1/servers/web-1/apps/hello/rollback", json={"note": "broken"}, headers=token("ci"))
    assert r.status_code == 200 and r.json()["to"] == rels[3].name and r.json()["action"] == "rollback"


def test_a_deploy_to_a_server_whose_file_vanished_is_refused_and_writes_nothing(client, bucket, rels):
    """A store replaced by an empty one, or the file deleted: never a new one-app file."""
    assert deploy(client, rels[0].name).status_code == 200
    bucket.delete("server/web-1.json")
    r = deploy(client, rels[1].name)
    assert r.status_code == 409 and r.json()["type"] == "ServerFileMissing"
    assert "server/web-1.json is missing" in r.json()["error"] and "its history" in r.json()["error"]
    assert r.json()["conflict"]["last_change"]["to"] == rels[0].name
    assert serverfile.read(bucket, "web-1").generation is None


def test_remove_needs_admin(client, bucket, rels):
    deploy(client, rels[0].name)
    assert client.post("/api/v1/servers/web-1/apps/hello/remove", headers=token("ci")).status_code == 403
    r = client.post("/api/v1/servers/web-1/apps/hello/remove", json={"expected_from": rels[1].name},
                    headers=token("ops"))
    assert r.status_code == 409
    r = client.post("/api/v1/servers/web-1/apps/hello/remove", headers=token("ops"))
    assert r.status_code == 200 and r.json()["to"] is None
    assert serverfile.read(bucket, "web-1").entries == ("hello/",)  # removal is the placeholder


def test_deploy_all(client, rels):
    deploy(client, rels[0].name)
    client.post("/api/v1/servers/web-2/apps/hello/deploy", json={"release": rels[1].name}, headers=token("ci"))
    body = {"release": rels[3].name, "expected": {"web-1": rels[0].name, "web-2": rels[0].name}}
    assert client.post("/api/v1/apps/hello/deploy-all", json=body, headers=token("dash")).status_code == 403
    r = client.post("/api/v1/apps/hello/deploy-all", json=body, headers=token("ci"))
    assert r.status_code == 200
    out = {o["server"]: o for o in r.json()["outcomes"]}
    assert out["web-1"]["ok"] and out["web-1"]["to"] == rels[3].name
    assert not out["web-2"]["ok"] and out["web-2"]["status"] == 409 and not r.json()["ok"]
    r = client.post("/api/v1/apps/hello/deploy-all", json={"release": rels[3].name}, headers=token("ci"))
    assert r.json()["ok"] and {o["server"] for o in r.json()["outcomes"]} == {"web-1", "web-2"}


def test_unit_requests(client, bucket, rels):
    deploy(client, rels[0].name)
    assert client.post("/api/v1/servers/web-1/units/hello.service/restart", headers=token("dash")).status_code == 403
    assert client.post("/api/v1/servers/web-1/units/hello.service/restart").status_code == 401
    r = client.post("/api/v1/servers/web-1/units/hello.service/restart", json={"note": "stuck"}, headers=token("ci"))
    assert r.status_code == 200 and r.json()["request"]["state"] == "pending"
    assert [p.unit for p in unitrequests.pending(bucket, "web-1")] == ["hello.service"]
    listed = client.get("/api/v1/servers/web-1/requests", headers=token("dash")).json()
    assert listed[0]["action"] == "restart" and listed[0]["who"] == "deployer@example.com"
    assert client.post("/api/v1/servers/web-1/units/sshd.service/stop", headers=token("ci")).status_code == 404
    assert client.post("/api/v1/servers/db-1/units/hello.service/stop", headers=token("ci")).status_code == 404
    hist = client.get("/api/v1/history?server=web-1", headers=token("dash")).json()
    assert hist[0]["action"] == "unit-restart" and hist[0]["unit"] == "hello.service"


def test_history_views(client, rels):
    deploy(client, rels[0].name)
    client.post("/api/v1/servers/web-2/apps/hello/deploy", json={"release": rels[1].name}, headers=token("ci"))
    deploy(client, rels[2].name, note="third")
    assert client.get("/api/v1/history").status_code == 401
    everything = client.get("/api/v1/history", headers=token("dash")).json()
    assert [(h["server"], h["to"]) for h in everything] == [
        ("web-1", rels[2].name), ("web-2", rels[1].name), ("web-1", rels[0].name)]
    assert everything[0]["from"] == rels[0].name and everything[0]["note"] == "third"
    per_server = client.get("/api/v1/history?server=web-1", headers=token("dash")).json()
    assert len(per_server) == 2
    per_app = client.get("/api/v1/history?app=hello&limit=1", headers=token("dash")).json()
    assert len(per_app) == 1
    older = client.get(f"/api/v1/history?before={everything[0]['id']}", headers=token("dash")).json()
    assert [h["id"] for h in older] == [h["id"] for h in everything[1:]]


# -- the watch endpoint ------------------------------------------------------------------------


def test_watch_answers_at_once_without_since(client):
    start = time.monotonic()
    r = client.get("/api/v1/watch/web-1")
    assert r.status_code == 200 and set(r.json()) == {"rev", "changed"} and r.json()["changed"] is False
    assert time.monotonic() - start < 5  # at once, not after a long-poll timeout (a loaded CI machine takes seconds)


def test_watch_times_out_unchanged(client):
    rev = client.get("/api/v1/watch/web-1").json()["rev"]
    start = time.monotonic()
    r = client.get(f"/api/v1/watch/web-1?since={rev}&timeout=0.3").json()
    assert r == {"rev": rev, "changed": False} and 0.25 < time.monotonic() - start < 3


def test_watch_answers_at_once_for_an_old_rev(client):
    r = client.get("/api/v1/watch/web-1?since=something-else&timeout=30").json()
    assert r["changed"] is True


def _watch_in_thread(client, server, rev, timeout=20):
    """A watcher of `server` in a thread, returned once the push server holds its long-poll."""
    hub = client.app.state.push.hub
    waiting = hub.watchers
    got = {}

    def run():
        start = time.monotonic()
        got["answer"] = client.get(f"/api/v1/watch/{server}?since={rev}&timeout={timeout}").json()
        got["seconds"] = time.monotonic() - start

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: hub.watchers > waiting or "answer" in got, what="the watch to be held")
    return t, got


def test_watch_wakes_on_own_write(client, rels):
    rev = client.get("/api/v1/watch/web-1").json()["rev"]
    t, got = _watch_in_thread(client, "web-1", rev)
    assert deploy(client, rels[0].name).status_code == 200
    t.join(10)
    assert got["answer"]["changed"] is True and got["answer"]["rev"] != rev and got["seconds"] < 5


def test_watch_sees_writes_by_others_and_unit_requests(client, app, bucket, rels, tmp_path):
    rev = client.get("/api/v1/watch/web-2").json()["rev"]
    t, got = _watch_in_thread(client, "web-2", rev)
    # The CLI writing straight to the bucket: this server learns it from its bucket poll.
    cli = fleet.Context.open(bucket, make_config(tmp_path), via="cli")
    fleet.deploy(cli, "someone", "web-2", "hello", rels[0].name)
    t.join(10)
    assert got["answer"]["changed"] is True
    rev2 = got["answer"]["rev"]
    t, got = _watch_in_thread(client, "web-2", rev2)
    fleet.unit_action(cli, "someone", "web-2", "hello.service", "restart")
    t.join(10)
    assert got["answer"]["changed"] is True and got["answer"]["rev"] != rev2


def test_two_push_servers_on_one_bucket(bucket, tmp_path, rels):
    make_release(bucket, "pulld", 1)
    settings = AuthSettings(trusted_proxies=(PROXY,))
    a = create_app(bucket, make_config(tmp_path), auth=settings, poll_interval=0.05)
    b = create_app(bucket, make_config(tmp_path), auth=settings, poll_interval=0.05)
    with TestClient(a, client=(PROXY, 1)) as ca, TestClient(b, client=(PROXY, 2)) as cb:
        assert ca.get("/api/v1/watch/web-1").json()["rev"] == cb.get("/api/v1/watch/web-1").json()["rev"]
        # Both users saw "nothing deployed"; exactly one wins, the other gets 409.
        ra = deploy(ca, rels[0].name, expected_from=None)
        rb = deploy(cb, rels[1].name, expected_from=None)
        assert (ra.status_code, rb.status_code) == (200, 409)
        assert rb.json()["conflict"]["current"] == rels[0].name
        # B's view catches up from the bucket within its poll interval.
        wait_for(lambda: cb.get("/api/v1/servers/web-1", headers=token("dash")).json()["apps"][0]["desired"]
                 == rels[0].name, timeout=5, what="the second push server to see the deploy")
        assert [h["to"] for h in cb.get("/api/v1/history", headers=token("dash")).json()] == [rels[0].name]


# -- health and metrics ------------------------------------------------------------------------


def test_healthz_and_metrics(client, rels):
    # 503 until the first bucket poll is done, which on a busy machine is after startup.
    h = wait_for(lambda: (r := client.get("/healthz")).status_code == 200 and r, timeout=10,
                 what="/healthz to be 200")
    assert h.json()["ok"] is True and h.json()["loaded"] is True, h.json()
    deploy(client, rels[0].name)
    deploy(client, rels[1].name, expected_from=None)  # a 409
    text = client.get("/metrics").text
    assert 'push_changes_total{action="deploy"} 1.0' in text
    assert 'push_refusals_total{status="409"} 1.0' in text
    assert re.search(r'push_http_requests_total\{method="POST",'
                     r'route="/api/v1/servers/\{server\}/apps/\{app\}/deploy",status="200"\} 1.0', text)
    assert "push_watchers 0.0" in text and "push_fleet_servers 3.0" in text
    # The bucket operations of this process: the deploy's CAS write is a put, its read a read.
    ops = {m[0]: float(m[1]) for m in re.findall(r'push_store_operations_total\{op="(\w+)"\} ([0-9.e+]+)', text)}
    assert set(ops) == {"list", "stat", "read", "put", "delete"}, text
    assert ops["put"] >= 4 and ops["list"] >= 3 and ops["read"] >= 1, ops


def test_healthz_reports_a_broken_bucket(bucket, tmp_path, monkeypatch):
    app = create_app(bucket, make_config(tmp_path), poll_interval=0.05)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200

        def down(*a, **k):
            raise StoreUnavailable("bucket unreachable")

        monkeypatch.setattr(bucket, "list_page", down)
        h = wait_for(lambda: (r := c.get("/healthz")).status_code == 503 and r, what="/healthz to be 503")
        assert "bucket unreachable" in h.json()["last_poll_error"]
        # Pages still answer from the cache.
        assert c.get("/api/v1/fleet", headers=token("dash")).status_code == 200


def test_pages_deploy_everywhere_remove_and_units_by_form(client, bucket, rels):
    deploy(client, rels[0].name)
    client.post("/api/v1/servers/web-2/apps/hello/deploy", json={"release": rels[0].name}, headers=token("ci"))
    html = {"accept": "text/html"}
    r = client.get(f"/apps/hello/deploy-all?release={rels[3].name}", headers={**user("deployer@example.com"), **html})
    assert r.status_code == 200 and r.text.count('name="expected"') == 2
    csrf = browser_csrf(client)
    form = {"release": rels[3].name, "csrf_token": csrf, "note": "all",
            "expected": [f"web-1={rels[0].name}", f"web-2={rels[0].name}"]}
    r = client.post("/apps/hello/deploy-all", data=form, headers={**user("deployer@example.com"), **html})
    assert r.status_code == 200 and r.text.count("class=\"ok\"") == 2
    assert {serverfile.read(bucket, s).release_of("hello").name for s in ("web-1", "web-2")} == {rels[3].name}
    assert "Deployed to all 2 servers (2 changed" in r.text
    # The result page is honest: when every server refused, nothing is "deployed" and it is no 200.
    form["release"] = rels[2].name  # both still expected at rels[0]: both refuse
    r = client.post("/apps/hello/deploy-all", data=form, headers={**user("deployer@example.com"), **html})
    assert r.status_code == 409 and "Nothing deployed" in r.text and "all 2 servers refused" in r.text
    assert r.text.count("refused (409 ChangedMeanwhile)") == 2 and "<title>hello: nothing deployed" in r.text
    form["expected"] = [f"web-1={rels[3].name}", f"web-2={rels[0].name}"]
    r = client.post("/apps/hello/deploy-all", data=form, headers={**user("deployer@example.com"), **html})
    assert r.status_code == 200 and "Deployed to 1 of 2 servers" in r.text and "1 refused" in r.text
    # Removing needs admin, from a page with the CSRF token.
    r = client.post("/servers/web-1/apps/hello/remove", data={"csrf_token": csrf, "expected_from": rels[3].name},
                    headers={**user("deployer@example.com"), **html})
    assert r.status_code == 403 and "may not admin" in r.text
    r = client.post("/servers/web-1/apps/hello/remove",
                    data={"csrf_token": browser_csrf(client, "admin@example.com"), "expected_from": rels[2].name},
                    headers={**user("admin@example.com"), **html}, follow_redirects=False)
    assert r.status_code == 303 and serverfile.read(bucket, "web-1").release_of("hello") is None
    assert serverfile.read(bucket, "web-1").entries == ("hello/",)  # the UI's remove writes the placeholder
    # A unit action by form lands as a pending request.
    r = client.post("/servers/web-2/units/hello.service/stop", data={"csrf_token": csrf},
                    headers={**user("deployer@example.com"), **html}, follow_redirects=False)
    assert r.status_code == 303 and [q.action for q in unitrequests.pending(bucket, "web-2")] == ["stop"]
    # Every page renders for a viewer.
    for path in ["/", "/?problems=1&page=2", "/servers/web-1", "/servers/web-2/apps/hello", "/apps/hello",
                 "/history?server=web-1", "/history?app=hello"]:
        assert client.get(path, headers={**user("viewer@example.com"), **html}).status_code == 200, path
    assert client.get("/servers/nowhere", headers={**user("viewer@example.com"), **html}).status_code == 404


# -- input at the edge: limits, strict JSON, store faults ------------------------------------


def _keys(bucket):
    """Every key but the catalogue's (catalog/: the push server folds its journal into the
    index on its own schedule, whatever the requests)."""
    return sorted(i.key for i in bucket.list("") if not i.key.startswith("catalog/"))


def test_a_refused_request_writes_nothing_and_says_why_in_one_line(client, bucket, rels):
    before = _keys(bucket)
    url = "/api/v1/servers/web-1/apps/hello/deploy"
    cases = [
        (b'{"release": "%s", "note": "\\ud800"}' % rels[0].name.encode(), 400, "lone UTF-16 surrogate"),
        (b'{"release": "%s", "note": "x", "latest": NaN}' % rels[0].name.encode(), 400, "NaN"),
        (b'{"release": "%s", "expected_from": Infinity}' % rels[0].name.encode(), 400, "Infinity"),
        (b'{"release": "\xff"}', 400, "not UTF-8"),
        (json.dumps({"release": rels[0].name, "note": "x" * 10_000_000}).encode(), 413, "at most 65536"),
        (json.dumps({"release": rels[0].name, "note": "x" * 1001}).encode(), 400, "at most 1000"),
    ]
    for body, status, words in cases:
        r = client.post(url, content=body, headers={**token("ci"), "content-type": "application/json"})
        assert r.status_code == status and words in r.json()["error"], (body[:60], r.status_code, r.text[:200])
        assert "\n" not in r.json()["error"]
    r = client.post("/api/v1/servers/web-1/apps/" + "a" * 300 + "/deploy", json={"release": rels[0].name},
                    headers=token("ci"))
    assert r.status_code == 400 and "at most 64 bytes" in r.json()["error"]
    csrf = browser_csrf(client)
    r = client.post(url.replace("/api/v1", ""), data={"release": rels[0].name, "note": "x" * 5000, "csrf_token": csrf},
                    headers={**user("deployer@example.com"), "accept": "text/html"})
    assert r.status_code == 400 and "at most 1000" in r.text
    assert _keys(bucket) == before  # nothing written, not even half
    assert client.get("/api/v1/history", headers=token("dash")).status_code == 200
    assert client.get("/history", headers={**user("viewer@example.com"), "accept": "text/html"}).status_code == 200


def test_odd_query_parameters_are_400_with_one_line(client):
    for url in ["/api/v1/history?limit=1e309", "/api/v1/history?limit=%C2%B2", "/api/v1/watch/web-1?timeout=nan",
                "/?page=" + "9" * 5000]:
        r = client.get(url, headers={**token("dash"), "accept": "application/json"})
        assert r.status_code == 400 and r.json()["type"] == "InvalidRequest", (url, r.status_code, r.text[:200])


def test_a_store_the_server_may_not_read_is_503_with_a_message(client, bucket, rels, monkeypatch):
    """PermissionError on the local store (a root-owned directory, a bad mount)."""
    import builtins
    import os

    import push.store.local as local

    root = str(bucket.root)
    real_open, real_scandir = builtins.open, os.scandir

    def deny(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(root):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(local, "open", deny(real_open), raising=False)
    monkeypatch.setattr(os, "scandir", deny(real_scandir))
    deploy_body = {"json": {"release": rels[0].name}}
    for method, url, kwargs in [("GET", "/api/v1/history", {}), ("GET", "/api/v1/servers/web-1/requests", {}),
                                ("POST", "/api/v1/servers/web-1/apps/hello/deploy", deploy_body)]:
        r = client.request(method, url, headers=token("ci"), **kwargs)
        assert r.status_code == 503 and "Permission denied" in r.json()["error"], (url, r.status_code, r.text)


def test_idle_long_polls_are_answered_within_their_timeout_at_spread_moments():
    """Agents that connected together (a restart) must not time out together forever."""
    from push.server.watch import TIMEOUT_JITTER, jittered

    waits = [jittered(55.0) for _ in range(200)]
    assert all(55.0 * (1 - TIMEOUT_JITTER) <= w <= 55.0 for w in waits)
    assert max(waits) - min(waits) > 2.0
