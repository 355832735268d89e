"""The IdP outage grace end to end over real sockets (issue #15 point 4; SPEC §7 Sessions).

Alice signs in through the dev IdP; iap's session clock (``iap.web.signin.time``) is moved
by the test to the moment her session is due for its refresh, and the dev IdP goes down:
stopped (connection refused) or answering 503 (``outage_status``). Within
``session.refresh_grace`` the request goes on as Alice (audit reason ``refresh_grace``,
counted in ``iap_session_refresh_grace_total``) and the session is not rewritten as
refreshed: the next request tries the refresh again. Past the grace, with the grace off,
and on ``invalid_grant`` whatever the grace, she is signed out (the lifecycle tests'
``assert_signed_out``: 302/401, cookie cleared, nothing forwarded).

The metadata caches' clock (``iap.adapters.provider.time``) is a second fake: stale
discovery and JWKS are served, their age metric grows, and past ``oidc.metadata_max_stale``
sign-in answers 503. Nothing sleeps.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from iap import config
from iap.adapters import provider
from iap.errors import ConfigError
from tests.conftest import StartEdge, Upstream
from tests.integration.test_bearer import EDGE_API, call, entra_token, service_routes
from tests.integration.test_session_lifecycle import (
    API,
    BROWSER,
    SESSION_COOKIE,
    Clock,
    assert_signed_out,
    clock,
    signed_in,
)
from tests.integration.test_signin import alice_subject
from tests.integration.test_signin_attacks import audit_line, session_cookies_set
from tests.support.redis_server import start_redis_server
from tests.support.signin import (
    SignInStack,
    Visitor,
    http,
    signin_config,
    start_signin_stack,
)

__all__ = ["clock", "http"]

HOUR = 3600
GRACE = 10 * 60
SESSION = {"lifetime": 8 * HOUR, "idle_timeout": 2 * HOUR}
TOKEN_PATH = re.compile(r"/oauth2/v2\.0/token$")


@dataclass
class Monotonic:
    """Stands in for the ``time`` module in ``iap.adapters.provider``."""

    now: float

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    fake = Monotonic(float(int(time.monotonic())))  # whole seconds: ages compare exactly
    monkeypatch.setattr(provider, "time", fake)
    return fake


async def start(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    store: str = "cookie",
    *,
    grace: Any = GRACE,
    **config: Any,
) -> tuple[SignInStack, Any]:
    session = {**SESSION, "refresh_grace": grace}
    server = None
    if store == "redis":
        server = await start_redis_server()
        session["store"] = "redis"
        config["redis"] = {"url": server.url}
    idp, edge = await start_signin_stack(upstream, start_edge, tmp_path, session=session, **config)
    return SignInStack(idp, edge, upstream), server


@pytest.fixture(params=["cookie", "redis"])
async def stack(
    request: pytest.FixtureRequest, upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    running, server = await start(upstream, start_edge, tmp_path, request.param)
    try:
        yield running
    finally:
        await running.idp.stop()
        if server is not None:
            await running.edge.edge.stop()  # before the store goes away
            await server.stop()


@pytest.fixture
def visitor(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)


async def outage(stack: SignInStack, kind: str) -> None:
    if kind == "stopped":
        await stack.idp.stop()
    else:
        stack.idp.idp.outage_status = 503


async def metric(stack: SignInStack, http: aiohttp.ClientSession, name: str) -> float:
    async with http.get(stack.edge.admin_url + "/metrics") as answer:
        text = await answer.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def due(stack: SignInStack, signed_in_at: float) -> float:
    """When the session signed in at ``signed_in_at`` is due for its refresh."""
    return signed_in_at + stack.idp.idp.access_token_ttl - 300


async def assert_on_grace(stack: SignInStack, visitor: Visitor) -> None:
    """A request goes through as Alice, audited ``refresh_grace``."""
    forwarded = len(stack.upstream.seen.requests)
    answer = await visitor.get("/app/x", headers=API)
    assert answer.status == 200
    assert len(stack.upstream.seen.requests) == forwarded + 1
    assert stack.upstream.seen.last.headers["X-IAP-Subject"] == alice_subject()
    line = await audit_line(stack, correlation_id=answer.header("X-Correlation-ID"))
    assert (line["status"], line["decision"], line["reason"]) == (200, "allow", "refresh_grace")
    assert line["subject"] == alice_subject()


@pytest.mark.parametrize("kind", ["stopped", "503"])
async def test_a_session_due_for_refresh_rides_out_an_idp_outage_within_the_grace(
    stack: SignInStack, visitor: Visitor, clock: Clock, http: aiohttp.ClientSession, kind: str
) -> None:
    signed_in_at = clock.now
    await signed_in(stack, visitor)
    await outage(stack, kind)
    clock.now = due(stack, signed_in_at)

    await assert_on_grace(stack, visitor)
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 1
    clock.now += GRACE - 1  # the last second of the grace: still not refreshed, still on
    await assert_on_grace(stack, visitor)
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 2
    assert stack.idp.idp.refresh_grants == 0
    if kind == "503":  # each request tried the refresh again (one token call each)
        tries = [path for path in stack.idp.idp.outage_requests if TOKEN_PATH.search(path)]
        assert len(tries) == 2


async def test_when_the_idp_is_back_the_session_is_refreshed(
    stack: SignInStack, visitor: Visitor, clock: Clock, http: aiohttp.ClientSession
) -> None:
    signed_in_at = clock.now
    await signed_in(stack, visitor)
    await outage(stack, "503")
    clock.now = due(stack, signed_in_at)
    await assert_on_grace(stack, visitor)

    stack.idp.idp.outage_status = None
    clock.now += 1
    answer = await visitor.get("/app/x", headers=API)
    assert answer.status == 200
    assert stack.idp.idp.refresh_grants == 1
    assert session_cookies_set(answer)  # the refreshed session, refresh_at an hour on
    line = await audit_line(stack, correlation_id=answer.header("X-Correlation-ID"))
    assert line["reason"] != "refresh_grace"
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 1


@pytest.mark.parametrize("kind", ["stopped", "503"])
async def test_past_the_grace_the_session_requires_sign_in(
    stack: SignInStack, visitor: Visitor, clock: Clock, http: aiohttp.ClientSession, kind: str
) -> None:
    signed_in_at = clock.now
    cookies = await signed_in(stack, visitor)
    await outage(stack, kind)
    clock.now = due(stack, signed_in_at) + GRACE
    await assert_signed_out(stack, visitor, cookies, "session_refresh_unavailable")
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 0


async def test_invalid_grant_ends_the_session_at_once_whatever_the_grace(
    stack: SignInStack, visitor: Visitor, clock: Clock, http: aiohttp.ClientSession
) -> None:
    idp = stack.idp.idp
    signed_in_at = clock.now
    cookies = await signed_in(stack, visitor)
    [grant] = idp.refresh_tokens.values()
    idp.revoke_family(grant.family)  # the token endpoint answers invalid_grant
    clock.now = due(stack, signed_in_at)  # the first second of what would be the grace
    await assert_signed_out(stack, visitor, cookies, "session_refresh_failed")
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 0


async def test_an_unusable_answer_is_no_outage_and_ends_the_session_at_once(
    stack: SignInStack, visitor: Visitor, clock: Clock, http: aiohttp.ClientSession
) -> None:
    signed_in_at = clock.now
    cookies = await signed_in(stack, visitor)
    stack.idp.idp.outage_status = 404  # the IdP answers, just not with tokens
    clock.now = due(stack, signed_in_at)
    await assert_signed_out(stack, visitor, cookies, "session_refresh_failed")
    assert await metric(stack, http, "iap_session_refresh_grace_total") == 0


async def test_grace_zero_ends_the_session_when_the_idp_is_down(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    clock: Clock,
    http: aiohttp.ClientSession,
) -> None:
    stack, _ = await start(upstream, start_edge, tmp_path, grace="0s")
    try:
        visitor = stack.visitor(http)
        signed_in_at = clock.now
        cookies = await signed_in(stack, visitor)
        await outage(stack, "503")
        clock.now = due(stack, signed_in_at)
        await assert_signed_out(stack, visitor, cookies, "session_refresh_unavailable")
        assert await metric(stack, http, "iap_session_refresh_grace_total") == 0
    finally:
        await stack.idp.stop()


async def age(stack: SignInStack, http: aiohttp.ClientSession, document: str) -> float:
    return await metric(stack, http, f'iap_idp_metadata_age_seconds{{document="{document}"}}')


async def test_stale_metadata_is_served_its_age_grows_and_past_max_stale_sign_in_is_503(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    clock: Clock,
    monotonic: Monotonic,
    http: aiohttp.ClientSession,
) -> None:
    stack, _ = await start(upstream, start_edge, tmp_path, oidc={"metadata_max_stale": "2h"})
    try:
        visitor = stack.visitor(http)
        await signed_in(stack, visitor)  # discovery and the JWKS are loaded
        assert await age(stack, http, "discovery") == 0
        stack.idp.idp.outage_status = 503

        monotonic.now += 2 * HOUR - 1  # past the refresh, a second before max_stale
        login = await visitor.get("/.iap/login?rd=/app/", headers=BROWSER)
        assert login.status == 302  # to the IdP's authorize endpoint from stale discovery
        assert login.location.startswith(stack.idp.url)
        assert any(path.endswith("openid-configuration") for path in stack.idp.idp.outage_requests)
        assert await age(stack, http, "discovery") == 2 * HOUR - 1
        assert await age(stack, http, "jwks") == 2 * HOUR - 1

        monotonic.now += 1
        refused = await visitor.get("/.iap/login?rd=/app/", headers=BROWSER)
        assert refused.status == 503
        line = await audit_line(stack, correlation_id=refused.header("X-Correlation-ID"))
        assert line["reason"] == "idp_unavailable"
        assert SESSION_COOKIE in visitor.cookies  # nothing about the session changed
    finally:
        await stack.idp.stop()


async def test_bearer_tokens_verify_with_stale_keys_until_max_stale_then_503(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    monotonic: Monotonic,
    http: aiohttp.ClientSession,
) -> None:
    stack, _ = await start(
        upstream,
        start_edge,
        tmp_path,
        oidc={"metadata_max_stale": "2h"},
        bearer={"entra_audiences": [EDGE_API]},
        extra_routes=service_routes(upstream.url),
        roles={"Orders.Read": "orders-reader"},
    )
    try:
        visitor = stack.visitor(http)
        first, second = [await entra_token(http, stack, "orders-service") for _ in range(2)]
        assert await age(stack, http, "jwks") == 0  # loaded at start
        stack.idp.idp.outage_status = 503
        monotonic.now += 2 * HOUR - 1
        forwarded = len(stack.upstream.seen.requests)
        assert await call(visitor, "/orders/1", first) == 200  # stale keys
        assert len(stack.upstream.seen.requests) == forwarded + 1
        assert await age(stack, http, "jwks") == 2 * HOUR - 1

        monotonic.now += 1
        answer = await visitor.get("/orders/1", headers={"Authorization": f"Bearer {second}"})
        assert answer.status == 503
        assert len(stack.upstream.seen.requests) == forwarded + 1  # nothing more forwarded
        line = await audit_line(stack, correlation_id=answer.header("X-Correlation-ID"))
        assert (line["status"], line["reason"]) == (503, "idp_unavailable")
    finally:
        await stack.idp.stop()


@pytest.mark.parametrize(
    ("block", "key", "value"),
    [("session", "refresh_grace", "1m"), ("oidc", "metadata_max_stale", "1h")],
)
async def test_a_reload_that_changes_an_outage_key_is_refused_by_name(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, block: str, key: str, value: str
) -> None:
    stack, _ = await start(upstream, start_edge, tmp_path)
    try:
        running = stack.edge.edge
        document = signin_config(upstream.url, stack.idp, stack.edge.port, tmp_path)
        document["session"].update(SESSION, refresh_grace=GRACE)
        document[block][key] = value
        with pytest.raises(ConfigError) as refused:
            running.reload(config.parse(document))
        assert refused.value.problems == [f"{block}: changes need a restart, not a reload"]
        assert running.config.session.refresh_grace == GRACE  # the running value stays
    finally:
        await stack.idp.stop()
