"""The dev IdP's authorize endpoint: the sign-in page, the demo users of each authority,
response modes and the errors that go back to the client or stay on the page (issue 3).
"""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from iap.dev.idp import STAFF_GROUP_ID, TENANT_A, TENANT_B, USERS, RunningDevIdP
from tests.support.dev_idp import (
    REDIRECT_URI,
    authorize_url,
    client,
    hidden_inputs,
    idp,
    redeem,
    request_params,
    sign_in,
    signed_in_tokens,
    verify_id_token,
)

__all__ = ["client", "idp"]


async def test_code_flow_signs_in_alice(idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    auth = await sign_in(client, idp, "alice")
    status, body = await redeem(client, idp, auth)
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int)
    assert body["access_token"]
    assert body["refresh_token"]
    claims = await verify_id_token(client, idp, body["id_token"], TENANT_A, auth.nonce)
    alice = USERS["alice"]
    assert claims["iss"] == f"{idp.url}/{TENANT_A}/v2.0"
    assert (claims["tid"], claims["oid"], claims["name"]) == (TENANT_A, alice.oid, alice.name)
    assert claims["email"] == claims["preferred_username"] == alice.email
    assert claims["roles"] == ["Edge.Admin"]
    assert "groups" not in claims
    assert all(isinstance(claims[c], int) for c in ("exp", "nbf", "iat"))
    assert claims["sub"] != alice.oid  # pairwise, as Entra's
    assert idp.idp.code_grants == 1


async def test_bob_has_staff_group_and_eve_is_tenant_b(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth, body = await signed_in_tokens(client, idp, "bob")
    bob = await verify_id_token(client, idp, body["id_token"], TENANT_A, auth.nonce)
    assert bob["groups"] == [STAFF_GROUP_ID]
    assert "roles" not in bob

    auth = await sign_in(client, idp, "eve", tenant="organizations")
    _, body = await redeem(client, idp, auth)
    eve = await verify_id_token(client, idp, body["id_token"], "organizations", auth.nonce)
    assert eve["tid"] == TENANT_B
    assert eve["iss"] == f"{idp.url}/{TENANT_B}/v2.0"


async def test_tenant_authority_offers_only_its_users(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    params = request_params()
    url = authorize_url(idp)
    async with client.get(url, params=params) as resp:
        page = await resp.text()
    assert 'value="alice"' in page
    assert 'value="eve"' not in page
    async with client.post(url, data={**params, "user": "eve"}, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers


async def test_form_post_response_mode(idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    params = request_params(response_mode="form_post")
    url = authorize_url(idp)
    async with client.post(url, data={**params, "user": "alice"}, allow_redirects=False) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert f'<form method="post" action="{REDIRECT_URI}">' in page
    assert "document.forms[0].submit()" in page
    fields = hidden_inputs(page)
    assert fields["state"] == params["state"]
    assert fields["code"] in idp.idp.codes


async def test_authorize_refuses_unregistered_redirect_without_redirecting(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    params = request_params(redirect_uri="https://evil.example/cb")
    url = authorize_url(idp)
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "AADSTS50011" in await resp.text()


@pytest.mark.parametrize(
    ("override", "drop"),
    [
        ({"code_challenge_method": "plain"}, None),
        ({}, "code_challenge"),
        ({"response_type": "token"}, None),
        ({"scope": "profile"}, None),
        ({}, "nonce"),
    ],
)
async def test_authorize_errors_go_back_to_the_client(
    idp: RunningDevIdP,
    client: aiohttp.ClientSession,
    override: dict[str, str],
    drop: str | None,
) -> None:
    params = request_params(**override)
    if drop:
        params.pop(drop)
    url = authorize_url(idp)
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert location.query["error"] == "invalid_request"
    assert location.query["state"] == params["state"]
    assert "code" not in location.query
