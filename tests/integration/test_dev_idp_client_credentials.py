"""The dev IdP's client-credentials grant: Entra app-only access tokens (RFC 6749 §4.4),
v2.0 or v1.0, for the demo services and the relying party, and the requests it refuses.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from iap.dev.idp import SERVICES, TENANT_A, TENANT_B, DemoService, DevIdP, RunningDevIdP
from tests.support.dev_idp import (
    API,
    APP_ONLY_RESPONSE,
    CLIENT_ID,
    CLIENT_SECRET,
    client,
    code_form,
    idp,
    independently_verified,
    redeem,
    service_token,
    sign_in,
    verify_access_token,
    without_times,
)

__all__ = ["client", "idp"]


def test_demo_services_are_entra_shaped() -> None:
    assert set(SERVICES) == {"orders-service", "billing-service", "fabrikam-service"}
    for key, service in SERVICES.items():
        assert service.key == key
        assert str(uuid.UUID(service.client_id)) == service.client_id
        assert str(uuid.UUID(service.oid)) == service.oid
    assert SERVICES["orders-service"].roles == ("Orders.Read",)
    assert SERVICES["billing-service"].roles == ("Orders.Read", "Orders.Write")
    assert SERVICES["fabrikam-service"].roles == ()
    assert [s.tid for s in SERVICES.values()] == [TENANT_A, TENANT_A, TENANT_B]


@pytest.mark.parametrize("key", list(SERVICES))
async def test_each_service_gets_a_v2_app_only_token(
    idp: RunningDevIdP, client: aiohttp.ClientSession, key: str
) -> None:
    service = SERVICES[key]
    status, body = await service_token(client, idp, service)
    assert status == 200, body
    assert set(body) == APP_ONLY_RESPONSE
    ttl = idp.idp.access_token_ttl
    assert (body["token_type"], body["expires_in"], body["ext_expires_in"]) == ("Bearer", ttl, ttl)
    claims, key_used = await verify_access_token(client, idp, body["access_token"], service.tid)
    expected: dict[str, Any] = {
        "aud": API,
        "iss": f"{idp.url}/{service.tid}/v2.0",
        "tid": service.tid,
        "oid": service.oid,
        "sub": service.oid,
        "azp": service.client_id,
        "azpacr": "1",
        "idtyp": "app",
        "ver": "2.0",
    }
    if service.roles:
        expected["roles"] = list(service.roles)
    assert without_times(claims) == expected
    assert claims["exp"] - claims["iat"] == ttl
    assert key_used["issuer"] == claims["iss"]  # the tenant's JWKS vouches for this issuer
    assert idp.idp.client_credentials_grants == 1
    assert (idp.idp.code_grants, idp.idp.refresh_grants) == (0, 0)


@pytest.mark.parametrize("key", list(SERVICES))
async def test_v1_app_only_tokens_when_the_api_accepts_v1(
    idp: RunningDevIdP, client: aiohttp.ClientSession, key: str
) -> None:
    idp.idp.access_token_version = 1
    service = SERVICES[key]
    status, body = await service_token(client, idp, service)
    assert status == 200, body
    assert set(body) == APP_ONLY_RESPONSE
    claims, _ = await verify_access_token(client, idp, body["access_token"], service.tid)
    expected: dict[str, Any] = {
        "aud": API,
        "iss": f"https://sts.windows.net/{service.tid}/",
        "tid": service.tid,
        "oid": service.oid,
        "sub": service.oid,
        "appid": service.client_id,
        "appidacr": "1",
        "idtyp": "app",
        "ver": "1.0",
    }
    if service.roles:
        expected["roles"] = list(service.roles)
    assert without_times(claims) == expected
    assert idp.idp.client_credentials_grants == 1


async def test_client_secret_basic_for_a_service(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    billing = SERVICES["billing-service"]
    status, body = await service_token(
        client, idp, billing, basic=True, scope="https://orders.contoso.example/.default"
    )
    assert status == 200, body
    claims = independently_verified(idp, body["access_token"])
    assert (claims["aud"], claims["azp"]) == ("https://orders.contoso.example", billing.client_id)
    status, body = await service_token(
        client, idp, billing, basic=True, client_id=billing.client_id, client_secret="x"
    )
    assert (status, body["error_codes"]) == (400, [90023])  # one credential at a time
    assert idp.idp.client_credentials_grants == 1


async def test_an_application_id_is_a_resource_too(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    api_app_id = "7e57a1d0-0000-4000-8000-0000000a0001"
    status, body = await service_token(
        client, idp, SERVICES["orders-service"], scope=f"{api_app_id}/.default"
    )
    assert status == 200, body
    assert independently_verified(idp, body["access_token"])["aud"] == api_app_id


async def test_relying_party_client_credentials_have_no_roles(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    relying_party = DemoService("rp", CLIENT_ID, CLIENT_SECRET, TENANT_B, "", "Relying party")
    oids = []
    for tenant in (TENANT_A, TENANT_B, TENANT_A):
        status, body = await service_token(client, idp, relying_party, tenant=tenant)
        assert status == 200, body
        assert set(body) == APP_ONLY_RESPONSE
        claims, _ = await verify_access_token(client, idp, body["access_token"], tenant)
        assert (claims["tid"], claims["iss"]) == (tenant, f"{idp.url}/{tenant}/v2.0")
        assert (claims["azp"], claims["idtyp"], claims["sub"]) == (CLIENT_ID, "app", claims["oid"])
        assert "roles" not in claims
        oids.append(uuid.UUID(claims["oid"]))
    assert oids[0] == oids[2] != oids[1]  # one service principal per tenant
    assert idp.idp.client_credentials_grants == 3


REFUSED_CLIENT_CREDENTIALS = [
    pytest.param(
        {"client_id": "11111111-0000-4000-8000-000000000000"},
        (400, "unauthorized_client", 700016),
        id="unknown-client",
    ),
    pytest.param({"client_secret": "guess"}, (401, "invalid_client", 7000215), id="wrong-secret"),
    pytest.param(
        {"client_secret": CLIENT_SECRET}, (401, "invalid_client", 7000215), id="the-rp-secret"
    ),
    pytest.param({"client_secret": None}, (401, "invalid_client", 7000218), id="no-secret"),
    pytest.param({"scope": None}, (400, "invalid_scope", 70011), id="no-scope"),
    pytest.param({"scope": " "}, (400, "invalid_scope", 70011), id="blank-scope"),
    pytest.param(
        {"scope": f"{API}/.default api://other/.default"},
        (400, "invalid_scope", 70011),
        id="two-scopes",
    ),
    pytest.param(
        {"scope": f"{API}/.default offline_access"},
        (400, "invalid_scope", 70011),
        id="plus-offline",
    ),
    pytest.param(
        {"scope": f"{API}/Orders.Read"}, (400, "invalid_scope", 1002012), id="not-default"
    ),
    pytest.param({"scope": "openid"}, (400, "invalid_scope", 1002012), id="openid"),
    pytest.param({"scope": f"{API}/.Default"}, (400, "invalid_scope", 1002012), id="case"),
    pytest.param({"scope": "/.default"}, (400, "invalid_scope", 70011), id="no-resource"),
    pytest.param({"scope": "edge/.default"}, (400, "invalid_scope", 70011), id="not-a-uri"),
    pytest.param(
        {"scope": f"api://{'e' * 600}/.default"}, (400, "invalid_scope", 70011), id="too-long"
    ),
]


@pytest.mark.parametrize(("form", "refusal"), REFUSED_CLIENT_CREDENTIALS)
async def test_bad_client_credentials_requests_are_refused(
    idp: RunningDevIdP,
    client: aiohttp.ClientSession,
    form: dict[str, str | None],
    refusal: tuple[int, str, int],
) -> None:
    status, body = await service_token(client, idp, SERVICES["orders-service"], fields=form)
    assert (status, body["error"], body["error_codes"][0]) == refusal, body
    assert body["error_description"].startswith(f"AADSTS{refusal[2]}:")
    assert not {"access_token", "id_token", "refresh_token"} & set(body)
    assert idp.idp.client_credentials_grants == 0


async def test_a_service_exists_in_its_own_tenant_only(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    orders, fabrikam = SERVICES["orders-service"], SERVICES["fabrikam-service"]
    for service, other in ((orders, TENANT_B), (fabrikam, TENANT_A)):
        status, body = await service_token(client, idp, service, tenant=other)
        assert (status, body["error"], body["error_codes"]) == (
            400,
            "unauthorized_client",
            [700016],
        )
        assert f"directory '{other}'" in body["error_description"]
    for authority in ("organizations", "common"):  # app-only tokens need a tenant
        for service in (orders, DemoService("rp", CLIENT_ID, CLIENT_SECRET, TENANT_A, "", "")):
            status, body = await service_token(client, idp, service, tenant=authority)
            assert (status, body["error"], body["error_codes"]) == (
                400,
                "invalid_request",
                [50059],
            )
    assert idp.idp.client_credentials_grants == 0


async def test_a_service_cannot_redeem_what_the_relying_party_holds(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    orders = SERVICES["orders-service"]
    auth = await sign_in(client, idp, "alice")
    form = code_form(auth)
    status, body = await service_token(client, idp, orders, fields={**form, "scope": None})
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [70000])
    _, tokens = await redeem(client, idp, await sign_in(client, idp, "alice"))
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, body = await service_token(client, idp, orders, fields={**refresh, "scope": None})
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [70000])
    assert (idp.idp.code_grants, idp.idp.refresh_grants) == (1, 0)
    assert idp.idp.client_credentials_grants == 0


async def test_client_credentials_sign_with_the_current_key(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    new_kid = idp.idp.rotate()
    status, body = await service_token(client, idp, SERVICES["fabrikam-service"])
    assert status == 200, body
    _, key = await verify_access_token(client, idp, body["access_token"], TENANT_B)
    assert key["kid"] == new_kid


def test_access_token_version_is_1_or_2() -> None:
    with pytest.raises(ValueError, match="access_token_version"):
        DevIdP("http://127.0.0.1:9", CLIENT_ID, CLIENT_SECRET, (), access_token_version=3)
