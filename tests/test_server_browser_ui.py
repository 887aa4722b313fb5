"""The web UI's everyday points in Chromium (issue 14, and issue 12's health column and
self-refreshing pages): relative times with the UTC time on hover, fleet rows with the
release's note and who deployed it, rollback only where possible and "roll back to this"
from the history, 404 pages, unit stop/restart confirmed and start only when not active,
the fleet on a 420 px window, the search box with its keys (and without JavaScript),
labels on inputs, and pages that follow the agent's reports without a reload.

One push server (a real `push serve` process, signed in through the simulated proxy as
tests/test_server_browser.py does) and one browser for the module; the tests run in order
on the same bucket. The live state here comes from agent reports written into the bucket;
tests/test_server_browser_live.py does the same with real agents.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from chromium import launched
from fleetdata import conf_text, make_release
from push import changes, fleet, status
from push.config import load
from push.server.pagetimes import relative
from push.store.local import LocalStore
from pushserver import PushServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]

RELATIVE = re.compile(r"^(just now|\d+ (s|min|h|days?) ago|in \d+ (s|min|h|days?)|\d{4}-\d\d-\d\d)$")


@pytest.fixture(scope="module")
def browser():
    with launched() as b:
        yield b


class World:
    def __init__(self, tmp) -> None:
        self.bucket = LocalStore(tmp / "bucket")
        self.rels = [make_release(self.bucket, "hello", n, note=f"hello change {n}\nwith details") for n in range(1, 4)]
        make_release(self.bucket, "pulld", 1)
        self.conf = tmp / "skiapush.conf"
        self.conf.write_text(conf_text())
        self.ctx = fleet.Context.open(self.bucket, load(self.conf), via="cli")
        fleet.deploy(self.ctx, "alice@example.com", "web-1", "hello", self.rels[0].name, note="first")
        fleet.deploy(self.ctx, "bob@example.com", "web-1", "hello", self.rels[1].name, note="second")
        fleet.deploy(self.ctx, "bob@example.com", "web-2", "hello", self.rels[1].name)
        self.agent("web-1", {"hello": self.rels[1].name}, units={"hello.service": "active",
                                                                "hello-worker.service": "inactive"})
        self.agent("web-2", {"hello": self.rels[1].name})
        self.server = PushServerProcess(str(tmp / "bucket"), self.conf, tmp / "serve.log",
                                        "--trusted-proxy", "127.0.0.1")

    def agent(self, server: str, installed: dict[str, str], *, units: dict[str, str] | None = None,
              **health: str | None) -> None:
        """Write `server`'s agent report (with `health` fields for every app), as pulld does."""
        st = status.AgentStatus(server=server, agent_version="test",
                                time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                                hostname=server, in_sync=True)
        for app, name in installed.items():
            st.apps[app] = status.AppStatus(desired=name, installed=name, units=units or {f"{app}.service": "active"},
                                            **{"health": "healthy", **health})
        status.write(self.bucket, st)
        changes.record(self.bucket, changes.STATUS, server)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("ui"))
    yield w
    w.server.stop()


def page_as(browser, email, width=1280, **options):
    context = browser.new_context(extra_http_headers={"X-Forwarded-Email": email},
                                  viewport={"width": width, "height": 900}, **options)
    page = context.new_page()
    page.set_default_timeout(10_000)
    return page


def test_times_are_relative_with_utc_on_hover_and_stay_so_when_the_page_refreshes(browser, world):
    page = page_as(browser, "viewer@example.com")
    page.goto(world.server.url + "/?server=web-1")
    times = page.locator("time.when")
    assert times.count() >= 3
    for i in range(times.count()):
        t = times.nth(i)
        assert RELATIVE.match(t.inner_text()), t.inner_text()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t.get_attribute("title"))
    # push.js words times as pagetimes.py does.
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for seconds in (0, 12, 60, 3599, 3600, 86400, 2 * 86400, -20, 40 * 86400):
        t = now - timedelta(seconds=seconds)
        js = page.evaluate("([t, now]) => window.pushRelative(Date.parse(t), Date.parse(now))",
                           [t.isoformat(), now.isoformat()])
        assert js == relative(t, now), seconds
    # The table refreshes itself (a new report); its times are still relative afterwards.
    world.agent("web-1", {"hello": world.rels[1].name}, units={"hello.service": "active",
                                                               "hello-worker.service": "inactive"})
    page.wait_for_function("document.querySelector('tbody[data-server=web-1] .seen time').textContent"
                           ".match(/just now|s ago/)", timeout=15_000)
    seen = page.locator("tbody[data-server=web-1] .seen time")
    assert RELATIVE.match(seen.inner_text()) and "UTC" in seen.get_attribute("title")
    page.context.close()


def test_fleet_rows_show_the_note_and_who_deployed_it(browser, world):
    page = page_as(browser, "viewer@example.com")
    page.goto(world.server.url + "/?server=web-1")
    desired = page.locator("tbody[data-server=web-1] tr[data-app=hello] td.desired")
    text = desired.inner_text()
    assert "hello change 2" in text and "with details" not in text  # the first line of the note
    assert "deployed by bob@example.com" in text
    assert page.locator("thead th").all_inner_texts()[:4] == ["App", "Desired", "Actual", "Health"]
    assert "healthy" in page.locator("tbody[data-server=web-1] tr[data-app=hello] td.health-cell").inner_text()
    page.context.close()


def test_rollback_only_where_possible_and_roll_back_to_this_from_the_history(browser, world):
    page = page_as(browser, "deployer@example.com")
    page.goto(world.server.url + "/servers/web-2/apps/hello")
    assert page.locator("#rollback").count() == 0  # its first release: nothing to roll back to
    page.goto(world.server.url + "/servers/web-1/apps/hello")
    assert page.locator("#rollback").count() == 1
    page.goto(world.server.url + "/servers/web-1")
    rows = page.locator("tr.record")
    assert rows.nth(0).locator("a.back-to").count() == 0  # what runs now
    rows.nth(1).locator("a.back-to").click()  # the deploy of release 1
    page.wait_for_url(re.compile(r"/servers/web-1/apps/hello/confirm\?release="))
    assert "Deploy hello to web-1?" in page.inner_text("h1")
    assert world.rels[0].release.short_hash in page.inner_text(".change")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))
    assert f"Requested: hello {world.rels[0].release.short_hash} on web-1" in page.inner_text("#flash")
    assert page.locator("tr.release.current").get_attribute("data-release") == world.rels[0].name
    page.context.close()


def test_unknown_pages_answer_404_in_the_sites_style(browser, world):
    page = page_as(browser, "viewer@example.com")
    for path in ("/nope", "/servers/nope", "/apps/nope", "/servers/web-1/apps/nope"):
        response = page.goto(world.server.url + path)
        assert response.status == 404, path
        assert page.inner_text("h1") == "Not found" and page.locator("header.top nav").count() == 1, path
    page.goto(world.server.url + "/apps/helo")
    assert page.locator("main a[href='/apps/hello']").count() == 1  # did you mean
    page.context.close()


def test_units_stop_asks_first_and_start_only_on_units_not_active(browser, world):
    page = page_as(browser, "deployer@example.com")
    page.goto(world.server.url + "/servers/web-1")
    active, inactive = "tr[data-unit='hello.service']", "tr[data-unit='hello-worker.service']"
    assert page.locator(f"{active} button:text('start')").count() == 0
    assert page.locator(f"{inactive} button:text('start')").count() == 1
    assert page.locator(f"{active} .ustate").inner_text() == "active"  # in words
    assert page.locator(f"{inactive} .ustate").inner_text() == "inactive"
    page.click(f"{active} a:text('stop…')")
    page.wait_for_url(re.compile(r"/units/hello.service/stop$"))
    assert "Stop hello.service on web-1?" in page.inner_text("h1")
    assert page.locator("#confirm").evaluate("b => b.tagName") == "BUTTON"
    page.click("text=Cancel")  # nothing asked of the agent
    page.wait_for_url(re.compile(r"/servers/web-1$"))
    assert page.locator("text=Unit requests").count() == 0
    page.click(f"{active} a:text('stop…')")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/servers/web-1\?done="))
    assert "Asked the agent to stop hello.service on web-1" in page.inner_text("#flash")
    page.context.close()


def test_the_fleet_fits_a_420_px_window(browser, world):
    page = page_as(browser, "deployer@example.com", width=420)
    for path in ("/", "/servers/web-1", "/apps/hello", "/servers/web-1/apps/hello", "/history"):
        page.goto(world.server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, (path, width)
    page.goto(world.server.url + "/")
    # Each cell says what it is (the header row is hidden on a narrow window).
    label = page.locator("tbody[data-server=web-1] tr[data-app=hello] td.health-cell")
    assert label.evaluate("td => getComputedStyle(td, '::before').content") == '"Health"'
    page.context.close()


def test_a_reason_naming_a_release_in_full_fits_a_420_px_window(browser, world):
    # A failed or stuck app's reason names releases in full (~90 characters, no spaces):
    # it wraps inside its cell instead of widening the page.
    name = world.rels[2].name
    world.agent("web-2", {"hello": world.rels[1].name}, health="unhealthy",
                health_detail=f"{name} was not healthy and was reverted to {world.rels[1].name}")
    try:
        page = page_as(browser, "deployer@example.com", width=420)
        for path in ("/", "/servers/web-2"):
            page.goto(world.server.url + path)
            page.wait_for_function(f"document.body.innerText.includes({name!r})", timeout=15_000)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 420, (path, width)
        page.context.close()
    finally:
        world.agent("web-2", {"hello": world.rels[1].name})


def test_the_search_box_filters_as_you_type_with_its_keys(browser, world):
    page = page_as(browser, "viewer@example.com")
    page.goto(world.server.url + "/history")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search-q"
    page.keyboard.type("web")
    page.wait_for_selector("#search-results a[href='/servers/web-2']")
    assert page.locator("#search-results a").all_inner_texts() == ["server web-1", "server web-2"]
    page.keyboard.type("-2")
    page.wait_for_function("document.querySelectorAll('#search-results a').length == 1")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "/servers/web-2"
    page.keyboard.press("Escape")
    assert page.input_value("#search-q") == "" and page.locator("#search-results a").count() == 0
    page.keyboard.press("/")
    page.keyboard.type("hel")
    page.wait_for_selector("#search-results a[href='/apps/hello']")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/apps/hello$"))
    page.context.close()

    # Without JavaScript the box is a form: Enter opens the page of matches.
    plain = page_as(browser, "viewer@example.com", java_script_enabled=False)
    plain.goto(world.server.url + "/")
    plain.fill("#search-q", "web")
    plain.press("#search-q", "Enter")
    plain.wait_for_url(re.compile(r"/search\?q=web"))
    assert plain.locator("main a[href='/servers/web-1']").count() == 1
    plain.context.close()


def test_every_input_has_a_label_and_changes_are_buttons(browser, world):
    page = page_as(browser, "admin@example.com")
    for path in ("/", "/servers/web-1", "/apps/hello", "/servers/web-1/apps/hello", "/history",
                 f"/servers/web-1/apps/hello/confirm?release={world.rels[2].name}",
                 "/servers/web-1/units/hello.service/stop"):
        page.goto(world.server.url + path)
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(i => !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map(i => i.name)""")
        assert unlabelled == [], (path, unlabelled)
        # Whatever changes the fleet is a form's button; links only navigate (to a confirmation).
        posts = page.evaluate("() => [...document.querySelectorAll('form[method=post]')]"
                              ".map(f => f.querySelectorAll('button[type=submit]').length)")
        assert all(n == 1 for n in posts), (path, posts)
    page.context.close()


def test_a_server_converging_within_its_deadline_is_in_progress_not_a_problem(browser, world):
    page = page_as(browser, "viewer@example.com")
    page.goto(world.server.url + "/?server=web-2")
    assert page.locator("tbody[data-server=web-2] .progress").count() == 0
    # A deploy made elsewhere (the CLI, straight to the bucket); web-2's agent has not acted yet.
    fleet.deploy(world.ctx, "carol@example.com", "web-2", "hello", world.rels[2].name)
    row = "tbody[data-server=web-2] tr[data-app=hello]"
    page.wait_for_selector(f"{row} .progress.p-converging", timeout=15_000)
    assert page.locator(f"{row} .progress").inner_text() == "in progress"
    assert "drift" not in page.locator(f"{row} .marks").inner_text()
    assert "has-problems" not in page.locator("tbody[data-server=web-2]").get_attribute("class")
    assert "1 in progress" in page.inner_text(".summary") and "with problems" not in page.inner_text(".summary")
    # Its agent installs it and judges it healthy: no longer in progress.
    world.agent("web-2", {"hello": world.rels[2].name})
    page.wait_for_selector(f"{row} .progress", state="detached", timeout=15_000)
    assert page.locator(f"{row} td.health-cell").inner_text().strip().endswith("healthy")
    page.context.close()


def test_server_and_app_pages_follow_the_agents_reports(browser, world):
    page = page_as(browser, "viewer@example.com")
    app_page = page.context.new_page()
    page.goto(world.server.url + "/servers/web-2")
    app_page.goto(world.server.url + "/apps/hello")
    row = "tr.app-row[data-app=hello] .health-cell"
    assert page.locator(row).inner_text().strip().endswith("healthy")
    # web-2's agent now judges hello unhealthy: both open pages show it, with its reason, unreloaded.
    world.agent("web-2", {"hello": world.rels[2].name}, health="unhealthy",
                health_detail="hello.service is failed\nhello: cannot bind :8080")
    page.wait_for_function(f"document.querySelector('{row}').innerText.includes('unhealthy')", timeout=15_000)
    assert "cannot bind :8080" in page.inner_text("tr.app-row[data-app=hello] .marks")
    app_row = "tr.app-row[data-server=web-2]"
    app_page.wait_for_function(f"document.querySelector('{app_row} .health-cell').innerText.includes('unhealthy')",
                               timeout=15_000)
    assert "cannot bind :8080" in app_page.inner_text(f"{app_row} pre.log")
    assert page.url.endswith("/servers/web-2") and app_page.url.endswith("/apps/hello")
    page.context.close()
