"""A real headless Chromium for the console tests (Debian's `chromium` package, driven by
Playwright for Python through `executable_path`: no browser download). Left out of the
default run by the `browser` marker; run them with

    ./dev.sh test tests/browser -m browser

which installs Playwright (the `browser` extra) and Chromium (apt-get) when missing.
RABBITMESH_TEST_CHROMIUM names another Chromium binary."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest


def chromium_path() -> str:
    given = os.environ.get("RABBITMESH_TEST_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium found: `apt-get install chromium` (./dev.sh test -m browser does it), "
        "or set RABBITMESH_TEST_CHROMIUM"
    )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[browser]' (./dev.sh does it)")
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=chromium_path(),
            # root in CI containers: Chromium's sandbox needs user namespaces it may not get.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            await b.close()
