"""A rollout in the browser (Debian's Chromium through Playwright): from an app's page to
the plan, confirmed, then the rollout's page following it live (htmx) to completed while
the test plays the agents; Pause and Abort from the page."""

from __future__ import annotations

import re

import pytest

from chromium import launched
from fleetdata import conf_text, make_release
from push import changes, fleet, status, timestamps
from push.config import load
from push.store.local import LocalStore
from pushserver import PushServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]



def agent_says(bucket: LocalStore, server: str, release: str) -> None:
    """What an agent reports once `release` of hello is installed and healthy."""
    st = status.AgentStatus(server=server, agent_version="test", time=timestamps.now_text(), journaled=True)
    st.apps["hello"] = status.AppStatus(desired=release, installed=release, health="healthy",
                                        units={"hello.service": "active"})
    status.write(bucket, st)
    changes.record(bucket, changes.STATUS, server)


@pytest.fixture
def world(tmp_path):
    bucket = LocalStore(tmp_path / "bucket")
    rels = [make_release(bucket, "hello", n) for n in range(1, 4)]
    conf = tmp_path / "skiapush.conf"
    conf.write_text(conf_text())
    ctx = fleet.Context.open(bucket, load(conf), via="test")
    for s in ("web-1", "web-2"):
        fleet.deploy(ctx, "ann", s, "hello", rels[0].name)
        agent_says(bucket, s, rels[0].name)
    server = PushServerProcess(str(tmp_path / "bucket"), conf, tmp_path / "serve.log",
                               "--trusted-proxy", "127.0.0.1", "--rollout-interval", "0.2")
    try:
        with launched() as browser:
            context = browser.new_context(extra_http_headers={"X-Forwarded-Email": "deployer@example.com"},
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield bucket, rels, server, page
    finally:
        server.stop()


def test_roll_out_from_the_app_page_and_watch_it_live(world) -> None:
    bucket, rels, server, page = world
    page.goto(server.url + "/apps/hello")
    page.click(f"a.rollout[href*='{rels[1].release.hash}']")
    page.wait_for_url(re.compile(r"/apps/hello/rollout\?release="))
    assert "to 2 servers in waves" in page.inner_text("h1")
    plan = page.inner_text("table.plan")
    assert "web-1" in plan and "web-2" in plan and "(canary)" in plan
    page.fill("input[name=bake]", "0")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/rollouts/\d{20}-[0-9a-f]{8}$"))
    assert page.inner_text("#rollout-state") in ("running", "completed")
    # The canary is written; its agent reports the release healthy; the page follows.
    page.wait_for_function("document.querySelector('tr[data-server=web-1]').className.includes('phase-changed')")
    agent_says(bucket, "web-1", rels[1].name)
    page.wait_for_function("document.querySelector('tr[data-server=web-2]').className.includes('phase-changed')")
    agent_says(bucket, "web-2", rels[1].name)
    page.wait_for_function("document.querySelector('#rollout-state').textContent == 'completed'")
    assert "healthy" in page.inner_text("tr[data-server=web-2]")
    # The rollouts page lists it among the past ones; history rows link to it.
    page.click("header nav a[href='/rollouts']")
    assert "completed" in page.inner_text("main")
    page.goto(server.url + "/history?server=web-1")
    assert page.locator("a.rollout").count() == 1

    # A second rollout, paused and aborted from its page: the canary goes back.
    page.goto(server.url + "/apps/hello")
    page.click(f"a.rollout[href*='{rels[2].release.hash}']")
    page.click("#confirm")
    page.wait_for_function("document.querySelector('tr[data-server=web-1]').className.includes('phase-changed')")
    page.click("#pause")
    page.wait_for_function("document.querySelector('#rollout-state').textContent == 'paused'")
    page.click("#abort")
    page.wait_for_function("document.querySelector('#rollout-state').textContent == 'aborted'")
    assert "reverted" in page.inner_text("tr[data-server=web-1]")
