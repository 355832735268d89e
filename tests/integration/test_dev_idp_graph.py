"""The dev IdP's groups overage and its Microsoft Graph ``getMemberObjects`` stand-in."""

from __future__ import annotations

import aiohttp

from iap.dev.idp import STAFF_GROUP_ID, TENANT_A, TENANT_B, USERS, RunningDevIdP
from tests.support.dev_idp import client, idp, signed_in_tokens, verify_id_token

__all__ = ["client", "idp"]


async def test_groups_overage_and_graph_stand_in(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth, body = await signed_in_tokens(client, idp, "olivia")
    claims = await verify_id_token(client, idp, body["id_token"], TENANT_A, auth.nonce)
    olivia = USERS["olivia"]
    assert "groups" not in claims
    assert claims["_claim_names"] == {"groups": "src1"}
    endpoint = claims["_claim_sources"]["src1"]["endpoint"]
    assert endpoint == f"{idp.url}/graph/v1.0/users/{olivia.oid}/getMemberObjects"
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    payload = {"securityEnabledOnly": True}
    async with client.post(endpoint, json=payload, headers=bearer) as resp:
        assert resp.status == 200
        groups = (await resp.json())["value"]
    assert len(groups) == len(set(groups)) == 150
    assert STAFF_GROUP_ID in groups
    async with client.post(
        f"{idp.url}/graph/v1.0/me/getMemberObjects", json=payload, headers=bearer
    ) as resp:
        assert (await resp.json())["value"] == groups
    assert idp.idp.graph_calls == 2


async def test_graph_refuses_bad_tokens_and_other_tenants(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    olivia = USERS["olivia"]
    url = f"{idp.url}/graph/v1.0/users/{olivia.oid}/getMemberObjects"
    async with client.post(url, json={}, headers={"Authorization": "Bearer forged"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "InvalidAuthenticationToken"
    _, body = await signed_in_tokens(client, idp, "eve", tenant=TENANT_B)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    async with client.post(url, json={}, headers=bearer) as resp:
        assert resp.status == 404
    assert idp.idp.graph_calls == 0
