"""Debian's Chromium driven by Playwright, for the browser tests: where it is, the flags it
runs with here (headless, no sandbox as root, no traffic of its own), and one way to start it.

A missing Chromium fails the tests rather than skipping them: `scripts/test` installs it, so
its absence is a broken set-up, not a reason for a green run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = os.environ.get("PUSH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@contextmanager
def launched() -> Iterator[Any]:
    """A running Chromium (a Playwright `Browser`), closed on the way out."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is not installed: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
