"""Services at the edge (issue 4): Entra client-credentials tokens from the dev IdP, iap tokens
bound to one audience, and the RFC 8693 exchange that moves a caller to another audience."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from iap.dev.idp import SERVICES, TENANT_A
from tests.conftest import StartEdge, Upstream
from tests.support.signin import (
    CLIENT_ID,
    CLIENT_SECRET,
    SignInStack,
    Visitor,
    http,
    running_stack,
    start_signin_stack,
)

__all__ = ["http"]

EDGE_API = "api://edge"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def service_routes(upstream_url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "orders",
            "upstream": upstream_url,
            "audience": "orders",
            "match": {"path_prefix": "/orders/"},
            "policy": {"allow": {"roles": ["orders-reader"]}},
            "exchange": {"from": ["billing"]},
        },
        {
            "name": "billing",
            "upstream": upstream_url,
            "audience": "billing",
            "match": {"path_prefix": "/billing/"},
            "policy": {"allow": {"authenticated": True}},
            # the orders service, holding tokens for orders or its own Entra token
            "exchange": {"from": ["orders", SERVICES["orders-service"].client_id]},
        },
    ]


@pytest.fixture
async def stack(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    async with running_stack(
        upstream,
        start_edge,
        tmp_path,
        bearer={"entra_audiences": [EDGE_API]},
        extra_routes=service_routes(upstream.url),
        roles={"Orders.Read": "orders-reader"},
    ) as running:
        yield running


async def entra_token(
    http: aiohttp.ClientSession, stack: SignInStack, service: str, scope: str = EDGE_API
) -> str:
    client = SERVICES[service]
    url = f"{stack.idp.url}/{client.tid}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
        "scope": f"{scope}/.default",
    }
    async with http.post(url, data=form) as answer:
        assert answer.status == 200, await answer.text()
        return str((await answer.json())["access_token"])


async def call(visitor: Visitor, path: str, token: str) -> int:
    return (await visitor.get(path, headers={"Authorization": f"Bearer {token}"})).status


def forwarded_token(stack: SignInStack) -> str:
    [authorization] = stack.upstream.seen.last.headers.getall("Authorization")
    return authorization.removeprefix("Bearer ")


async def exchange(
    http: aiohttp.ClientSession, stack: SignInStack, token: str, audience: str
) -> aiohttp.ClientResponse:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": audience,
    }
    async with http.post(f"{stack.edge.url}/.iap/token", data=form) as answer:
        await answer.read()
        return answer


async def test_a_client_credentials_token_is_accepted_on_a_route_of_its_audience(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = stack.visitor(http)
    token = await entra_token(http, stack, "orders-service")
    assert await call(visitor, "/orders/42", token) == 200
    minted = jwt.decode(forwarded_token(stack), options={"verify_signature": False})
    client = SERVICES["orders-service"]
    assert minted["aud"] == "orders"
    assert minted["sub"] == f"{TENANT_A}:{client.client_id}"
    assert minted["azp"] == client.client_id
    assert minted["roles"] == ["orders-reader"]
    assert forwarded_token(stack) != token  # the Entra token never reaches the upstream
    line = (await stack.edge.wait_audit_lines(1))[-1]
    assert (line["authn_method"], line["subject"], line["decision"]) == (
        "bearer",
        minted["sub"],
        "allow",
    )


async def test_an_iap_token_is_bound_to_its_audience_until_exchanged(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = stack.visitor(http)
    assert await call(visitor, "/orders/1", await entra_token(http, stack, "orders-service")) == 200
    for_orders = forwarded_token(stack)

    assert await call(visitor, "/orders/2", for_orders) == 200  # its own audience: as is
    assert forwarded_token(stack) == for_orders
    seen = len(stack.upstream.seen.requests)
    assert await call(visitor, "/billing/1", for_orders) == 401  # audience orders, not billing
    assert len(stack.upstream.seen.requests) == seen

    answer = await exchange(http, stack, for_orders, "billing")
    assert answer.status == 200
    body = await answer.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["token_type"] == "Bearer"
    for_billing = body["access_token"]
    claims = jwt.decode(for_billing, options={"verify_signature": False})
    assert claims["aud"] == "billing"
    assert claims["sub"] == jwt.decode(for_orders, options={"verify_signature": False})["sub"]
    assert claims["act"] == {"sub": f"{stack.edge.url}/.iap#orders"}
    assert await call(visitor, "/billing/1", for_billing) == 200
    assert forwarded_token(stack) == for_billing


async def test_exchange_refuses_unknown_audiences_and_bad_tokens(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    token = await entra_token(http, stack, "orders-service")
    unknown = await exchange(http, stack, token, "nobody-declares-this")
    assert (unknown.status, (await unknown.json())["error"]) == (400, "invalid_target")
    forged = await exchange(http, stack, token + "x", "billing")
    assert (forged.status, (await forged.json())["error"]) == (400, "invalid_grant")
    assert stack.edge.audit_lines()[-1]["reason"] == "exchange_bearer_malformed"
    answer = await exchange(http, stack, token, "billing")
    assert answer.status == 200  # an Entra token can be exchanged too; act names its client
    claims = jwt.decode((await answer.json())["access_token"], options={"verify_signature": False})
    assert claims["act"] == {"sub": f"{TENANT_A}:{SERVICES['orders-service'].client_id}"}


@pytest.mark.parametrize(
    ("service", "scope"),
    [("orders-service", "api://another-api"), ("fabrikam-service", EDGE_API)],
    ids=["wrong-audience", "tenant-not-allowed"],
)
async def test_entra_tokens_outside_the_configuration_are_refused(
    stack: SignInStack, http: aiohttp.ClientSession, service: str, scope: str
) -> None:
    visitor = stack.visitor(http)
    answer = await visitor.get(
        "/billing/1",
        headers={"Authorization": f"Bearer {await entra_token(http, stack, service, scope)}"},
    )
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Bearer realm="iap", error="invalid_token"'
    assert not stack.upstream.seen.requests


async def test_a_forged_bearer_token_is_refused_and_not_forwarded(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = stack.visitor(http)
    token = await entra_token(http, stack, "billing-service")
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    assert await call(visitor, "/billing/1", forged) == 401
    assert await call(visitor, "/billing/1", "not-a-jwt") == 401
    assert not stack.upstream.seen.requests


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
async def test_a_malformed_bearer_token_gets_one_error_code_in_header_and_body(
    stack: SignInStack, http: aiohttp.ClientSession, token: str
) -> None:
    """RFC 6750 §3.1: a malformed token is ``invalid_token``; the JSON body says the same."""
    visitor = stack.visitor(http)
    answer = await visitor.get(
        "/billing/1", headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Bearer realm="iap", error="invalid_token"'
    assert json.loads(answer.body)["error"] == "invalid_token"
    assert not stack.upstream.seen.requests


async def test_a_service_without_the_role_is_forbidden(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """The relying party's own registration, as a client-credentials caller, has no app role."""
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": f"{EDGE_API}/.default",
    }
    async with http.post(f"{stack.idp.url}/{TENANT_A}/oauth2/v2.0/token", data=form) as answer:
        token = (await answer.json())["access_token"]
    visitor = stack.visitor(http)
    assert await call(visitor, "/orders/1", token) == 403
    assert await call(visitor, "/billing/1", token) == 200


async def test_v1_access_tokens_are_accepted_too(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """APIs whose manifest accepts v1 tokens get ``iss: https://sts.windows.net/<tid>/`` and
    ``appid`` instead of ``azp``."""
    stack.idp.idp.access_token_version = 1
    token = await entra_token(http, stack, "billing-service")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == f"https://sts.windows.net/{TENANT_A}/"
    assert "azp" not in claims
    assert await call(stack.visitor(http), "/orders/1", token) == 200
    minted = jwt.decode(forwarded_token(stack), options={"verify_signature": False})
    assert minted["azp"] == SERVICES["billing-service"].client_id


async def test_exchanges_chain_act_and_stop_at_a_bounded_depth(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = stack.visitor(http)
    assert await call(visitor, "/orders/1", await entra_token(http, stack, "orders-service")) == 200
    token = forwarded_token(stack)
    depths = []
    for audience in ["billing", "orders", "billing", "orders", "billing"]:
        answer = await exchange(http, stack, token, audience)
        if answer.status != 200:
            assert (await answer.json())["error"] == "invalid_grant"
            break
        token = (await answer.json())["access_token"]
        act = jwt.decode(token, options={"verify_signature": False})["act"]
        depth = 1
        while "act" in act:
            act, depth = act["act"], depth + 1
        depths.append(depth)
    assert depths == [1, 2, 3, 4]  # the fifth exchange is refused


# --- who may exchange for which audience (routes[].exchange) ---------------------------


async def test_only_the_parties_a_route_names_may_exchange_for_its_audience(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """billing names the orders service; orders names only billing; public names nobody."""
    orders_service = await entra_token(http, stack, "orders-service")
    billing_service = await entra_token(http, stack, "billing-service")
    answer = await exchange(http, stack, orders_service, "billing")
    assert answer.status == 200
    answer = await exchange(http, stack, billing_service, "billing")  # not named: refused
    assert (answer.status, (await answer.json())["error"]) == (403, "access_denied")
    assert stack.edge.audit_lines()[-1]["reason"] == "exchange_party_not_allowed"
    answer = await exchange(http, stack, orders_service, "orders")  # orders names billing only
    assert (answer.status, (await answer.json())["error"]) == (403, "access_denied")
    answer = await exchange(http, stack, orders_service, "public")  # declared, no exchange
    assert (answer.status, (await answer.json())["error"]) == (400, "invalid_target")
    assert stack.edge.audit_lines()[-1]["reason"] == "exchange_not_allowed"


async def test_an_exchanged_token_lives_no_longer_than_its_subject_token(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    stack.idp.idp.access_token_ttl = 100  # shorter than tokens.ttl (300 s)
    subject = await entra_token(http, stack, "orders-service")
    answer = await exchange(http, stack, subject, "billing")
    body = await answer.json()
    issued = jwt.decode(body["access_token"], options={"verify_signature": False})
    subject_exp = jwt.decode(subject, options={"verify_signature": False})["exp"]
    assert issued["exp"] <= subject_exp
    assert 0 < body["expires_in"] <= 100
    assert issued["aud"] == "billing"


async def test_a_reload_applies_exchange_rules_and_bearer_audiences(
    stack: SignInStack, http: aiohttp.ClientSession, upstream: Upstream, tmp_path: Path
) -> None:
    """SIGHUP: a new route's audience can be exchanged for at once, and a dropped Entra
    audience is no longer believed (issue 11: no value kept silently)."""
    from iap import config
    from tests.support.signin import signin_config

    token = await entra_token(http, stack, "orders-service")
    assert (await exchange(http, stack, token, "billing")).status == 200  # verified, cached
    routes = service_routes(upstream.url)
    routes.append(
        {
            "name": "audit",
            "upstream": upstream.url,
            "match": {"path_prefix": "/audit/"},
            "policy": {"allow": {"authenticated": True}},
            "exchange": {"from": [SERVICES["orders-service"].client_id]},
        }
    )
    document = signin_config(
        upstream.url,
        stack.idp,
        stack.edge.port,
        tmp_path,
        bearer={"entra_audiences": ["api://another"]},
        extra_routes=routes,
        roles={"Orders.Read": "orders-reader"},
    )
    old = stack.edge.edge.reload(config.parse(document))
    await old.close()
    assert (await exchange(http, stack, token, "audit")).status == 400  # api://edge dropped
    assert stack.edge.audit_lines()[-1]["reason"] == "exchange_bearer_aud"
    document["bearer"] = {"entra_audiences": [EDGE_API]}
    await stack.edge.edge.reload(config.parse(document)).close()
    assert (await exchange(http, stack, token, "audit")).status == 200


async def test_failed_credentials_from_one_address_are_slowed_down_edge_wide(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """``auth_failures``: past 3 refused tokens a minute from one client address, its bearer
    requests and token exchanges get 429 unexamined, a valid token included; others are not
    affected (their address has its own count)."""
    idp, edge = await start_signin_stack(
        upstream,
        start_edge,
        tmp_path,
        bearer={"entra_audiences": [EDGE_API]},
        extra_routes=service_routes(upstream.url),
        roles={"Orders.Read": "orders-reader"},
        auth_failures={"requests": 3, "per": "1m"},
        trusted_proxies=["127.0.0.0/8"],
    )
    stack = SignInStack(idp, edge, upstream)
    try:
        good = await entra_token(http, stack, "orders-service")
        visitor = stack.visitor(http)
        attacker = {"X-Forwarded-For": "203.0.113.9"}
        statuses = [
            (
                await visitor.get(
                    "/orders/1", headers={**attacker, "Authorization": f"Bearer x{n}"}
                )
            ).status
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        assert edge.audit_lines()[-1]["reason"] == "auth_failures_limited"
        answer = await visitor.get(
            "/orders/1", headers={**attacker, "Authorization": f"Bearer {good}"}
        )
        assert answer.status == 429  # not examined
        assert answer.header("Retry-After") == "60"  # the window, in whole seconds
        answer = await visitor.get("/orders/1", headers={"Authorization": f"Bearer {good}"})
        assert answer.status == 200  # another address
    finally:
        await idp.stop()
