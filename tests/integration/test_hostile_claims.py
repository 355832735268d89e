"""Claims of any JSON type, signed with a valid key, on every entry point that reads claims
(issue: "odd claim types give 500"), over real sockets.

The tokens are signed by the keys iap trusts (the dev IdP's RS256 key, iap's own ES256 key),
so every check before the claims passes and the claims readers meet the hostile values. Each
entry point must refuse with a 4xx or accept; a 5xx, and anything forwarded for a refused
token, is a failure. The claims start from a valid set so that the deeper checks are reached.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iap import mesh
from iap.dev.idp import SERVICES, TENANT_A, USERS
from iap.domain import tokens
from tests.conftest import StartEdge, Upstream
from tests.integration.test_bearer import ACCESS_TOKEN, EDGE_API, TOKEN_EXCHANGE, service_routes
from tests.support.signin import SignInStack, Visitor, http, running_stack

__all__ = ["http"]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
READ = [
    "iss", "sub", "aud", "tid", "oid", "azp", "appid", "roles", "groups", "scp", "exp", "nbf",
    "iat", "act", "ver", "idtyp", "name", "email", "preferred_username", "upn", "sid", "nonce",
    "app_displayname", "_claim_names",
]  # fmt: skip
# One claim replaced, so that every claim is reached past the checks before it.
CHANGES = st.sampled_from(READ).flatmap(lambda name: st.fixed_dictionaries({name: JSON}))
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one stack, many examples
)
NEVER = range(500, 600)


CONTOSO = {
    "name": "contoso",
    "upstream": "http://127.0.0.1:9",  # never reached in these tests
    "match": {"path_prefix": "/contoso/"},
    "policy": {"allow": {"domains": ["contoso.example"]}},
}


@pytest.fixture
async def stack(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    async with running_stack(
        upstream,
        start_edge,
        tmp_path,
        trusted_proxies=["127.0.0.0/8"],
        auth_failures=None,  # thousands of refusals from one address: each must be examined
        bearer={"entra_audiences": [EDGE_API]},
        extra_routes=[*service_routes(upstream.url), CONTOSO],
        roles={"Orders.Read": "orders-reader"},
    ) as running:
        yield running


def entra_claims(stack: SignInStack) -> dict[str, Any]:
    """An app-only Entra v2 access token's claims for the orders service, all valid."""
    service, now = SERVICES["orders-service"], int(time.time())
    return {
        "iss": f"{stack.idp.url}/{TENANT_A}/v2.0",
        "aud": EDGE_API,
        "tid": TENANT_A,
        "oid": "5f0e0000-0000-4000-8000-00000000abcd",
        "sub": "5f0e0000-0000-4000-8000-00000000abcd",
        "azp": service.client_id,
        "roles": ["Orders.Read"],
        "ver": "2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }


def iap_claims(stack: SignInStack) -> dict[str, Any]:
    alice, now = USERS["alice"], int(time.time())
    return {
        "iss": stack.edge.edge.config.tokens.issuer,  # type: ignore[union-attr]
        "aud": "orders",
        "sub": f"{alice.tid}:{alice.oid}",
        "tid": alice.tid,
        "oid": alice.oid,
        "roles": ["orders-reader"],
        "jti": "j",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }


def iap_token(stack: SignInStack, claims: dict[str, Any]) -> str:
    keys = stack.edge.edge.minter.keys.current  # type: ignore[union-attr]
    return tokens.mint(keys.signing_key(time.time()), claims)


async def answers(stack: SignInStack, http: aiohttp.ClientSession, token: str) -> list[int]:
    """The status of each entry point that reads a bearer token's claims."""
    visitor = stack.visitor(http)
    bearer = {"Authorization": f"Bearer {token}"}
    before = len(stack.upstream.seen.requests)
    gateway = await visitor.get("/orders/1", headers=bearer)
    if gateway.status != 200:
        assert len(stack.upstream.seen.requests) == before  # refused: nothing forwarded
    forward_auth = await visitor.get(
        "/.iap/auth",
        headers={
            **bearer,
            "X-Original-URI": "/orders/1",
            "X-Original-Method": "GET",
            "X-Forwarded-Host": "127.0.0.1",
        },
    )
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": "billing",
    }
    exchange = await visitor.request("POST", "/.iap/token", data=form)
    # the readers refused, not the last-resort guard (which would also have answered 401)
    assert internal_errors(stack) == 0
    return [gateway.status, forward_auth.status, exchange.status]


def internal_errors(stack: SignInStack) -> float | None:
    registry = stack.edge.edge.metrics.registry
    return registry.get_sample_value("iap_authn_internal_errors_total")


async def test_an_entra_token_with_a_list_aud_is_verified_and_an_object_aud_refused(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """The finding: a list ``aud`` (RFC 7519 §4.1.3) answered 500 (a TypeError)."""
    visitor = stack.visitor(http)
    for aud, status in ((["urn:other", EDGE_API], 200), (["urn:other"], 401), ({"a": 1}, 401)):
        token = stack.idp.idp.sign({}, {**entra_claims(stack), "aud": aud})
        answer = await visitor.get("/orders/1", headers={"Authorization": f"Bearer {token}"})
        assert answer.status == status, aud
        if status == 401:
            assert stack.edge.audit_lines()[-1]["reason"] == "bearer_aud"
            assert 'error="invalid_token"' in (answer.header("WWW-Authenticate") or "")
    assert internal_errors(stack) == 0


# Claim types that broke a reader once, tried first on every run; hypothesis adds the rest.
KNOWN = [{"aud": ["x", EDGE_API]}, {"aud": {"a": 1}}, {"aud": []}, {"roles": "Orders.Read"},
         {"exp": 1.5}, {"exp": True}, {"act": [1]}, {"act": {"sub": 1}}, {"scp": 5},
         {"tid": 7}, {"azp": ["x"]}, {"email": {}}, {"iss": None}, {"groups": [1]}]  # fmt: skip


def known(test: Any) -> Any:
    for changes in KNOWN:
        test = example(changes=changes)(test)
    return test


@EXAMPLES
@known
@given(changes=CHANGES)
async def test_entra_access_tokens_with_any_claims(
    stack: SignInStack, http: aiohttp.ClientSession, changes: dict[str, Any]
) -> None:
    token = stack.idp.idp.sign({}, {**entra_claims(stack), **changes})
    statuses = await answers(stack, http, token)
    assert not [status for status in statuses if status in NEVER], (changes, statuses)


@EXAMPLES
@known
@given(changes=CHANGES)
async def test_iap_tokens_with_any_claims(
    stack: SignInStack, http: aiohttp.ClientSession, changes: dict[str, Any]
) -> None:
    claims = {**iap_claims(stack), **changes}
    token = iap_token(stack, claims)
    statuses = await answers(stack, http, token)
    assert not [status for status in statuses if status in NEVER], (changes, statuses)
    jwks = f"{stack.edge.admin_url}/jwks.json"
    issuer = iap_claims(stack)["iss"]
    async with mesh.Verifier(jwks, issuer=issuer, audience="orders", session=http) as verifier:
        try:
            identity = await verifier.verify(token)
        except mesh.InvalidToken:
            return
    assert identity.subject == claims["sub"]


@EXAMPLES
@known
@given(changes=CHANGES)
async def test_id_tokens_with_any_claims_at_the_callback(
    stack: SignInStack, http: aiohttp.ClientSession, changes: dict[str, Any]
) -> None:
    """The dev IdP signs the ID token it would issue, with some claims replaced."""
    idp = stack.idp.idp
    idp.id_token_hook = lambda header, claims: idp.sign(header, {**claims, **changes})
    visitor = Visitor(http, stack.edge.url)
    try:
        answer = await visitor.sign_in("alice")
    finally:
        idp.id_token_hook = None
    assert answer.status in (302, 403), (changes, answer.status)
    before = len(stack.upstream.seen.requests)
    app = await visitor.get("/app/x")
    assert app.status in (200, 401), (changes, app.status)
    if answer.status == 403:  # refused sign-in: no session, nothing forwarded
        assert (app.status, len(stack.upstream.seen.requests)) == (401, before)


@pytest.mark.parametrize(
    "email", ["attacker@evil.test@contoso.example", '"x@evil.test"@contoso.example']
)
async def test_a_crafted_email_does_not_pass_a_domain_rule(
    stack: SignInStack, http: aiohttp.ClientSession, email: str
) -> None:
    """The finding: the domain was taken after the last ``@``, so this address passed
    ``domains: [contoso.example]`` (the class of oauth2-proxy CVE-2026-40574)."""
    idp = stack.idp.idp
    idp.id_token_hook = lambda header, claims: idp.sign(header, {**claims, "email": email})
    visitor = Visitor(http, stack.edge.url)
    try:
        assert (await visitor.sign_in("bob")).status == 302
    finally:
        idp.id_token_hook = None
    answer = await visitor.get("/contoso/x")
    assert answer.status == 403
    assert stack.edge.audit_lines()[-1]["reason"] == "email_malformed"
    honest = Visitor(http, stack.edge.url)
    await honest.sign_in("alice")  # alice@contoso.example: in the domain, and let through
    answer = await honest.get("/contoso/x")
    assert (answer.status, stack.edge.audit_lines()[-1]["reason"]) == (502, "upstream_unreachable")
