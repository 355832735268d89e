"""``GET /.iap/auth``: forward-auth for nginx ``auth_request`` / Envoy ext_authz (SPEC §3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from iap.dev.idp import USERS
from tests.conftest import StartEdge, Upstream
from tests.support.signin import SignInStack, Visitor, http, start_signin_stack

__all__ = ["http"]


@pytest.fixture(params=[True, False], ids=["trusted", "untrusted"])
async def stack(
    request: pytest.FixtureRequest, upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    proxies = ["127.0.0.0/8"] if request.param else []
    idp, edge = await start_signin_stack(upstream, start_edge, tmp_path, trusted_proxies=proxies)
    try:
        yield SignInStack(idp, edge, upstream)
    finally:
        await idp.stop()


@pytest.fixture
def visitor(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)


def trusted(stack: SignInStack) -> bool:
    return bool(stack.edge.edge.config.trusted_proxies)


async def auth(visitor: Visitor, uri: str, **headers: str) -> tuple[int, dict[str, str]]:
    sent = {"X-Forwarded-Uri": uri, "X-Forwarded-Method": "GET", **headers}
    answer = await visitor.get("/.iap/auth", headers=sent)
    return answer.status, dict(answer.headers)


async def test_a_signed_in_user_gets_200_with_identity_and_token(
    stack: SignInStack, visitor: Visitor
) -> None:
    await visitor.sign_in("alice")
    status, headers = await auth(visitor, "/app/orders?id=1")
    if not trusted(stack):  # the original URI is believed from trusted proxies only
        assert status == 403
        return
    assert status == 200
    alice = USERS["alice"]
    assert headers["X-IAP-Subject"] == f"{alice.tid}:{alice.oid}"
    token = headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "app"
    assert not stack.upstream.seen.requests  # forward-auth never forwards


async def test_anonymous_gets_401_and_a_denied_user_403(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    expected = 401 if trusted(stack) else 403
    assert (await auth(stack.visitor(http), "/app/x"))[0] == expected
    await visitor.sign_in("bob")
    assert (await auth(visitor, "/admin/panel"))[0] == 403
    public = 200 if trusted(stack) else 403
    assert (await auth(stack.visitor(http), "/public/page"))[0] == public


@pytest.mark.parametrize("stack", [True], indirect=True, ids=["trusted"])
async def test_the_decision_is_on_the_forwarded_uri_not_the_request_path(
    stack: SignInStack, visitor: Visitor
) -> None:
    """A public route must not be inferred from ``/.iap/auth`` itself, and an ambiguous
    forwarded URI is refused rather than guessed."""
    assert (await auth(visitor, "/public/%2e%2e/app/x"))[0] == 401  # decided as /app/x
    assert (await auth(visitor, "/app/%2e%2e/public"))[0] == 200  # decided as /public
    assert (await auth(visitor, "/app/..%2fpublic"))[0] == 400  # ambiguous: refused
