"""Issue 3 acceptance in real Chromium, through the ``iap dev`` wiring (a real child process):
alice signs in, lands on the original ``rd`` path, sees her identity at ``/.iap/userinfo``,
signs out, and is sent to login again on the next protected request.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from iap.dev.idp import USERS
from tests.support.process import IapProcess, start_iap_dev

SIGN_IN_PAGE = re.compile(r"http://127\.0\.0\.1:\d+/organizations/oauth2/v2\.0/authorize\?.*")


@pytest.fixture
async def iap_dev() -> AsyncIterator[IapProcess]:
    iap = await start_iap_dev()
    try:
        yield iap
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


async def test_alice_signs_in_sees_herself_signs_out_and_must_sign_in_again(
    iap_dev: IapProcess, page: Page
) -> None:
    base = iap_dev.public_url
    alice = USERS["alice"]

    await page.goto(f"{base}/orders/42?view=full")
    await page.wait_for_url(SIGN_IN_PAGE)  # via /.iap/login?rd=/orders/42?view=full
    await page.click("#user-alice")

    await page.wait_for_url(f"{base}/orders/42?view=full")
    await expect(page.locator("#subject")).to_have_text(f"{alice.tid}:{alice.oid}")

    await page.goto(f"{base}/.iap/userinfo")
    identity = json.loads(await page.locator("body").inner_text())
    assert identity["sub"] == f"{alice.tid}:{alice.oid}"
    assert identity["email"] == alice.email
    assert identity["roles"] == ["admin"]
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["__Host-iap"]
    assert session["httpOnly"]
    assert session["secure"]
    assert session["sameSite"] == "Lax"

    await page.goto(f"{base}/.iap/logout")
    # The IdP ends its session and sends the browser back to iap's signed-out page.
    await page.wait_for_url(f"{base}/.iap/signed-out")
    await expect(page.locator("h1")).to_have_text("You are signed out")
    assert "__Host-iap" not in {c["name"] for c in await page.context.cookies()}

    await page.goto(f"{base}/orders/43")
    await page.wait_for_url(SIGN_IN_PAGE)
    await expect(page.locator("#user-alice")).to_be_visible()
