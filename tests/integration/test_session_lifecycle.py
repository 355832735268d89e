"""How a browser session ends, end to end over real sockets (SPEC §7 Sessions): idle
timeout, absolute lifetime, and a refresh the IdP refuses.

Alice signs in through the dev IdP; then iap's clock moves (``iap.web.signin.time`` is
replaced by a clock the test sets, so no test sleeps). Each way of ending must hold both
halves of "fail closed": the caller is anonymous (a browser is sent to login, an API caller
gets 401 with ``WWW-Authenticate``), the session cookie is cleared, the audit line names the
reason, and nothing reaches the upstream. Every test runs with the cookie and the Redis store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from iap.web import signin
from tests.conftest import StartEdge, Upstream
from tests.integration.test_signin_attacks import audit_line, cleared, session_cookies_set
from tests.support.redis_server import start_redis_server
from tests.support.signin import SignInStack, Visitor, http, start_signin_stack

__all__ = ["http"]

HOUR = 3600
LIFETIME = 3 * HOUR
IDLE = HOUR
#: the dev IdP's token lifetime in the idle and lifetime tests: no refresh falls due in them
LONG_TOKENS = 24 * HOUR
SESSION_COOKIE = "__Host-iap"
BROWSER = {"Accept": "text/html"}
API = {"Accept": "application/json"}


@dataclass
class Clock:
    """Stands in for the ``time`` module in ``iap.web.signin``: seconds the test sets."""

    now: float

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """iap's session clock, frozen at the wall clock's current second until a test moves it
    (the dev IdP keeps the wall clock, so the sign-in's ID token is current)."""
    frozen = Clock(float(int(time.time())))
    monkeypatch.setattr(signin, "time", frozen)
    return frozen


@pytest.fixture(params=["cookie", "redis"])
async def stack(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    clock: Clock,
) -> AsyncIterator[SignInStack]:
    session = {"lifetime": LIFETIME, "idle_timeout": IDLE}
    extra = {}
    server = None
    if request.param == "redis":
        server = await start_redis_server()
        session["store"] = "redis"
        extra = {"redis": {"url": server.url}}
    idp, edge = await start_signin_stack(upstream, start_edge, tmp_path, session=session, **extra)
    try:
        yield SignInStack(idp, edge, upstream)
    finally:
        await idp.stop()
        if server is not None:
            await edge.edge.stop()  # before the store goes away
            await server.stop()


@pytest.fixture
def visitor(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)


async def signed_in(stack: SignInStack, visitor: Visitor) -> dict[str, str]:
    """Sign Alice in and reach the upstream once; the cookies the visitor then holds."""
    assert (await visitor.sign_in("alice")).status == 302
    assert (await visitor.get("/app/x")).status == 200
    assert SESSION_COOKIE in visitor.cookies
    return dict(visitor.cookies)


async def assert_signed_out(
    stack: SignInStack, visitor: Visitor, cookies: dict[str, str], reason: str
) -> None:
    """With ``cookies``, a browser is sent to login and an API caller gets 401; each answer
    clears the session cookie, is audited with ``reason``, and is never forwarded."""
    forwarded = len(stack.upstream.seen.requests)

    visitor.cookies = dict(cookies)
    page = await visitor.get("/app/x", headers=BROWSER)
    assert page.status == 302
    assert page.location == "/.iap/login?rd=%2Fapp%2Fx"

    visitor.cookies = dict(cookies)  # the browser's answer cleared them: send them again
    data = await visitor.get("/app/x", headers=API)
    assert data.status == 401
    assert data.header("WWW-Authenticate") == 'Bearer realm="iap"'

    for answer in (page, data):
        assert SESSION_COOKIE in cleared(answer)
        assert not session_cookies_set(answer)
        line = await audit_line(stack, correlation_id=answer.header("X-Correlation-ID"))
        assert (line["path"], line["status"], line["decision"]) == ("/app/x", answer.status, "deny")
        assert line["reason"] == reason
        assert line["subject"] is None
    assert len(stack.upstream.seen.requests) == forwarded
    assert SESSION_COOKIE not in visitor.cookies


async def test_a_session_unused_for_the_idle_timeout_ends(
    stack: SignInStack, visitor: Visitor, clock: Clock
) -> None:
    stack.idp.idp.access_token_ttl = LONG_TOKENS
    signed_in_at = clock.now
    await signed_in(stack, visitor)
    clock.now = last_used = signed_in_at + IDLE - 1  # a second before it would be idle
    answer = await visitor.get("/app/x", headers=BROWSER)
    assert answer.status == 200
    assert session_cookies_set(answer)  # seen written back: idle an hour from now
    clock.now = last_used + IDLE
    await assert_signed_out(stack, visitor, dict(visitor.cookies), "session_idle")


async def test_a_session_in_use_ends_at_its_absolute_lifetime(
    stack: SignInStack, visitor: Visitor, clock: Clock
) -> None:
    stack.idp.idp.access_token_ttl = LONG_TOKENS
    signed_in_at = clock.now
    await signed_in(stack, visitor)
    for minutes in (50, 100, 150):  # used often enough that it never goes idle
        clock.now = signed_in_at + minutes * 60
        answer = await visitor.get("/app/x", headers=BROWSER)
        assert answer.status == 200
        assert session_cookies_set(answer)  # seen written back: idle only an hour from here
    cookies = dict(visitor.cookies)
    clock.now = signed_in_at + LIFETIME
    await assert_signed_out(stack, visitor, cookies, "session_expired")


async def test_a_session_whose_refresh_the_idp_refuses_ends(
    stack: SignInStack, visitor: Visitor, clock: Clock
) -> None:
    idp = stack.idp.idp
    signed_in_at = clock.now
    cookies = await signed_in(stack, visitor)
    [grant] = idp.refresh_tokens.values()
    idp.revoke_family(grant.family)  # e.g. the user's sessions were revoked at Entra
    # 5 minutes before the IdP's one-hour tokens expire the session is due for a refresh,
    # well before it is idle.
    clock.now = signed_in_at + idp.access_token_ttl - 300
    await assert_signed_out(stack, visitor, cookies, "session_refresh_failed")
    assert idp.refresh_grants == 0
    # Refreshes count apart from sign-ins (the dashboard's two panels).
    metrics = stack.edge.edge.metrics.exposition()[0].decode()
    assert 'iap_idp_requests_total{endpoint="token",result="ok"} 1.0' in metrics
    assert 'iap_idp_requests_total{endpoint="refresh",result="refused"}' in metrics
