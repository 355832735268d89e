"""Browser fixtures: a headless system Chromium per test and a fresh context per page.

Event loop: pytest-asyncio gives every test and every async fixture its own function-scoped
loop (``asyncio_default_fixture_loop_scope = "function"``), and Playwright's async API binds
its driver connection to the loop that started it. A session-scoped browser would need a
session-scoped loop for every browser test *and* for every async fixture such a test uses,
including the loopback servers of ``tests/conftest.py`` (``upstream``, ``start_edge``,
``edge``), which would then be started on a loop that is not running during the test. So the
driver and the browser live as long as one test, on that test's loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page

from tests.support.browser import running_chromium


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless system Chromium for one test; skips (fails under CI) without `chromium`."""
    async with running_chromium() as chromium:
        yield chromium


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh browser context: no cookies or storage from anywhere else."""
    context = await browser.new_context()
    try:
        yield await context.new_page()
    finally:
        await context.close()
