"""A real headless Chromium (Debian's `chromium`, driven by Playwright) and a platform server."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# The fake engine and the store-backed server of the API tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from web_support import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402


@pytest.fixture(scope="session")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if os.environ.get("CI"):
            pytest.fail("CI must run the page tests: apt-get install -y chromium")
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                               args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors
    yield pg
    ctx.close()

