"""Each dev IdP serves its own directory of tenants, users and services (the demo one unless
it is given another), and the demo data at module level cannot be changed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from iap.dev.idp import (
    DEMO_DIRECTORY,
    DEMO_SERVICES,
    DEMO_USERS,
    SERVICES,
    TENANT_A,
    TENANT_B,
    TENANT_NAMES,
    USERS,
    DemoService,
    DemoUser,
    Directory,
    RunningDevIdP,
)
from tests.support.dev_idp import (
    authorize_url,
    client,
    idp,
    request_params,
    running_idp,
    service_token,
    signed_in_tokens,
    verify_id_token,
)

__all__ = ["client", "idp"]

CAROL = DemoUser(
    "carol",
    "Carol Custom",
    TENANT_A,
    "ca201000-0000-4000-8000-00000000000c",
    "carol@contoso.example",
)
INVENTORY = DemoService(
    "inventory-service",
    "1a7e0000-0000-4000-8000-0000000005a4",
    "inventory-dev-secret",
    TENANT_A,
    "1a7e0000-5e00-4000-8000-0000000005b4",
    "Inventory service",
    roles=("Stock.Read",),
)
OWN = Directory(users=(CAROL,), services=(INVENTORY,))


def test_the_demo_directory_holds_the_demo_data() -> None:
    assert DEMO_DIRECTORY.users == DEMO_USERS
    assert DEMO_DIRECTORY.services == DEMO_SERVICES
    assert dict(DEMO_DIRECTORY.tenants) == dict(TENANT_NAMES)
    assert DEMO_DIRECTORY.user("alice") is USERS["alice"]
    assert DEMO_DIRECTORY.user_by_oid(USERS["bob"].oid) is USERS["bob"]
    assert (
        DEMO_DIRECTORY.service(SERVICES["orders-service"].client_id) is SERVICES["orders-service"]
    )
    assert [u.key for u in DEMO_DIRECTORY.users_for(TENANT_B)] == ["eve"]
    assert DEMO_DIRECTORY.users_for("organizations") == list(DEMO_USERS)


def test_module_level_demo_data_is_read_only() -> None:
    with pytest.raises(TypeError):
        USERS["mallory"] = CAROL  # type: ignore[index]
    with pytest.raises(TypeError):
        SERVICES["inventory-service"] = INVENTORY  # type: ignore[index]
    with pytest.raises(TypeError):
        TENANT_NAMES["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        DEMO_DIRECTORY.tenants["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        ({"users": (CAROL, CAROL)}, "duplicate user key"),
        ({"users": (CAROL, replace(CAROL, key="carol-2"))}, "duplicate user oid"),
        ({"services": (INVENTORY, INVENTORY)}, "duplicate service client id"),
        ({"tenants": {TENANT_A: "Contoso"}}, "unknown tenants"),
    ],
)
def test_a_directory_is_consistent(parts: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Directory(**parts)


async def test_an_idp_signs_in_the_users_of_its_own_directory(
    client: aiohttp.ClientSession,
) -> None:
    async with running_idp(directory=OWN) as own:
        params = request_params()
        async with client.get(authorize_url(own), params=params) as resp:
            page = await resp.text()
        assert 'value="carol"' in page
        assert 'value="alice"' not in page
        auth, body = await signed_in_tokens(client, own, "carol")
        claims = await verify_id_token(client, own, body["id_token"], TENANT_A, auth.nonce)
        assert (claims["oid"], claims["email"]) == (CAROL.oid, CAROL.email)
        data = {**params, "user": "alice"}
        async with client.post(authorize_url(own), data=data, allow_redirects=False) as resp:
            assert resp.status == 400


async def test_an_idp_issues_app_tokens_to_the_services_of_its_own_directory(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    status, body = await service_token(client, idp, INVENTORY)  # not in the demo directory
    assert (status, body["error_codes"]) == (400, [700016])
    async with running_idp(directory=OWN) as own:
        status, body = await service_token(client, own, INVENTORY)
        assert status == 200, body
        status, body = await service_token(client, own, SERVICES["orders-service"])
        assert (status, body["error_codes"]) == (400, [700016])
        assert own.idp.client_credentials_grants == 1
