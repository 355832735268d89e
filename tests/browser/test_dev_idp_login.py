"""Signing in at the dev IdP in real Chromium: the authorize page, a click, the callback.

A tiny relying party on 127.0.0.1 serves the redirect URI and records what the browser
delivers to it, by query redirect (GET) or auto-submitted ``form_post`` (POST); the code it
received is then redeemed at the token endpoint with the PKCE verifier.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Page, expect
from yarl import URL

from iap.dev.idp import DEMO_USERS, TENANT_A, USERS, RunningDevIdP, pkce_challenge, start_dev_idp

CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "dev-secret"
SCOPES = "openid profile email offline_access"


@dataclass(frozen=True)
class Delivery:
    """One request the browser made to the redirect URI."""

    method: str
    params: dict[str, str]


@dataclass
class RelyingParty:
    redirect_uri: str
    deliveries: list[Delivery] = field(default_factory=list)


@dataclass(frozen=True)
class Login:
    """What the relying party keeps between the authorize request and the callback."""

    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))


CALLBACK_PAGE = "<!doctype html><title>Callback</title><h1>signed in</h1>"


@pytest.fixture
async def relying_party() -> AsyncIterator[RelyingParty]:
    party = RelyingParty("")

    async def callback(request: web.Request) -> web.Response:
        values = request.query if request.method == "GET" else await request.post()
        params = {name: str(value) for name, value in values.items()}
        party.deliveries.append(Delivery(request.method, params))
        return web.Response(text=CALLBACK_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("GET", "/callback", callback)
    app.router.add_route("POST", "/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    party.redirect_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/callback"
    yield party
    await runner.cleanup()


@pytest.fixture
async def idp(relying_party: RelyingParty) -> AsyncIterator[RunningDevIdP]:
    running = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[relying_party.redirect_uri],
    )
    yield running
    await running.stop()


def authorize_url(idp: RunningDevIdP, redirect_uri: str, login: Login, response_mode: str) -> str:
    endpoint = URL(f"{idp.url}/{TENANT_A}/oauth2/v2.0/authorize")
    return str(
        endpoint.with_query(
            client_id=CLIENT_ID,
            redirect_uri=redirect_uri,
            response_type="code",
            scope=SCOPES,
            state=login.state,
            nonce=login.nonce,
            code_challenge=pkce_challenge(login.verifier),
            code_challenge_method="S256",
            response_mode=response_mode,
        )
    )


async def redeem(idp: RunningDevIdP, redirect_uri: str, code: str, verifier: str) -> str:
    """The ID token for ``code`` (client_secret_post and the PKCE verifier)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code_verifier": verifier,
    }
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{idp.url}/{TENANT_A}/oauth2/v2.0/token", data=form) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
    return str(body["id_token"])


@pytest.mark.parametrize(("response_mode", "method"), [("query", "GET"), ("form_post", "POST")])
async def test_alice_signs_in_with_chromium(
    page: Page, idp: RunningDevIdP, relying_party: RelyingParty, response_mode: str, method: str
) -> None:
    login = Login()
    redirect_uri = relying_party.redirect_uri
    await page.goto(authorize_url(idp, redirect_uri, login, response_mode))

    await expect(page).to_have_title("Sign in - iap dev IdP")
    tenant_users = [user for user in DEMO_USERS if user.tid == TENANT_A]
    await expect(page.locator("button[name=user]")).to_have_count(len(tenant_users))
    for user in tenant_users:
        await expect(page.locator(f"#user-{user.key}")).to_contain_text(user.email)

    await page.locator("#user-alice").click()
    await page.wait_for_url(lambda url: str(URL(url).with_query(None)) == redirect_uri)
    await expect(page.locator("h1")).to_have_text("signed in")

    [delivery] = relying_party.deliveries
    assert delivery.method == method
    assert delivery.params["state"] == login.state
    if response_mode == "query":  # the address bar carries the same state and code
        assert URL(page.url).query["state"] == login.state
        assert URL(page.url).query["code"] == delivery.params["code"]
    claims = idp.idp.verify(
        await redeem(idp, redirect_uri, delivery.params["code"], login.verifier)
    )
    alice = USERS["alice"]
    assert claims["aud"] == CLIENT_ID
    assert claims["nonce"] == login.nonce
    assert (claims["tid"], claims["oid"]) == (alice.tid, alice.oid)
    assert claims["preferred_username"] == alice.email
