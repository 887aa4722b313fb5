"""Every route of the push server answers what /openapi.json says it answers.

The document is fetched from the running app and each real answer (successes and
refusals) is validated against the schema of its path, method and status, with `$ref`s
resolved, by jsonschema. Every JSON route must have been checked with a success.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from fleetdata import TOKENS, make_config, make_release, report
from push import serverfile
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.serverfile import ServerFile
from push.store.local import LocalStore

PROXY = "10.0.0.1"
CI = {"Authorization": f"Bearer {TOKENS['ci']}"}
OPS = {"Authorization": f"Bearer {TOKENS['ops']}"}
DASH = {"Authorization": f"Bearer {TOKENS['dash']}"}


class Checker:
    """Validates answers against the app's own OpenAPI document and notes what it covered."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.doc: dict[str, Any] = client.get("/openapi.json").json()
        self.routes = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in self.doc["paths"]]
        self.succeeded: set[tuple[str, str]] = set()
        self.checked = 0

    def template(self, url: str) -> str:
        path = url.split("?", 1)[0]
        matches = [p for rx, p in self.routes if rx.match(path)]
        assert matches, f"{path} is not in /openapi.json"
        return min(matches, key=lambda p: p.count("{"))  # the literal route wins over a template

    def __call__(self, method: str, url: str, expect: int, **kwargs: Any) -> Any:
        r = self.client.request(method, url, **kwargs)
        assert r.status_code == expect, (method, url, r.status_code, r.text[:300])
        path = self.template(url)
        responses = self.doc["paths"][path][method.lower()]["responses"]
        assert str(r.status_code) in responses, f"{method} {path} answers {r.status_code}, not documented"
        content = responses[str(r.status_code)].get("content", {})
        schema = content.get("application/json", {}).get("schema")
        assert schema is not None, f"{method} {path} {r.status_code} documents no JSON schema"
        body = r.json()
        validator = Draft202012Validator({**schema, "components": self.doc["components"]})
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method} {path} {r.status_code}: {errors[0].message} at {list(errors[0].absolute_path)}"
        self.checked += 1
        if r.status_code < 300:
            self.succeeded.add((method.lower(), path))
        return body


@pytest.fixture
def world(tmp_path):
    bucket = LocalStore(tmp_path / "bucket")
    rels = [make_release(bucket, "hello", n, services=("hello.service", "hello.timer")) for n in range(1, 5)]
    make_release(bucket, "pulld", 1)
    report(bucket, "web-1", {"hello": None, "pulld": None})
    report(bucket, "web-2", {"hello": rels[0].name}, failed={"hello": "dpkg: error"},
           units={"hello": {"hello.service": "failed"}})
    # web-2 runs hello, so it has a server file (a deploy to a server that had one and lost
    # it is refused: ServerFileMissing).
    serverfile.write(bucket, ServerFile("web-2", (rels[0].name,)))
    app = create_app(bucket, make_config(tmp_path), auth=AuthSettings(trusted_proxies=(PROXY,)),
                     poll_interval=0.05, catalog_interval=0.1)
    with TestClient(app, client=(PROXY, 40000)) as client:
        yield client, rels


def test_every_answer_matches_the_openapi_document(world):
    client, rels = world
    check = Checker(client)
    r0, r1, r2, r3 = (r.name for r in rels)
    deploy = "/api/v1/servers/web-1/apps/hello/deploy"

    # Reading.
    check("GET", "/api/v1/whoami", 200, headers=CI)
    check("GET", "/api/v1/fleet", 200, headers=DASH)
    check("GET", "/api/v1/fleet?server=web&app=hel", 200, headers=DASH)
    check("GET", "/api/v1/servers/web-2", 200, headers=DASH)
    check("GET", "/api/v1/apps", 200, headers=DASH)
    check("GET", "/api/v1/apps/hello/releases", 200, headers=DASH)
    check("GET", "/api/v1/history", 200, headers=DASH)
    check("GET", "/api/v1/problems", 200, headers=DASH)
    check("GET", "/api/v1/servers/web-1/requests", 200, headers=DASH)
    check("GET", "/healthz", 200)
    watch = check("GET", "/api/v1/watch/web-1", 200)

    # Changing.
    first = check("POST", deploy, 200, headers=CI, json={"release": r0, "note": "first"})
    assert first["changed"] and first["history"]["note"] == "first" and first["request"] is None
    check("POST", deploy, 200, headers=CI, json={"release": r0})  # nothing to change
    check("POST", deploy, 200, headers=CI, json={"latest": True, "expected_from": r0})
    preview = check("GET", "/api/v1/servers/web-1/apps/hello/rollback", 200, headers=DASH)
    assert (preview["from"], preview["to"]) == (r3, r0) and preview["basis"]["to"] == r3
    check("POST", "/api/v1/servers/web-1/apps/hello/rollback", 200, headers=CI, json={"note": "back"})
    check("POST", "/api/v1/servers/web-2/apps/hello/deploy", 200, headers=CI, json={"release": r1})
    plan = check("GET", f"/api/v1/apps/hello/deploy-all?release={rels[2].release.hash[:8]}", 200, headers=DASH)
    assert plan == {"app": "hello", "release": r2, "servers": {"web-1": r0, "web-2": r1}}
    check("GET", "/api/v1/apps/helo/deploy-all?release=latest", 404, headers=DASH)
    check("GET", "/api/v1/history?server=nowhere", 404, headers=DASH)
    everywhere = check("POST", "/api/v1/apps/hello/deploy-all", 200, headers=CI,
                       json={"release": r2, "expected": {"web-1": r0, "web-2": r0}})
    assert [o["ok"] for o in everywhere["outcomes"]] == [True, False]
    assert everywhere["outcomes"][1]["status"] == 409 and everywhere["outcomes"][1]["conflict"]["current"] == r1
    unit = check("POST", "/api/v1/servers/web-1/units/hello.timer/restart", 200, headers=CI, json={"note": "x"})
    assert unit["request"]["unit"] == "hello.timer"
    assert check("GET", "/api/v1/servers/web-1/requests", 200, headers=DASH)[0]["state"] == "pending"
    check("POST", "/api/v1/servers/web-1/apps/hello/remove", 200, headers=OPS, json={"expected_from": r2})
    history = check("GET", "/api/v1/history?server=web-1&limit=10", 200, headers=DASH)
    assert [h["action"] for h in history][:2] == ["remove", "unit-restart"]
    changed = check("GET", f"/api/v1/watch/web-1?since={watch['rev']}&timeout=0", 200)
    assert changed["changed"] is True

    # Rollouts.
    rplan = check("GET", "/api/v1/rollouts/plan?app=hello&release=latest&servers=web-2", 200, headers=DASH)
    assert rplan["release"] == r3 and rplan["plan"]["servers"] == ["web-2"] and rplan["before"] == {"web-2": r1}
    started = check("POST", "/api/v1/rollouts", 200, headers=CI,
                    json={"app": "hello", "release": r3, "servers": ["web-2"], "bake": 0, "waves": "1"})
    assert started["state"] == "running" and started["plan"]["servers"] == ["web-2"]
    rid = started["id"]
    assert [r["id"] for r in check("GET", "/api/v1/rollouts", 200, headers=DASH)] == [rid]
    check("GET", f"/api/v1/rollouts/{rid}", 200, headers=DASH)
    refused = check("POST", "/api/v1/servers/web-2/apps/hello/deploy", 409, headers=CI, json={"release": r0})
    assert refused["type"] == "RolloutActive" and rid in refused["error"]
    check("POST", "/api/v1/rollouts", 409, headers=CI, json={"app": "hello", "release": r3, "servers": ["web-2"]})
    check("POST", f"/api/v1/rollouts/{rid}/pause", 200, headers=CI)
    check("POST", f"/api/v1/rollouts/{rid}/rewind", 400, headers=CI)
    check("POST", f"/api/v1/rollouts/{rid}/abort", 403, headers=DASH, json={"rollback": False})
    assert check("POST", f"/api/v1/rollouts/{rid}/abort", 200, headers=CI, json={"rollback": False})["abort"] == "stop"
    check("GET", "/api/v1/rollouts/01764676800000000000-0a1b2c3d", 404, headers=DASH)

    # Refusals.
    check("GET", "/api/v1/fleet", 401)
    check("GET", "/api/v1/fleet", 403, headers={"X-Forwarded-Email": "stranger@example.net"})
    check("POST", deploy, 403, headers=DASH, json={"release": r0})
    check("GET", "/api/v1/servers/nowhere", 404, headers=DASH)
    check("POST", "/api/v1/servers/web-2/apps/pulld/rollback", 404, headers=CI)  # no history to go back by
    conflict = check("POST", deploy, 409, headers=CI, json={"release": r1, "expected_from": r3})
    assert conflict["type"] == "ChangedMeanwhile" and conflict["conflict"]["last_change"]["action"] == "remove"
    check("POST", deploy, 400, headers=CI, json={})
    check("GET", "/api/v1/apps/bad..name/releases", 400, headers=DASH)
    check("POST", deploy, 400, headers={**CI, "content-type": "application/json"}, content=b"{not json")

    json_routes = {(m, p) for p, ops in check.doc["paths"].items() for m in ops if p != "/metrics"}
    assert json_routes - check.succeeded == set()

    # The check can fail: an answer missing a field, or with a wrong type, is refused.
    fleet_schema = check.doc["paths"]["/api/v1/fleet"]["get"]["responses"]["200"]["content"]["application/json"]
    validator = Draft202012Validator({**fleet_schema["schema"], "components": check.doc["components"]})
    good = client.get("/api/v1/fleet", headers=DASH).json()
    assert validator.is_valid(good)
    del good["servers"][0]["apps"][0]["marks"]
    assert not validator.is_valid(good)
    good = client.get("/api/v1/fleet", headers=DASH).json()
    good["servers"][1]["apps"][0]["marks"] = ["on_fire"]
    assert not validator.is_valid(good)


def test_healthz_not_ready_is_documented_too(tmp_path, monkeypatch):
    from push.errors import StoreUnavailable

    bucket = LocalStore(tmp_path / "bucket")
    app = create_app(bucket, make_config(tmp_path), poll_interval=0.05)
    with TestClient(app) as client:
        check = Checker(client)
        check("GET", "/healthz", 200)

        def down(*a: object, **k: object) -> None:
            raise StoreUnavailable("bucket unreachable")

        monkeypatch.setattr(bucket, "list_page", down)
        app.state.push.hub.last_poll_error = "StoreUnavailable: bucket unreachable"
        body = check("GET", "/healthz", 503)
        assert body["ok"] is False and "unreachable" in body["last_poll_error"]


def test_the_metrics_are_text(world):
    client, _ = world
    doc = client.get("/openapi.json").json()
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "push_watchers" in r.text
