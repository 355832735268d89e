"""Each page iap shows a person, in real Chromium (issue 13): the visible text and links are
asserted, and a screenshot of each is saved under the artefacts folder
(``$IAP_ARTEFACTS/browser`` or ``.artefacts/browser``; see docs/testing.md).

iap, the dev IdP and the test upstream run in this process (``tests.support.signin``); the
demo upstream's page runs under ``iap dev`` as a child process.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from iap.dev.idp import TENANT_A, USERS
from tests.conftest import free_port
from tests.support.browser import screenshot
from tests.support.process import IapProcess, start_iap
from tests.support.signin import SignInStack, http, stack

__all__ = ["http", "stack"]

AT_IDP = re.compile(r"http://127\.0\.0\.1:\d+/organizations/oauth2/v2\.0/authorize\?.*")


async def sign_in(page: Page, base: str, user: str, path: str = "/app/") -> None:
    await page.goto(f"{base}{path}")
    await page.wait_for_url(AT_IDP)
    await page.click(f"#user-{user}")
    await page.wait_for_url(f"{base}{path}")


async def test_the_403_page_names_the_user_and_offers_another_account(
    stack: SignInStack, page: Page
) -> None:
    base = stack.edge.url
    await sign_in(page, base, "bob")
    await page.goto(f"{base}/admin/panel")
    await expect(page.locator("h1")).to_have_text("Access denied")
    await expect(page.locator("#viewer")).to_have_text("Bob Staff")
    await expect(page.locator("#viewer-email")).to_have_text("bob@contoso.example")
    await expect(page.locator("#message")).to_have_text(
        "Your account does not have access to this page."
    )
    await expect(page.locator("#sign-out")).to_have_attribute("href", "/.iap/logout")
    await expect(page.locator("#correlation-id")).not_to_be_empty()
    await screenshot(page, "403-access-denied")

    await page.click("#switch-account")  # Sign in as someone else
    await page.wait_for_url(re.compile(r".*/authorize\?.*prompt=select_account.*"))
    await page.click("#user-alice")
    await page.wait_for_url(f"{base}/admin/panel")  # the page asked for, now allowed


async def test_the_404_page_names_who_is_signed_in(stack: SignInStack, page: Page) -> None:
    base = stack.edge.url
    await sign_in(page, base, "bob")
    answer = await page.goto(f"{base}/.iap/nothing-here")
    assert answer is not None
    assert answer.status == 404
    await expect(page.locator("h1")).to_have_text("Not found")
    await expect(page.locator("#viewer")).to_have_text("Bob Staff")
    await expect(page.locator("#message")).to_have_text("There is nothing at this address.")
    await expect(page.locator("#sign-out")).to_have_attribute("href", "/.iap/logout")
    await screenshot(page, "404-not-found-signed-in")


async def test_the_401_page_of_a_browser_links_to_sign_in_and_back(
    stack: SignInStack, page: Page
) -> None:
    base = stack.edge.url
    await page.goto(f"{base}/public/")
    # A form POST to a protected route: not redirected (a POST), so the page says why.
    await page.evaluate(
        """() => { const f = document.createElement('form'); f.method = 'post';
        f.action = '/app/form?step=2'; document.body.appendChild(f); f.submit(); }"""
    )
    await expect(page.locator("h1")).to_have_text("Sign-in required")
    await expect(page.locator("#message")).to_have_text("You need to sign in to see this page.")
    await expect(page.locator("#viewer")).to_have_count(0)
    await screenshot(page, "401-sign-in-required")
    await page.click("#sign-in")
    await page.wait_for_url(AT_IDP)
    await page.click("#user-alice")
    await page.wait_for_url(f"{base}/app/form?step=2")


async def test_the_user_page_shows_who_iap_sees(stack: SignInStack, page: Page) -> None:
    base = stack.edge.url
    alice = USERS["alice"]
    await page.goto(f"{base}/.iap/")  # anonymous: sent to sign in, and back
    await page.wait_for_url(AT_IDP)
    await page.click("#user-alice")
    await page.wait_for_url(f"{base}/.iap/")
    await expect(page.locator("h1")).to_have_text("Your identity")
    await expect(page.locator("#name")).to_have_text("Alice Admin")
    await expect(page.locator("#email")).to_have_text(alice.email)
    await expect(page.locator("#tenant")).to_have_text(TENANT_A)
    await expect(page.locator("#roles")).to_have_text("admin")
    await expect(page.locator("#session-age")).to_contain_text("ago")
    await expect(page.locator("#session-expiry")).to_have_text(
        re.compile(r"^\S+ \S+ UTC \(in \d+ h \d+ min\)$")
    )
    await expect(page.locator("#routes li")).to_have_text(
        ["/app/ (app)", "/admin/ (admin)", "/ (public)"]
    )
    await expect(page.locator("#sign-out")).to_be_visible()
    await screenshot(page, "user-page")


async def test_sign_out_ends_on_the_signed_out_page(stack: SignInStack, page: Page) -> None:
    base = stack.edge.url
    await sign_in(page, base, "alice", "/.iap/")
    await page.click("#sign-out")  # via the IdP's logout, back to iap
    await page.wait_for_url(f"{base}/.iap/signed-out")
    await expect(page.locator("h1")).to_have_text("You are signed out")
    await expect(page.locator("#viewer")).to_have_count(0)
    await screenshot(page, "signed-out")
    await page.click("#sign-in-again")
    await page.wait_for_url(AT_IDP)


async def test_a_refused_tenant_says_so_and_offers_no_retry(stack: SignInStack, page: Page) -> None:
    await page.goto(f"{stack.edge.url}/app/")
    await page.wait_for_url(AT_IDP)
    await page.click("#user-eve")
    await expect(page.locator("h1")).to_have_text("Organisation not allowed")
    await expect(page.locator("#message")).to_have_text(
        "Your organisation is not allowed here; ask the application owner."
    )
    await expect(page.locator("#retry")).to_have_count(0)
    await screenshot(page, "sign-in-tenant-not-allowed")


async def test_an_unknown_login_state_offers_a_retry(stack: SignInStack, page: Page) -> None:
    base = stack.edge.url
    await page.goto(f"{base}/.iap/callback?code=stale&state=no-such-login")
    await expect(page.locator("h1")).to_have_text("Sign-in timed out")
    await expect(page.locator("#retry")).to_have_text("Try again")
    await screenshot(page, "sign-in-timed-out")
    await page.click("#retry")
    await page.wait_for_url(AT_IDP)


async def test_an_idp_error_shows_its_code(stack: SignInStack, page: Page) -> None:
    base = stack.edge.url
    await page.goto(f"{base}/app/")
    await page.wait_for_url(AT_IDP)
    state = re.search(r"[?&]state=([^&]+)", page.url)
    assert state is not None
    await page.goto(
        f"{base}/.iap/callback?error=access_denied&error_description=AADSTS65004&state={state[1]}"
    )
    await expect(page.locator("h1")).to_have_text("Sign-in refused by the identity provider")
    await expect(page.locator("#idp-error")).to_have_text("access_denied")
    await expect(page.locator("body")).not_to_contain_text("AADSTS65004")
    await screenshot(page, "sign-in-idp-error")


async def test_reloading_the_callback_while_signed_in_goes_on(
    stack: SignInStack, page: Page
) -> None:
    base = stack.edge.url
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/.iap/callback" in r.url else None)
    await sign_in(page, base, "alice", "/app/reports")
    await page.goto(callbacks[0])  # as a reload, or Back, would
    await page.wait_for_url(f"{base}/app/reports")
    assert stack.idp.idp.code_grants == 1  # nothing was exchanged twice


@pytest.fixture
async def iap_dev() -> AsyncIterator[IapProcess]:
    iap = await start_iap("dev", "--port", str(free_port()), ready_marker="iap dev ready: ")
    try:
        yield iap
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


async def test_the_demo_upstream_shows_the_minted_tokens_claims(
    iap_dev: IapProcess, page: Page
) -> None:
    base = iap_dev.public_url
    await sign_in(page, base, "alice", "/orders/1")
    await expect(page.locator("#claim-name")).to_have_text("Alice Admin")
    await expect(page.locator("#claim-email")).to_have_text(USERS["alice"].email)
    await expect(page.locator("#claim-roles")).to_have_text("admin")
    await expect(page.locator("#raw-token")).to_contain_text("eyJ")
    await expect(page.locator("body")).to_contain_text("without verifying its signature")
    await screenshot(page, "demo-upstream")
    await page.click("#sign-out")
    await page.wait_for_url(f"{base}/.iap/signed-out")


async def test_the_pages_fit_a_phone_screen(stack: SignInStack, browser: Browser) -> None:
    context = await browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    try:
        page = await context.new_page()
        base = stack.edge.url
        await sign_in(page, base, "olivia", "/.iap/")  # 150 group ids: long values wrap
        await expect(page.locator("h1")).to_have_text("Your identity")
        for path, name in [("/.iap/", "phone-user-page"), ("/admin/", "phone-403")]:
            await page.goto(f"{base}{path}")
            # The viewport meta makes the layout as wide as the phone (without it a mobile
            # browser lays out 980 px and shrinks), and nothing is wider than that.
            width, scroll = await page.evaluate(
                "() => [window.innerWidth, document.documentElement.scrollWidth]"
            )
            assert (width, scroll) == (360, 360), path
            await screenshot(page, name)
    finally:
        await context.close()
