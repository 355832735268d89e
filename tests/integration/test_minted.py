"""Minted identity on the wire (SPEC §6, issue 4): the token the upstream receives verifies
with an independent library against the JWKS fetched from iap, and nothing a client sends
can add a second identity. Runs with both session stores (the ``stack`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import jwt
import pytest

from iap.dev.idp import USERS
from tests.conftest import StartEdge, Upstream, free_port
from tests.integration.test_signin import stack, visitor
from tests.support.signin import (
    SignInStack,
    Visitor,
    http,
    signin_config,
    start_signin_stack,
)

__all__ = ["http", "stack", "visitor"]


def alice_subject() -> str:
    alice = USERS["alice"]
    return f"{alice.tid}:{alice.oid}"


def upstream_headers(stack: SignInStack, name: str) -> list[str]:
    return stack.upstream.seen.last.headers.getall(name, [])


async def fetch_jwks(http: aiohttp.ClientSession, url: str) -> jwt.PyJWKSet:
    async with http.get(url) as answer:
        assert answer.status == 200
        document = await answer.json()
    for key in document["keys"]:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert (key["kty"], key["crv"], key["alg"]) == ("EC", "P-256", "ES256")
    return jwt.PyJWKSet.from_dict(document)


async def test_the_upstream_gets_one_token_that_verifies_with_the_published_jwks(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    await visitor.sign_in("alice")
    assert (await visitor.get("/app/x")).status == 200
    [authorization] = upstream_headers(stack, "Authorization")
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": header["kid"], "typ": "JWT"}
    for url in (f"{stack.edge.url}/.iap/jwks.json", f"{stack.edge.admin_url}/jwks.json"):
        keys = await fetch_jwks(http, url)
        key = next(k for k in keys.keys if k.key_id == header["kid"])
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience="app",
            issuer=f"{stack.edge.url}/.iap",
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
        )
        assert claims["sub"] == alice_subject()
        assert claims["roles"] == ["admin"]
        assert claims["sid"]
        assert all(isinstance(claims[name], int) for name in ("iat", "nbf", "exp"))
        assert claims["exp"] - claims["iat"] == 300


async def test_discovery_names_the_issuer_and_the_jwks(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.edge.url}/.iap/.well-known/openid-configuration") as answer:
        document = json.loads(await answer.text())
    issuer = f"{stack.edge.url}/.iap"
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == f"{issuer}/jwks.json"
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]


@pytest.mark.parametrize(
    "spoofed",
    [
        {"X-IAP-Subject": "tid:evil"},
        {"x_iap_subject": "tid:evil"},
        {"X-Iap-Roles": "admin"},
        {"Authorization": "Bearer forged.token.value"},
        {"Connection": "X-IAP-Subject", "X-IAP-Subject": "tid:evil"},
    ],
    ids=["x-iap-subject", "underscore", "roles", "authorization", "connection"],
)
async def test_client_identity_headers_never_reach_the_upstream_as_sent(
    stack: SignInStack, visitor: Visitor, spoofed: dict[str, str]
) -> None:
    await visitor.sign_in("bob")
    assert (await visitor.get("/app/x", headers=spoofed)).status == 200
    seen = stack.upstream.seen.last.headers
    assert seen.getall("X-IAP-Subject") == [f"{USERS['bob'].tid}:{USERS['bob'].oid}"]
    assert seen.getall("X-IAP-Roles") == ["staff"]
    [authorization] = seen.getall("Authorization")
    assert authorization.startswith("Bearer ey")
    assert "forged" not in authorization
    assert not any(
        name.lower().replace("_", "-") == "x-iap-subject"
        for name in seen
        if name != "X-IAP-Subject"
    )


async def test_a_public_route_forwards_no_token_and_no_client_authorization(
    stack: SignInStack, visitor: Visitor
) -> None:
    answer = await visitor.get("/public", headers={"Authorization": "Bearer client-token"})
    assert answer.status == 200
    assert upstream_headers(stack, "Authorization") == []
    assert upstream_headers(stack, "X-IAP-Subject") == []


async def test_tokens_are_reused_while_fresh(stack: SignInStack, visitor: Visitor) -> None:
    await visitor.sign_in("alice")
    await visitor.get("/app/a")
    first = upstream_headers(stack, "Authorization")
    await visitor.get("/app/b")
    assert upstream_headers(stack, "Authorization") == first


async def test_with_another_token_header_a_client_authorization_still_never_passes(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """``tokens.header: X-Jwt-Assertion``: iap's token goes there, and the client's own
    ``Authorization`` is dropped all the same; an upstream reading it would believe it."""
    idp, edge = await start_signin_stack(upstream, start_edge, tmp_path)
    try:
        document = signin_config(upstream.url, idp, free_port(), tmp_path)  # same keys
        document["tokens"]["header"] = "X-Jwt-Assertion"
        other = await start_edge(document)
        alice = Visitor(http, edge.url)
        await alice.sign_in("alice")
        twin = Visitor(http, other.url, dict(alice.cookies))
        forged = {"Authorization": "Bearer forged.token.value"}
        assert (await twin.get("/app/x", headers=forged)).status == 200
        seen = upstream.seen.last.headers
        assert seen.getall("Authorization", []) == []
        [token] = seen.getall("X-Jwt-Assertion")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == alice_subject()
    finally:
        await idp.stop()
