"""Real Chromium for the browser tests: the Debian package `chromium`, driven by Playwright.

Playwright's own browser download (``playwright install``) is never used: the only network
the project may rely on is PyPI, Debian and npm, so the tests launch the system binary
through ``executable_path``. Without the binary a test skips with a reason naming the Debian
package; under ``CI=true`` nothing may skip, so it fails instead (as for redis-server).

Each test gets its own Playwright driver and browser on its own event loop; see
``tests/browser/conftest.py`` for why the browser is not shared across the session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM_PACKAGE = "chromium"
#: Debian names the binary ``chromium``; Ubuntu's transitional package ``chromium-browser``.
CHROMIUM_BINARIES = ("chromium", "chromium-browser")
#: Containers: no user namespaces for the sandbox, no GPU, a small /dev/shm, and no
#: background requests (component updates, safe browsing) leaving the machine.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
)


def chromium_executable() -> str:
    """The path of the system Chromium; skips the test when it is missing, but fails under CI."""
    for name in CHROMIUM_BINARIES:
        path = shutil.which(name)
        if path is not None:
            return path
    reason = f"chromium not found (install the Debian package `{CHROMIUM_PACKAGE}`)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@asynccontextmanager
async def running_chromium() -> AsyncIterator[Browser]:
    """Headless system Chromium under a Playwright driver bound to the running event loop."""
    executable = chromium_executable()  # skip before starting the driver process
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def artefacts_dir() -> Path:
    """Where browser tests save screenshots: ``$IAP_ARTEFACTS/browser`` when set, else
    ``<repo>/.artefacts/browser`` (git-ignored)."""
    base = os.environ.get("IAP_ARTEFACTS")
    root = Path(base) if base else Path(__file__).resolve().parents[2] / ".artefacts"
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of ``page`` saved as ``<artefacts>/<name>.png``; returns its path."""
    path = artefacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG"), path
    return path
