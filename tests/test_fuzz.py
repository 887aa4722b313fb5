"""Fuzzing every endpoint of the push server, API and pages, with Hypothesis.

Every route the app serves (read from the app itself, so a new route is fuzzed too) gets
path parameters, query parameters and bodies drawn from good values, near misses and
hostile ones: names past the file system's limits, lone UTF-16 surrogates, NaN and
Infinity, bodies that are not UTF-8 or nested deeply, numbers in odd notations. Asserted for
every case: no answer is a 5xx, and every key the request left in the bucket is one Push
writes (a server file, a history record, a unit request, a change journal entry, the
catalogue index, each under its own prefix).

The quick run (in the suite) is bounded by FUZZ_EXAMPLES cases; the slow variant runs ten
times as many. docs/testing.md records the figures.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetdata import TOKENS, make_config, make_release, report
from push import catalogindex, layout
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.store.local import LocalStore

FUZZ_EXAMPLES = int(os.environ.get("PUSH_FUZZ_EXAMPLES", "1240"))  # 40 per endpoint
# After this long, each endpoint still to go gets 5 cases only: a loaded CI machine runs fewer
# cases, not for longer, and every endpoint is still covered.
FUZZ_SECONDS = float(os.environ.get("PUSH_FUZZ_SECONDS", "45"))
PROXY = "10.0.0.1"

GOOD_NAMES = ["web-1", "web-2", "db-1", "hello", "pulld", "hello.service", "start", "stop", "restart"]
ODD_NUMBERS = ["1e309", "-1", "0", "1.5", "nan", "inf", "-inf", "\u0661\u0662", "\u00b2", "9" * 5000, "0x10",
               " 1", "1_000", "+3", "", "00000000000000000001-0000000a", "99999999999999999999999999"]


def _text(with_surrogates: bool) -> st.SearchStrategy[str]:
    categories = None if with_surrogates else st.characters(exclude_categories=("Cs",))
    plain = st.text(alphabet=categories, max_size=40) if categories is not None else st.text(max_size=40)
    return st.one_of(plain, st.sampled_from(["a" * 300, "x." * 200, "..", "-bad", "a/b", "~", "%", "é" * 130]),
                     st.text(alphabet="abc-._", min_size=60, max_size=400))


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(GOOD_NAMES), _text(False))


def json_values(releases: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        _text(True), st.sampled_from(releases))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(_text(True), inner, max_size=4)),
                        max_leaves=12)


def bodies(releases: list[str]) -> st.SearchStrategy[bytes]:
    field_values = st.one_of(st.sampled_from(releases), json_values(releases))
    keys = st.sampled_from(["release", "latest", "expected_from", "expected_to", "note", "expected"])
    shaped = st.dictionaries(keys, field_values, max_size=4)
    as_json = st.one_of(shaped, json_values(releases)).map(
        lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))
    return st.one_of(as_json, st.binary(max_size=64), st.sampled_from([
        b"", b"[" * 3000, b'{"release": "\\ud800"}', b'{"note": "\\udfff", "latest": true}', b'{"latest": NaN}',
        b"\xff\xfe{}", b'{"note": "' + b"x" * 70_000 + b'"}', b'{"release": 1e999}']))


def forms(releases: list[str]) -> st.SearchStrategy[dict[str, str]]:
    keys = st.sampled_from(["release", "expected_from", "expected_to", "note", "csrf_token", "expected", "x"])
    return st.dictionaries(keys, st.one_of(st.sampled_from(releases), _text(False)), max_size=5)


def queries(params: list[str], releases: list[str]) -> st.SearchStrategy[dict[str, str]]:
    # Release names too (and their hash prefixes): ?release= of the deploy-all preview.
    prefixes = [r.rsplit(":", 1)[-1][:n] for r in releases for n in (7, 12) if r.endswith(".deb")]
    values = st.one_of(st.sampled_from(ODD_NUMBERS), names(), st.integers().map(str),
                       st.sampled_from([*releases, *prefixes, "latest", "previous"]))
    return st.dictionaries(st.sampled_from([*params, "x"]), values, max_size=3)


def endpoints(app: Any) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path template, path params, query params) of every route the app serves."""
    out = []
    pending = list(app.routes)
    while pending:
        route = pending.pop(0)
        included = getattr(route, "original_router", None)  # FastAPI >= 0.165 wraps included routers
        if included is not None:
            pending.extend(included.routes)
            continue
        if not isinstance(route, APIRoute):
            continue
        path_params = re.findall(r"\{(\w+)\}", route.path)
        query = [p.alias for p in route.dependant.query_params]
        for method in sorted(route.methods):
            out.append((method, route.path, path_params, query))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, LocalStore, list[str], Any]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    bucket = LocalStore(tmp / "bucket")
    rels = [make_release(bucket, "hello", n, services=("hello.service",)).name for n in range(1, 4)]
    rels.append(make_release(bucket, "pulld", 1).name)
    report(bucket, "web-1", {"hello": None, "pulld": None})
    app = create_app(bucket, make_config(tmp), auth=AuthSettings(trusted_proxies=(PROXY,)),
                     poll_interval=0.5, catalog_interval=1.0)
    with TestClient(app, client=(PROXY, 40000), raise_server_exceptions=False) as client:
        yield client, bucket, rels, app


def _written_by_push(key: str) -> bool:
    if key.startswith(layout.SERVER):
        return layout.server_of_file_key(key) is not None
    if key.startswith(layout.HISTORY):
        return layout.history_id_of_key(key) is not None
    if key.startswith(layout.REQUESTS):
        return layout.request_of_key(key) is not None
    if key.startswith(layout.CHANGES):  # the change journal: written with every server file and report
        return layout.change_entry(key) is not None
    if key.startswith(layout.SERVER_SIGNATURES):
        return layout.server_of_signature_key(key) is not None
    if key.startswith(layout.CATALOG_INDEX):  # the push server keeps the catalogue index
        return key == layout.catalog_index_key(catalogindex.VERSION)
    return key.startswith((layout.DEBS, layout.STATUS, layout.CATALOG_LOG))  # the fixture's own


def _fuzz(world: tuple[TestClient, LocalStore, list[str], Any], examples: int, seconds: float | None) -> None:
    """`examples` cases shared out over every endpoint (each gets its share, so every one is
    covered); once `seconds` have passed, each endpoint still to go gets a few cases only."""
    client, bucket, rels, app = world
    routes = [e for e in endpoints(app) if e[1] not in ("/openapi.json",)]
    admin = {"Authorization": f"Bearer {TOKENS['ops']}"}
    page = client.get("/", headers={"X-Forwarded-Email": "admin@example.com", "accept": "text/html"})
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    browser = {"X-Forwarded-Email": "admin@example.com", "Origin": "http://testserver", "accept": "text/html",
               "X-CSRF-Token": csrf.group(1) if csrf else ""}
    seen: dict[tuple[str, str], int] = {}

    def fuzz_route(method: str, path: str, path_params: list[str], query: list[str], n: int) -> None:
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.data())
        def case(data: st.DataObject) -> None:
            values = {p: data.draw(st.one_of(names(), st.sampled_from(rels)), label=p) for p in path_params}
            url = path.format(**{k: quote(v, safe="") or "x" for k, v in values.items()})
            params = data.draw(queries(query, rels), label="query")
            headers = dict(browser if data.draw(st.booleans(), label="browser") else admin)
            kwargs: dict[str, Any] = {"params": params, "headers": headers}
            if method == "POST":
                if path.startswith("/api/"):
                    kwargs["content"] = data.draw(bodies(rels), label="body")
                    headers["content-type"] = "application/json"
                else:
                    kwargs["data"] = data.draw(forms(rels), label="form")
            if path.startswith("/api/v1/watch/"):
                params["timeout"] = "0"  # the long poll answers at once (its parameters: test_server_api)
            r = client.request(method, url, follow_redirects=False, **kwargs)
            seen[(method, path)] = seen.get((method, path), 0) + 1
            assert r.status_code < 500, (method, url, params, kwargs.get("content", kwargs.get("data")),
                                         r.status_code, r.text[:300])
            strays = [i.key for i in bucket.list("") if not _written_by_push(i.key)]
            assert not strays, (method, url, strays)

        case()

    start = time.monotonic()
    share = max(1, examples // len(routes))
    for method, path, path_params, query in routes:
        late = seconds is not None and time.monotonic() - start > seconds
        fuzz_route(method, path, path_params, query, min(share, 5) if late else share)
    elapsed = time.monotonic() - start
    print(f"\nfuzz: {sum(seen.values())} cases over {len(seen)} of {len(routes)} endpoints in {elapsed:.1f} s")
    assert len(seen) == len(routes), sorted({(m, p) for m, p, *_ in routes} - set(seen))


@pytest.mark.slow  # about 20 s: a thousand requests
def test_no_endpoint_answers_5xx_or_writes_outside_its_prefix(world: Any) -> None:
    _fuzz(world, FUZZ_EXAMPLES, FUZZ_SECONDS)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PUSH_FUZZ_LONG"), reason="minutes long: set PUSH_FUZZ_LONG=1 to run it")
def test_no_endpoint_answers_5xx_long_run(world: Any) -> None:
    _fuzz(world, FUZZ_EXAMPLES * 10, None)
