"""The push server's pages in a real browser: Debian's Chromium driven by Playwright.

A user signed in through the (simulated) authenticating proxy opens the fleet view,
filters it, deploys a release through the confirmation, rolls back, reads the history,
meets a conflict and retries, and restarts a unit. The proxy is played by Playwright
adding the X-Forwarded-Email header; `push serve` trusts it from 127.0.0.1 only.
"""

from __future__ import annotations

import re

import pytest

from chromium import launched
from fleetdata import conf_text, make_release, report
from push import changes, fleet
from push.config import load
from push.store.local import LocalStore
from pushserver import PushServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]



@pytest.fixture(scope="module")
def browser():
    with launched() as b:
        yield b


@pytest.fixture
def world(tmp_path):
    bucket = LocalStore(tmp_path / "bucket")
    rels = [make_release(bucket, "hello", n, note=f"hello change {n}") for n in range(1, 5)]
    make_release(bucket, "pulld", 1)
    report(bucket, "web-1", {"hello": None, "pulld": None})
    conf = tmp_path / "skiapush.conf"
    conf.write_text(conf_text())
    server = PushServerProcess(str(tmp_path / "bucket"), conf, tmp_path / "serve.log",
                               "--trusted-proxy", "127.0.0.1")
    yield bucket, rels, conf, server
    server.stop()


def page_as(browser, email):
    context = browser.new_context(extra_http_headers={"X-Forwarded-Email": email},
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    return page


def test_deploy_rollback_and_history_in_a_browser(browser, world):
    bucket, rels, conf, server = world
    page = page_as(browser, "deployer@example.com")
    # Fleet view: every server in skiapush.conf.
    page.goto(server.url + "/")
    assert page.locator("tbody.server").count() == 3
    assert page.locator("header .who").inner_text().startswith("deployer@example.com")
    # Filter by server, kept in the URL (htmx swaps the table and pushes the URL).
    page.fill("input[name=server]", "web-2")
    page.wait_for_url(re.compile(r"server=web-2"))
    page.wait_for_function("document.querySelectorAll('tbody.server').length == 1")
    assert page.locator("tbody.server").get_attribute("data-server") == "web-2"
    page.goto(server.url + "/?server=web-1")
    assert page.locator("tbody.server").count() == 1

    # Picker: releases newest first; choose the third newest.
    page.click("tbody[data-server=web-1] tr[data-app=hello] td.app a")
    page.wait_for_url(re.compile(r"/servers/web-1/apps/hello$"))
    names = page.locator("tr.release").evaluate_all("rows => rows.map(r => r.dataset.release)")
    assert names == [r.name for r in reversed(rels)]
    page.click(f"tr.release[data-release='{rels[1].name}'] a.deploy")
    # Confirmation shows what will change; nothing is deployed until confirmed.
    page.wait_for_url(re.compile(r"/confirm\?release="))
    assert "Deploy hello to web-1?" in page.inner_text("h1")
    assert "nothing" in page.inner_text(".change") and rels[1].release.short_hash in page.inner_text(".change")
    assert "not the newest release" in page.inner_text(".consequences")
    page.fill("input[name=note]", "first deploy")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))
    assert f"Requested: hello {rels[1].release.short_hash} on web-1" in page.inner_text("#flash")
    assert page.locator("tr.release.current").get_attribute("data-release") == rels[1].name

    # Deploy the newest one too.
    page.click(f"tr.release[data-release='{rels[3].name}'] a.deploy")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))
    assert page.locator("tr.release.current").get_attribute("data-release") == rels[3].name

    # Roll back: to what it ran before (release 2), by the history.
    page.click("#rollback")
    page.wait_for_url(re.compile(r"/rollback$"))
    assert rels[1].release.short_hash in page.inner_text(".change")
    assert "deployer@example.com changed it" in page.inner_text("main")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))
    assert f"Requested: hello {rels[1].release.short_hash} on web-1 (roll back" in page.inner_text("#flash")
    assert page.locator("tr.release.current").get_attribute("data-release") == rels[1].name

    # History: who, when, from -> to, note.
    page.click("header nav a:text('History')")
    page.wait_for_url(re.compile(r"/history$"))
    rows = page.locator("tr.record")
    assert rows.count() == 3
    assert [rows.nth(i).locator(".action").inner_text() for i in range(3)] == ["rollback", "deploy", "deploy"]
    assert "deployer@example.com" in rows.nth(0).inner_text()
    assert "first deploy" in rows.nth(2).inner_text()
    page.select_option("select[name=server]", "web-2")
    page.wait_for_url(re.compile(r"server=web-2"))
    page.wait_for_function("document.querySelectorAll('tr.record').length == 0")
    page.context.close()


def test_conflict_shows_what_changed_and_retry_works(browser, world):
    bucket, rels, conf, server = world
    page = page_as(browser, "deployer@example.com")
    page.goto(f"{server.url}/servers/web-1/apps/hello/confirm?release={rels[2].name}")
    # Meanwhile someone deploys straight to the bucket with the CLI.
    ctx = fleet.Context.open(bucket, load(conf), via="cli")
    fleet.deploy(ctx, "mallory@example.com", "web-1", "hello", rels[0].name, note="sneaky")
    page.click("#confirm")
    assert "Changed meanwhile" in page.inner_text("h1")
    text = page.inner_text("main")
    assert "mallory@example.com" in text and "sneaky" in text and rels[0].release.short_hash in text
    page.click("#retry")
    page.wait_for_url(re.compile(r"done="))
    assert page.locator("tr.release.current").get_attribute("data-release") == rels[2].name
    page.context.close()


def test_unit_restart_and_viewer_sees_no_buttons(browser, world):
    bucket, rels, conf, server = world
    page = page_as(browser, "deployer@example.com")
    page.goto(f"{server.url}/servers/web-1/apps/hello/confirm?release={rels[0].name}")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))
    page.goto(f"{server.url}/servers/web-1")
    page.click("tr[data-unit='hello.service'] a:text('restart…')")
    assert "Restart hello.service on web-1?" in page.inner_text("h1")  # a restart asks first
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/servers/web-1\?done="))
    assert "restart" in page.inner_text("#flash") and "hello.service" in page.inner_text("#flash")
    assert "pending" in page.inner_text("main")
    page.context.close()

    viewer = page_as(browser, "viewer@example.com")
    viewer.goto(f"{server.url}/servers/web-1/apps/hello")
    assert viewer.locator("a.deploy").count() == 0 and viewer.locator("#rollback").count() == 0
    viewer.goto(f"{server.url}/servers/web-1")
    assert viewer.locator("a:text('restart…')").count() == 0
    stranger = page_as(browser, "stranger@example.net")
    response = stranger.goto(server.url + "/")
    assert response.status == 403 and "may not view" in stranger.inner_text("#error")
    viewer.context.close()
    stranger.context.close()


def test_fleet_view_updates_live_when_an_agent_reports(browser, world):
    bucket, rels, conf, server = world
    page = page_as(browser, "viewer@example.com")
    page.goto(server.url + "/?server=web-1")
    row = "tbody[data-server=web-1] tr[data-app=hello]"
    assert page.locator(f"{row} .marks").inner_text().strip() == ""
    # The agent on web-1 reports a failure; the open page shows it without a reload.
    report(bucket, "web-1", {"hello": None, "pulld": None}, failed={"hello": "dpkg: error: postinst failed"})
    changes.record(bucket, changes.STATUS, "web-1")  # as pulld's Publisher does after a report with news
    page.wait_for_function(
        "document.querySelector(\"tbody[data-server=web-1] tr[data-app=hello] .marks\").innerText.includes('failed')",
        timeout=15_000)
    assert "postinst failed" in page.locator(f"{row} .marks").inner_text()
    assert page.url.endswith("/?server=web-1")  # still the same page, filter kept
