"""The ``iap dev`` demo upstream (iap/dev/echo.py) over a real socket: iap's header sizes,
the minted token's claims beside the raw token, a sign-out link (issue 13)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from iap.config import Limits
from iap.dev.echo import echo_app


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("size", [8_200, 20_000, Limits().max_header_bytes - 64])
async def test_headers_as_large_as_iap_forwards_are_accepted(echo_url: str, size: int) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{echo_url}/big", headers={"X-Big": "b" * size}) as answer:
            body = await answer.json()
    assert answer.status == 200
    assert dict(body["headers"])["X-Big"] == "b" * size


async def test_the_page_shows_the_tokens_claims_unverified_and_the_raw_token(
    echo_url: str,
) -> None:
    claims = {
        "name": "Alice <Admin>",
        "email": "alice@contoso.example",
        "roles": ["admin", "staff"],
        "aud": "app",
        "exp": 1_900_000_000,
        "sub": "t:" + "o" * 300,  # a long value: the page wraps it
    }
    header = b64(json.dumps({"alg": "ES256"}).encode())
    token = f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'sig')}"
    headers = {"Accept": "text/html", "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{echo_url}/app/", headers=headers) as answer:
            page = await answer.text()
    assert answer.status == 200
    assert "<td id='claim-name'>Alice &lt;Admin&gt;</td>" in page
    assert "<td id='claim-roles'>admin, staff</td>" in page
    assert "<td id='claim-aud'>app</td>" in page
    assert "<td id='claim-exp'>1900000000 (2030-03-17 17:46:40 UTC)</td>" in page
    assert "without verifying its signature" in page
    assert f'<pre id="raw-token">{token}</pre>' in page
    assert '<a id="sign-out" href="/.iap/logout">Sign out</a>' in page
    assert "overflow-wrap:anywhere" in page


async def test_a_public_request_has_no_token_to_show(echo_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{echo_url}/public/", headers={"Accept": "text/html"}) as answer:
            page = await answer.text()
    assert "no token (public route)" in page
    assert '<pre id="raw-token">none</pre>' in page
