"""Discovery and the per-tenant JWKS cache against the dev IdP on loopback (SPEC §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from iap.adapters.idp import Discovery, IdpUnavailable, JwksCache, new_session, require_https
from iap.dev.idp import TENANT_A, TENANT_B, USERS, RunningDevIdP, start_dev_idp
from iap.domain.idtoken import InvalidIdToken, validate

CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"


@dataclass
class FakeClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def idp() -> AsyncIterator[RunningDevIdP]:
    running = await start_dev_idp(
        client_id=CLIENT_ID, client_secret="s", redirect_uris=["http://127.0.0.1:9/cb"]
    )
    yield running
    await running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def discovery(idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock) -> Discovery:
    return Discovery(session, idp.url, timeout=5, connect_timeout=2, clock=clock)


@pytest.fixture
def jwks(discovery: Discovery, clock: FakeClock) -> JwksCache:
    return JwksCache(discovery, clock=clock)


def kids(document: dict[str, object]) -> set[str]:
    keys = document["keys"]
    assert isinstance(keys, list)
    return {key["kid"] for key in keys}


async def test_discovery_is_fetched_once_and_cached(
    idp: RunningDevIdP, discovery: Discovery, clock: FakeClock
) -> None:
    first = await discovery.document(TENANT_A)
    clock.now += 59 * 60
    second = await discovery.document(TENANT_A)
    assert first == second
    assert first["jwks_uri"] == f"{idp.url}/{TENANT_A}/discovery/v2.0/keys"
    assert idp.idp.discovery_fetches == 1
    clock.now += 2 * 60  # refreshed hourly on use, like the JWKS
    await discovery.document(TENANT_A)
    assert idp.idp.discovery_fetches == 2


async def test_jwks_is_cached(idp: RunningDevIdP, jwks: JwksCache, clock: FakeClock) -> None:
    first = await jwks.keys(TENANT_A)
    assert kids(first) == {idp.idp.signing_kid}
    clock.now += 59 * 60
    assert await jwks.keys(TENANT_A) == first
    assert idp.idp.jwks_fetches == 1


async def test_jwks_refreshes_hourly_on_access(
    idp: RunningDevIdP, jwks: JwksCache, clock: FakeClock
) -> None:
    await jwks.keys(TENANT_A)
    new_kid = idp.idp.rotate()
    clock.now += 3601
    assert new_kid in kids(await jwks.keys(TENANT_A))
    assert idp.idp.jwks_fetches == 2


async def test_unknown_kid_refetches_once_per_five_minutes(
    idp: RunningDevIdP, jwks: JwksCache, clock: FakeClock
) -> None:
    old = await jwks.keys(TENANT_A)
    new_kid = idp.idp.rotate()
    assert new_kid not in kids(old)

    refreshed = await jwks.for_unknown_kid(TENANT_A)
    assert refreshed is not None
    assert new_kid in kids(refreshed)
    assert idp.idp.jwks_fetches == 2
    assert new_kid in kids(await jwks.keys(TENANT_A))  # the cache holds the new keys
    assert idp.idp.jwks_fetches == 2

    clock.now += 299
    assert await jwks.for_unknown_kid(TENANT_A) is None
    assert idp.idp.jwks_fetches == 2

    clock.now += 2
    assert await jwks.for_unknown_kid(TENANT_A) is not None
    assert idp.idp.jwks_fetches == 3


async def test_unknown_kid_budget_is_per_tenant(idp: RunningDevIdP, jwks: JwksCache) -> None:
    assert await jwks.for_unknown_kid(TENANT_A) is not None
    assert await jwks.for_unknown_kid(TENANT_B) is not None
    assert await jwks.for_unknown_kid(TENANT_A) is None
    assert idp.idp.jwks_fetches == 2


async def test_concurrent_accesses_share_one_fetch(idp: RunningDevIdP, jwks: JwksCache) -> None:
    documents = await asyncio.gather(*(jwks.keys(TENANT_A) for _ in range(10)))
    assert {frozenset(kids(document)) for document in documents} == {
        frozenset({idp.idp.signing_kid})
    }
    assert idp.idp.jwks_fetches == 1


async def test_concurrent_unknown_kids_share_one_refetch(
    idp: RunningDevIdP, jwks: JwksCache
) -> None:
    await jwks.keys(TENANT_A)
    new_kid = idp.idp.rotate()
    refreshed = await asyncio.gather(*(jwks.for_unknown_kid(TENANT_A) for _ in range(10)))
    assert all(document is not None and new_kid in kids(document) for document in refreshed)
    assert idp.idp.jwks_fetches == 2
    assert await jwks.for_unknown_kid(TENANT_A) is None  # one refetch spent the budget


async def test_rotated_token_validates_after_one_refetch(
    idp: RunningDevIdP, jwks: JwksCache
) -> None:
    dev = idp.idp
    keys = await jwks.keys(TENANT_A)
    dev.rotate()
    claims = dev.id_token_claims(USERS["alice"], nonce="n-1", sid="sid-1")
    token = dev.sign({}, claims)

    def check(keys: dict[str, Any]) -> str:
        return validate(
            token,
            jwks=keys,
            issuer=dev.issuer(TENANT_A),
            client_id=CLIENT_ID,
            nonce="n-1",
            allowed_tenants={TENANT_A},
            now=int(time.time()),
        ).oid

    with pytest.raises(InvalidIdToken) as refused:
        check(keys)
    assert refused.value.reason == "kid"
    refreshed = await jwks.for_unknown_kid(TENANT_A)
    assert refreshed is not None
    assert check(refreshed) == USERS["alice"].oid


async def test_last_known_good_when_idp_is_down(
    idp: RunningDevIdP, discovery: Discovery, jwks: JwksCache, clock: FakeClock
) -> None:
    cached = await jwks.keys(TENANT_A)
    await idp.stop()

    clock.now += 2 * 3600  # due for refresh: the refresh fails, the old keys are served
    assert await jwks.keys(TENANT_A) == cached
    clock.now += 21 * 3600  # discovery too is past its refresh: last-known-good
    assert (await discovery.document(TENANT_A))["issuer"] == idp.idp.issuer(TENANT_A)

    clock.now += 2 * 3600
    with pytest.raises(IdpUnavailable):
        await jwks.keys(TENANT_A)  # older than 24 h: no longer served
    with pytest.raises(IdpUnavailable):
        await discovery.document(TENANT_A)  # nor is discovery (oidc.metadata_max_stale)
    with pytest.raises(IdpUnavailable):
        await jwks.keys(TENANT_B)  # never fetched
    with pytest.raises(IdpUnavailable):
        await discovery.document(TENANT_B)


async def test_unknown_kid_with_idp_down_raises_and_spends_budget(
    idp: RunningDevIdP, jwks: JwksCache
) -> None:
    await jwks.keys(TENANT_A)
    await idp.stop()
    with pytest.raises(IdpUnavailable):
        await jwks.for_unknown_kid(TENANT_A)
    assert await jwks.for_unknown_kid(TENANT_A) is None


def test_require_https() -> None:
    require_https("https://login.microsoftonline.com")
    require_https("http://127.0.0.1:1234")
    require_https("http://127.9.9.9/x")
    require_https("http://[::1]:8080/")
    require_https("http://localhost:8080/")
    for url in (
        "http://example.com",
        "http://127.0.0.1.example.com/",
        "ftp://127.0.0.1/",
        "https://user:pw@login.microsoftonline.com/",
        "/relative/path",
        "http://10.0.0.1/",
    ):
        with pytest.raises(ValueError):
            require_https(url)


async def test_refuses_sessions_that_would_send_cookies_or_trace_headers() -> None:
    async with aiohttp.ClientSession() as default:
        with pytest.raises(ValueError):
            Discovery(default, "https://login.microsoftonline.com")
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), headers={"traceparent": "00-x-y-01"}
    ) as traced:
        with pytest.raises(ValueError):
            Discovery(traced, "https://login.microsoftonline.com")
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), trace_configs=[aiohttp.TraceConfig()]
    ) as traced:
        with pytest.raises(ValueError):
            Discovery(traced, "https://login.microsoftonline.com")
    async with new_session() as session:
        with pytest.raises(ValueError):
            Discovery(session, "http://login.microsoftonline.com")


async def test_rejects_tenant_path_injection(discovery: Discovery, jwks: JwksCache) -> None:
    for tenant in ("../x", "a/b", "", "a?b"):
        with pytest.raises(ValueError):
            await discovery.document(tenant)
        with pytest.raises(ValueError):
            await jwks.keys(tenant)


@dataclass
class FakeIdp:
    url: str
    seen: list[dict[str, str]]


@pytest.fixture
async def fake_idp() -> AsyncIterator[FakeIdp]:
    """A hostile IdP: records headers, redirects, points jwks_uri at plain http."""
    seen: list[dict[str, str]] = []
    base = ""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        tenant = request.match_info["tenant"]
        if tenant == "redirect":
            raise web.HTTPFound(f"{base}/t/v2.0/.well-known/openid-configuration")
        if tenant == "plain":
            return web.json_response({"issuer": "x", "jwks_uri": "http://example.com/keys"})
        if tenant == "notjson":
            return web.Response(text="<html>")
        if tenant == "huge":
            return web.Response(body=b" " * (2 * 1024 * 1024), content_type="application/json")
        if tenant == "error":
            return web.json_response({"error": "x"}, status=500)
        return web.json_response({"issuer": "x", "jwks_uri": f"{base}/{tenant}/keys"})

    async def keys(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if request.match_info["tenant"] == "nokeys":
            return web.json_response({"keys": "nope"})
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", handler)
    app.router.add_get("/{tenant}/keys", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield FakeIdp(base, seen)
    await runner.cleanup()


async def test_no_cookies_or_trace_headers_and_bad_answers_refused(
    fake_idp: FakeIdp, session: aiohttp.ClientSession
) -> None:
    discovery = Discovery(session, fake_idp.url)
    jwks = JwksCache(discovery)
    assert await jwks.keys("t") == {"keys": []}
    for tenant in ("redirect", "plain", "notjson", "huge", "error", "nokeys"):
        with pytest.raises(IdpUnavailable):
            await jwks.keys(tenant)
    assert len(fake_idp.seen) == 9  # redirect not followed; plain http jwks_uri not fetched
    for headers in fake_idp.seen:
        names = {name.lower() for name in headers}
        assert not names & {"cookie", "traceparent", "tracestate", "baggage", "b3"}
