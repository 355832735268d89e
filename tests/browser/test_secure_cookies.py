"""Chromium keeps and sends ``Secure`` ``__Host-`` cookies from plain http on 127.0.0.1.

``iap dev`` serves http://127.0.0.1 and seals its session in a ``__Host-`` cookie, which
must be ``Secure`` (RFC 6265bis §4.1.3.2). Browsers accept ``Secure`` cookies only from
secure contexts; Chromium counts loopback as a potentially trustworthy origin (W3C Secure
Contexts §3.2), so the cookie must survive there without TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

SET_COOKIE = "__Host-t=1; Path=/; Secure; HttpOnly; SameSite=Lax"


@dataclass
class CookieServer:
    url: str
    cookie_headers: list[str | None] = field(default_factory=list)


@pytest.fixture
async def cookie_server() -> AsyncIterator[CookieServer]:
    server = CookieServer("")

    async def set_cookie(request: web.Request) -> web.Response:
        server.cookie_headers.append(request.headers.get("Cookie"))
        return web.Response(text="set", headers={"Set-Cookie": SET_COOKIE})

    async def echo(request: web.Request) -> web.Response:
        server.cookie_headers.append(request.headers.get("Cookie"))
        return web.Response(text="echo")

    app = web.Application()
    app.router.add_get("/set", set_cookie)
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


async def test_secure_host_cookie_from_http_loopback_is_sent_back(
    page: Page, cookie_server: CookieServer
) -> None:
    await page.goto(f"{cookie_server.url}/set")
    await expect(page.locator("body")).to_have_text("set")
    await page.goto(f"{cookie_server.url}/echo")
    await expect(page.locator("body")).to_have_text("echo")

    assert cookie_server.cookie_headers == [None, "__Host-t=1"]
    [cookie] = await page.context.cookies()
    assert (cookie["name"], cookie["secure"], cookie["httpOnly"]) == ("__Host-t", True, True)
    assert cookie["sameSite"] == "Lax"
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: not visible to scripts
