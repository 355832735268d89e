"""Entra access tokens as bearer tokens (``iap.domain.bearer``): one refusal per rule, and the
caller each accepted token names (user or application)."""

from __future__ import annotations

from typing import Any

import pytest

from iap.dev.idp import SERVICES, TENANT_A, TENANT_B, DevIdP
from iap.domain.bearer import InvalidBearer, entra_identity

NOW = 1_700_000_000
BASE = "http://127.0.0.1:1"
API = "api://edge"
IDP = DevIdP(BASE, "rp-client", "secret", (f"{BASE}/cb",), clock=lambda: float(NOW))
ORDERS = SERVICES["orders-service"]


def app_claims(**changes: Any) -> dict[str, Any]:
    claims = IDP.app_token_claims(ORDERS, API)
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def check(token: str, *, now: int = NOW, tenants: tuple[str, ...] = (TENANT_A,)) -> Any:
    return entra_identity(
        token,
        jwks=IDP.jwks("organizations"),
        authority=BASE,
        audiences=[API],
        allowed_tenants=tenants,
        roles_map={"Orders.Read": "orders-reader"},
        now=now,
    )


def refused(reason: str, token: str, **kwargs: Any) -> None:
    with pytest.raises(InvalidBearer) as info:
        check(token, **kwargs)
    assert info.value.reason == reason
    assert token not in str(info.value)


def test_an_app_only_token_names_the_application() -> None:
    identity, exp, client, _ = check(IDP.sign({}, app_claims()))
    assert identity.subject == f"{TENANT_A}:{ORDERS.client_id}"
    assert identity.azp == client == ORDERS.client_id
    assert identity.roles == ("orders-reader",)
    assert exp == NOW + IDP.access_token_ttl


def test_a_delegated_token_names_the_user_and_its_client() -> None:
    token = IDP.sign({}, app_claims(scp="user_impersonation", oid="user-oid", idtyp=None))
    identity, _, client, _ = check(token)
    assert identity.subject == f"{TENANT_A}:user-oid"
    assert identity.azp is None
    assert client == ORDERS.client_id


def test_a_v1_token_uses_appid_and_the_sts_issuer() -> None:
    claims = app_claims(iss=f"https://sts.windows.net/{TENANT_A}/", azp=None)
    claims["appid"] = ORDERS.client_id
    identity, _, _, _ = check(IDP.sign({}, claims))
    assert identity.subject == f"{TENANT_A}:{ORDERS.client_id}"


@pytest.mark.parametrize(
    ("reason", "changes"),
    [
        ("aud", {"aud": "https://graph.microsoft.com"}),
        ("iss", {"iss": f"{BASE}/{TENANT_B}/v2.0"}),
        ("iss", {"iss": "https://evil.example/v2.0"}),
        ("exp", {"exp": NOW - 3600}),
        ("iat", {"iat": NOW + 3600}),
        ("claims", {"azp": None}),
        ("claims", {"roles": "Orders.Read"}),
    ],
)
def test_each_rule_refuses(reason: str, changes: dict[str, Any]) -> None:
    refused(reason, IDP.sign({}, app_claims(**changes)))


def test_a_tenant_outside_allowed_tenants_is_refused() -> None:
    refused("tenant", IDP.sign({}, app_claims()), tenants=(TENANT_B,))


def test_alg_none_and_an_unknown_kid_are_refused() -> None:
    token = IDP.sign({}, app_claims())
    payload = token.split(".")[1]
    none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    refused("alg", f"{none_header}.{payload}.")
    IDP.rotate(publish=False)
    try:
        refused("kid", IDP.sign({}, app_claims()))
    finally:
        IDP.rotate()
