"""The dev IdP's token endpoint with a client secret: single-use codes, PKCE, redirect URI
and client checks, unsupported grants and refresh token rotation (issue 3).
"""

from __future__ import annotations

import secrets

import aiohttp

from iap.dev.idp import TENANT_A, RunningDevIdP
from tests.support.dev_idp import (
    CLIENT_ID,
    CLIENT_SECRET,
    basic_auth,
    client,
    code_form,
    idp,
    redeem,
    sign_in,
    token_request,
    token_url,
    verify_id_token,
)

__all__ = ["client", "idp"]


async def test_code_is_single_use_and_replay_revokes(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    status, first = await redeem(client, idp, auth)
    assert status == 200
    status, again = await redeem(client, idp, auth)
    assert status == 400
    assert again["error"] == "invalid_grant"
    assert again["error_description"].startswith("AADSTS54005")
    status, refreshed = await token_request(
        client, idp, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert (status, refreshed["error"]) == (400, "invalid_grant")


async def test_wrong_code_verifier_is_refused(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    status, body = await redeem(client, idp, auth, code_verifier=secrets.token_urlsafe(48))
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "id_token" not in body
    status, body = await redeem(client, idp, auth)  # the code was consumed by the attempt
    assert status == 400


async def test_missing_code_verifier_and_wrong_redirect_are_refused(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    status, body = await redeem(client, idp, auth, code_verifier="")
    assert (status, body["error"]) == (400, "invalid_grant")
    auth = await sign_in(client, idp, "alice")
    status, body = await redeem(client, idp, auth, redirect_uri="http://127.0.0.1:9/other")
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_wrong_client_secret_is_refused(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    status, body = await redeem(client, idp, auth, client_secret="guess")
    assert (status, body["error"]) == (401, "invalid_client")
    assert body["error_codes"] == [7000215]
    status, body = await redeem(client, idp, auth, client_secret="")
    assert (status, body["error"]) == (401, "invalid_client")
    assert auth.code in idp.idp.codes  # failed client authentication does not burn the code


async def test_client_secret_basic_is_accepted(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    basic = basic_auth(CLIENT_ID, CLIENT_SECRET)
    async with client.post(token_url(idp), data=code_form(auth), headers=basic) as resp:
        assert resp.status == 200


async def test_unsupported_grant_type(idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    status, body = await token_request(client, idp, grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_refresh_grant_rotates_and_counts(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    _, first = await redeem(client, idp, auth)
    first_claims = await verify_id_token(client, idp, first["id_token"], TENANT_A, auth.nonce)
    assert idp.idp.refresh_grants == 0
    status, second = await token_request(
        client, idp, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert status == 200, second
    assert idp.idp.refresh_grants == 1
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    claims = await verify_id_token(client, idp, second["id_token"], TENANT_A, None)
    assert (claims["oid"], claims["sid"]) == (first_claims["oid"], first_claims["sid"])
    status, body = await token_request(
        client, idp, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    assert idp.idp.refresh_grants == 1
    status, _ = await token_request(
        client,
        idp,
        grant_type="refresh_token",
        refresh_token=second["refresh_token"],
        client_secret="guess",
    )
    assert status == 401
    assert idp.idp.refresh_grants == 1
