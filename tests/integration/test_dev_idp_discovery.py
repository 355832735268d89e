"""The dev IdP's discovery documents and signing keys: per-tenant metadata, the JWKS,
key rotation, unpublished keys and the ID token hook (issue 3, "Dev IdP").
"""

from __future__ import annotations

import aiohttp
import jwt as pyjwt
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet, KeySetSerialization

from iap.dev.idp import TENANT_A, RunningDevIdP
from tests.support.client_assertions import cert_idp
from tests.support.dev_idp import (
    client,
    discovery_url,
    idp,
    independently_verified,
    signed_in_tokens,
    token_url,
    verify_id_token,
)

__all__ = ["cert_idp", "client", "idp"]


@pytest.mark.parametrize("tenant", [TENANT_A, "organizations", "common"])
async def test_discovery_and_keys(
    idp: RunningDevIdP, client: aiohttp.ClientSession, tenant: str
) -> None:
    async with client.get(discovery_url(idp, tenant)) as resp:
        assert resp.status == 200
        metadata = await resp.json()
    issuer_tid = tenant if tenant == TENANT_A else "{tenantid}"
    assert metadata["issuer"] == f"{idp.url}/{issuer_tid}/v2.0"
    base = f"{idp.url}/{tenant}"
    assert metadata["authorization_endpoint"] == f"{base}/oauth2/v2.0/authorize"
    assert metadata["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    assert metadata["jwks_uri"] == f"{base}/discovery/v2.0/keys"
    assert metadata["end_session_endpoint"] == f"{base}/oauth2/v2.0/logout"
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["response_modes_supported"] == ["query", "form_post"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "client_secret_post" in metadata["token_endpoint_auth_methods_supported"]
    async with client.get(metadata["jwks_uri"]) as resp:
        jwks = await resp.json()
    [key] = jwks["keys"]
    assert (key["kty"], key["use"], key["alg"], key["issuer"]) == (
        "RSA",
        "sig",
        "RS256",
        metadata["issuer"],
    )
    assert key["kid"] == idp.idp.signing_kid
    assert "d" not in key
    assert idp.idp.discovery_fetches == 1
    assert idp.idp.jwks_fetches == 1


async def test_unknown_tenant_is_refused(idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{idp.url}/contoso/v2.0/.well-known/openid-configuration") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_tenant"


async def test_discovery_offers_client_credentials(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    async with client.get(discovery_url(idp, TENANT_A)) as resp:
        metadata = await resp.json()
    assert metadata["grant_types_supported"] == [
        "authorization_code",
        "refresh_token",
        "client_credentials",
    ]


async def test_discovery_offers_private_key_jwt(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    url = discovery_url(cert_idp, TENANT_A)
    async with client.get(url) as resp:
        metadata = await resp.json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == ["PS256"]
    assert metadata["token_endpoint"] == token_url(cert_idp)


async def test_rotation_publishes_a_new_kid_that_then_signs(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    old_kid = idp.idp.signing_kid
    new_kid = idp.idp.rotate()
    assert new_kid != old_kid
    async with client.get(f"{idp.url}/{TENANT_A}/discovery/v2.0/keys") as resp:
        jwks = await resp.json()
    assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
    auth, body = await signed_in_tokens(client, idp, "alice")
    await verify_id_token(client, idp, body["id_token"], TENANT_A, auth.nonce)
    header = jwt.decode(body["id_token"], KeySet.import_key_set(jwks)).header
    assert header["kid"] == new_kid
    old_only: KeySetSerialization = {"keys": [key for key in jwks["keys"] if key["kid"] == old_kid]}
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(body["id_token"], KeySet.import_key_set(old_only))


async def test_unpublished_key_signs_with_an_unknown_kid(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    hidden_kid = idp.idp.rotate(publish=False)
    async with client.get(f"{idp.url}/organizations/discovery/v2.0/keys") as resp:
        jwks = await resp.json()
    assert hidden_kid not in {key["kid"] for key in jwks["keys"]}
    _, body = await signed_in_tokens(client, idp, "alice")
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(body["id_token"], KeySet.import_key_set(jwks))


async def test_id_token_hook_forges_tokens(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    idp.idp.id_token_hook = lambda header, claims: idp.idp.sign(header, {**claims, "aud": "x"})
    _, body = await signed_in_tokens(client, idp, "alice")
    assert independently_verified(idp, body["id_token"])["aud"] == "x"
    tampered = body["id_token"][:-4] + ("AAAA" if not body["id_token"].endswith("AAAA") else "BBBB")
    with pytest.raises(BadSignatureError):
        idp.idp.verify(tampered)
    with pytest.raises(pyjwt.InvalidSignatureError):
        independently_verified(idp, tampered)
