"""The policy language of SPEC §5.1 over real sockets: the gateway and forward-auth decide
through one function, so the same facts get the same answer on both (issue 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from iap.dev.idp import SERVICES, STAFF_GROUP_ID, TENANT_A, TENANT_B
from tests.conftest import StartEdge, Upstream
from tests.integration.test_bearer import EDGE_API, entra_token
from tests.support.signin import SignInStack, Visitor, http, running_stack

__all__ = ["http"]

# admins anywhere under /ops/, staff read-only on /ops/reports/, the orders service may
# POST to /ops/jobs/; nobody from the loopback network on /ops/reports/secret/
OPS = {
    "name": "ops",
    "match": {"path_prefix": "/ops/"},
    "policy": {
        "allow": [
            {"roles": ["admin"]},
            {"roles": ["staff"], "methods": ["GET", "HEAD"], "paths": ["/ops/reports/"]},
            {
                "auth": ["bearer"],
                "claims": {"azp": [SERVICES["orders-service"].client_id]},
                "methods": ["POST"],
                "paths": ["/ops/jobs/"],
            },
        ],
        "deny": [{"paths": ["/ops/reports/secret/"], "source": ["127.0.0.0/8"]}],
    },
}


# one identity condition per prefix, each with a rule that holds for someone and one that
# holds for nobody who can sign in here (Eve's tenant B is not allowed)
PEOPLE = {
    "name": "people",
    "match": {"path_prefix": "/people/"},
    "policy": {
        "allow": [
            {"groups": [STAFF_GROUP_ID], "paths": ["/people/staff/"]},
            {"emails": ["alice@contoso.example"], "paths": ["/people/alice/"]},
            {"domains": ["contoso.example"], "paths": ["/people/contoso/"]},
            {"domains": ["fabrikam.example"], "paths": ["/people/fabrikam/"]},
            {"tenants": [TENANT_A], "paths": ["/people/a/"]},
            {"tenants": [TENANT_B], "paths": ["/people/b/"]},
            {"authenticated": True, "paths": ["/people/anyone/"]},
        ],
    },
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
        bearer={"entra_audiences": [EDGE_API]},
        extra_routes=[{**OPS, "upstream": upstream.url}, {**PEOPLE, "upstream": upstream.url}],
    ) as running:
        yield running


async def both(visitor: Visitor, method: str, path: str, **headers: str) -> tuple[int, int]:
    """The gateway's status for ``method path`` and forward-auth's for the same request."""
    proxied = await visitor.request(method, path, headers=headers)
    original = {"X-Original-URI": path, "X-Original-Method": method, "X-Forwarded-Host": "x"}
    judged = await visitor.get("/.iap/auth", headers={**headers, **original})
    return proxied.status, judged.status


def reason(stack: SignInStack) -> str:
    return str(stack.edge.audit_lines()[-1]["reason"])


async def test_rules_are_ands_and_the_list_an_or(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    alice, bob = stack.visitor(http), stack.visitor(http)
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    assert await both(alice, "DELETE", "/ops/anything") == (200, 200)
    assert reason(stack) == "allow[0]"
    assert await both(bob, "GET", "/ops/reports/q") == (200, 200)
    assert reason(stack) == "allow[1]"
    seen = len(stack.upstream.seen.requests)
    assert await both(bob, "POST", "/ops/reports/q") == (403, 403)  # staff: read only
    assert await both(bob, "GET", "/ops/other") == (403, 403)  # staff: reports only
    assert reason(stack) == "no_rule_matched"
    assert len(stack.upstream.seen.requests) == seen


async def test_a_deny_rule_wins_over_every_allow(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    alice = stack.visitor(http)
    await alice.sign_in("alice")
    seen = len(stack.upstream.seen.requests)
    assert await both(alice, "GET", "/ops/reports/secret/x") == (403, 403)
    assert reason(stack) == "deny[0]"
    anonymous = stack.visitor(http)
    assert await both(anonymous, "GET", "/ops/reports/secret/x") == (403, 403)  # no sign-in
    assert await both(anonymous, "GET", "/ops/reports/q") == (401, 401)
    assert len(stack.upstream.seen.requests) == seen


async def test_a_service_may_post_jobs_and_nothing_else(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    token = await entra_token(http, stack, "orders-service")
    service = stack.visitor(http)
    bearer = {"Authorization": f"Bearer {token}"}
    assert await both(service, "POST", "/ops/jobs/1", **bearer) == (200, 200)
    assert reason(stack) == "allow[2]"
    assert await both(service, "GET", "/ops/jobs/1", **bearer) == (403, 403)
    other = await entra_token(http, stack, "billing-service")
    assert await both(service, "POST", "/ops/jobs/1", Authorization=f"Bearer {other}") == (
        403,
        403,
    )


async def test_each_identity_condition_over_sockets(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    alice, bob, anonymous = stack.visitor(http), stack.visitor(http), stack.visitor(http)
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    expected = {
        # path: (alice, bob, anonymous), each the gateway's and forward-auth's status
        "/people/staff/x": ((403, 403), (200, 200), (401, 401)),
        "/people/alice/x": ((200, 200), (403, 403), (401, 401)),
        "/people/contoso/x": ((200, 200), (200, 200), (401, 401)),
        "/people/fabrikam/x": ((403, 403), (403, 403), (401, 401)),
        "/people/a/x": ((200, 200), (200, 200), (401, 401)),
        "/people/b/x": ((403, 403), (403, 403), (401, 401)),
        "/people/anyone/x": ((200, 200), (200, 200), (401, 401)),
    }
    seen = {
        path: tuple([await both(v, "GET", path) for v in (alice, bob, anonymous)])
        for path in expected
    }
    assert seen == expected
