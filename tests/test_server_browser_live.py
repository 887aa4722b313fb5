"""The UI tells the truth while things change (issue 12.6), in Chromium, against a real
`push serve` and a real pulld installing real Debian packages into a sandbox root.

After a confirmed deploy the banner says what was requested and follows it to "installed,
healthy"; a release whose unit crashes is reverted by the agent, and the banner, the
release picker and the app page show it reverted, with its reason and the unit's log lines.
A unit restart is followed to "done", a removal to "removed". One fleet (push server and agent) and one browser for the
module; the tests run in order.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from agentpkgs import make_release
from chromium import launched
from push.demo.fleet import LocalFleet, http_get
from push.health import HealthCheck
from push.store.local import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(240)]

CRASH = """\
#!/bin/sh
echo "hello 1.3: cannot open /var/lib/hello/db: no such file"
exit 1
"""
NO_RESTART = textwrap.dedent("""\
    [Service]
    ExecStart=/usr/local/bin/hello
    EnvironmentFile=-/etc/default/hello
    """)


@pytest.fixture(scope="module")
def browser():
    with launched() as b:
        yield b


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """hello 1.1 and 1.2 (healthy once their unit has run 0.3 s), 1.3 (its unit exits 1; must be
    healthy within 3 s); a push server and s1's agent."""
    tmp = tmp_path_factory.mktemp("live")
    bucket = LocalStore(tmp / "bucket")
    rels = [make_release(bucket, tmp, "hello", 1), make_release(bucket, tmp, "hello", 2),
            make_release(bucket, tmp, "hello", 3, script=CRASH, unit=NO_RESTART, health=HealthCheck(within=3))]
    config = tmp / "skiapush.conf"
    config.write_text('[servers.s1]\nappNames = ["hello"]\n')
    fleet = LocalFleet(workdir=tmp / "fleet", store=f"file://{tmp / 'bucket'}", config=config, servers=["s1"],
                       agent_args=["--interval", "30", "--backoff", "1", "--settle", "0.3"])
    try:
        fleet.start_server()
        fleet.start_agent("s1")
        # Its first report seen by the push server (before it, a deploy is rightly "stuck": no agent).
        fleet.wait_until(lambda: json.loads(http_get(f"{fleet.url}/api/v1/servers/s1"))["last_seen"], timeout=30,
                         what="s1's first report in the push server's view")
        yield fleet, rels
    finally:
        fleet.stop()


def deploy_in_the_browser(page, url: str, release) -> None:
    page.goto(f"{url}/servers/s1/apps/hello")
    page.click(f"tr.release[data-release='{release.name}'] a.deploy")
    page.wait_for_url(re.compile(r"/confirm\?release="))
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done="))


def settled(page, phase: str, timeout: float) -> None:
    """Wait until the banner, swapped in by its own polling, shows `phase` (f-done, f-failed)."""
    try:
        page.wait_for_function(f"""() => {{ const f = document.querySelectorAll('#flash');
            return f.length == 1 && f[0].classList.contains('{phase}')
                && !f[0].classList.contains('htmx-settling'); }}""", timeout=timeout * 1000)
    except Exception as e:
        raise AssertionError(f"the banner never showed {phase}: {page.inner_text('#flash')!r}") from e


def test_the_banner_follows_a_deploy_to_installed_and_healthy(browser, world):
    fleet, rels = world
    page = browser.new_page()
    page.set_default_timeout(10_000)
    deploy_in_the_browser(page, fleet.url, rels[0])
    banner = page.locator("#flash")
    assert f"Requested: hello {rels[0].release.short_hash} on s1" in banner.inner_text()
    # When the page comes back the agent has not installed it yet (dpkg, then 0.3 s of a
    # running unit): the banner says it is on its way, not that it is done.
    assert re.search(r"\bf-(requested|progressing)\b", banner.get_attribute("class"))
    settled(page, "f-done", 60)
    assert page.inner_text("#outcome") == "installed, healthy"
    assert banner.get_attribute("hx-trigger") is None  # it stops polling
    # The page around it followed too: actual = desired, healthy, without a reload.
    page.wait_for_function("document.querySelector('.now .health').innerText.includes('healthy')", timeout=15_000)
    assert "done=" in page.url
    page.close()


def test_a_crashing_release_is_shown_reverted_with_its_reason(browser, world):
    fleet, rels = world
    page = browser.new_page()
    page.set_default_timeout(10_000)
    deploy_in_the_browser(page, fleet.url, rels[2])
    assert f"Requested: hello {rels[2].release.short_hash} on s1" in page.inner_text("#flash")
    settled(page, "f-failed", 90)
    outcome = page.inner_text("#outcome")
    assert outcome.startswith("reverted by the agent to hello") and rels[0].release.short_hash in outcome
    detail = page.inner_text("#outcome-detail")
    assert "hello.service" in detail and "cannot open /var/lib/hello/db" in detail  # the unit's log lines
    # The picker (refreshing itself) shows it reverted, in words, with the log lines.
    page.wait_for_function("document.querySelector('.now .health').innerText.includes('unhealthy')", timeout=15_000)
    now = page.inner_text(".now")
    assert "reverted" in now and "Reverted from" in now and "cannot open /var/lib/hello/db" in now
    page.goto(f"{fleet.url}/apps/hello")
    row = page.locator("tr.app-row[data-server=s1]")
    assert "unhealthy" in row.locator(".health-cell").inner_text()
    assert "cannot open /var/lib/hello/db" in row.locator("pre.log").inner_text()
    page.goto(f"{fleet.url}/?server=s1")
    assert "Reverted from" in page.inner_text("tbody[data-server=s1] tr[data-app=hello] .marks")
    page.close()


def test_the_banner_follows_a_unit_restart_to_done(browser, world):
    fleet, rels = world
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{fleet.url}/servers/s1")
    page.click("tr[data-unit='hello.service'] a:text('restart…')")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/servers/s1\?done="))
    assert "Asked the agent to restart hello.service on s1" in page.inner_text("#flash")
    settled(page, "f-done", 60)
    assert page.inner_text("#outcome") == "done (restart)"
    page.close()


def test_the_banner_follows_a_removal_to_removed(browser, world):
    fleet, rels = world
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{fleet.url}/servers/s1/apps/hello")
    page.click("text=Remove…")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/servers/s1\?done="))
    assert "Requested: remove hello from s1" in page.inner_text("#flash")
    settled(page, "f-done", 60)
    assert page.inner_text("#outcome") == "removed"
    page.close()
