"""The Entra-shaped dev IdP over real loopback sockets (issue 3, "Dev IdP")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from unittest import mock

import aiohttp
import jwt as pyjwt
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet, KeySetSerialization
from jwt.algorithms import RSAAlgorithm
from jwt.types import Options
from yarl import URL

from iap.dev.idp import (
    SERVICES,
    STAFF_GROUP_ID,
    TENANT_A,
    TENANT_B,
    USERS,
    DemoService,
    DevIdP,
    RunningDevIdP,
    dev_idp_app,
    is_loopback,
    loopback_only,
    pkce_challenge,
    start_dev_idp,
)
from iap.domain.client_auth import (
    JWT_BEARER,
    ClientCertificate,
    assertion_form,
    client_assertion,
)

CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "dev-secret"
REDIRECT_URI = "http://127.0.0.1:9/.iap/callback"  # never contacted: redirects are captured
AFTER_LOGOUT = "http://127.0.0.1:9/signed-out"
SCOPES = "openid profile email offline_access"


@pytest.fixture
async def idp() -> AsyncIterator[RunningDevIdP]:
    running = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        post_logout_redirect_uris=[AFTER_LOGOUT],
    )
    yield running
    await running.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Authorization:
    code: str
    verifier: str
    nonce: str
    state: str


def hidden_inputs(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {name: html.unescape(value) for name, value in found}


def authorize_params(**overrides: str) -> dict[str, str]:
    verifier = secrets.token_urlsafe(48)
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": SCOPES,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
        "verifier": verifier,  # kept client-side, removed before sending
    }
    params.update(overrides)
    return params


async def sign_in(
    client: aiohttp.ClientSession, idp: RunningDevIdP, user: str, tenant: str = TENANT_A
) -> Authorization:
    """GET authorize, click the user's button (POST), capture the redirect to the client."""
    params = authorize_params()
    verifier = params.pop("verifier")
    endpoint = f"{idp.url}/{tenant}/oauth2/v2.0/authorize"
    async with client.get(endpoint, params=params) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert f'value="{user}"' in page
    form = hidden_inputs(page)
    assert form == params
    action = re.search(r'<form method="post" action="([^"]+)">', page)
    assert action is not None
    async with client.post(
        f"{idp.url}{html.unescape(action.group(1))}",
        data={**form, "user": user},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert str(location.with_query(None)) == REDIRECT_URI
    assert location.query["state"] == params["state"]
    return Authorization(location.query["code"], verifier, params["nonce"], params["state"])


async def token_request(
    client: aiohttp.ClientSession, idp: RunningDevIdP, **form: str
) -> tuple[int, dict[str, Any]]:
    data = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/token"
    async with client.post(url, data=data) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


async def redeem(
    client: aiohttp.ClientSession, idp: RunningDevIdP, auth: Authorization, **overrides: str
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
        **overrides,
    }
    return await token_request(client, idp, **form)


def independently_verified(idp: RunningDevIdP, token: str) -> dict[str, Any]:
    """The claims of ``token``, its signature checked by PyJWT with the public key that
    cryptography derives from the private key its ``kid`` names: neither the IdP's JWKS nor
    joserfc, which signed it, take part. Times and audience are the callers' to check."""
    kid = pyjwt.get_unverified_header(token)["kid"]
    [key] = [key for key in idp.idp.keys if key.kid == kid]
    public = key.private_key.public_key()
    skip: Options = {
        "verify_aud": False,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }
    return dict(pyjwt.decode(token, public, algorithms=["RS256"], options=skip))


def assert_published_as_signed(idp: RunningDevIdP, jwk: Mapping[str, Any]) -> None:
    """The JWKS entry ``jwk`` holds the public half of the private key of its ``kid``."""
    [key] = [key for key in idp.idp.keys if key.kid == jwk["kid"]]
    derived = RSAAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    members = ("kty", "n", "e")
    assert {name: jwk[name] for name in members} == {name: derived[name] for name in members}


async def verify_id_token(
    client: aiohttp.ClientSession, idp: RunningDevIdP, id_token: str, tenant: str, nonce: str | None
) -> dict[str, Any]:
    """What a relying party does: discovery, JWKS, signature, then iss/aud/nonce/tid."""
    async with client.get(f"{idp.url}/{tenant}/v2.0/.well-known/openid-configuration") as resp:
        metadata = await resp.json()
    async with client.get(metadata["jwks_uri"]) as resp:
        jwks = await resp.json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    claims = token.claims
    assert independently_verified(idp, id_token) == claims
    [key] = [k for k in jwks["keys"] if k["kid"] == token.header["kid"]]
    assert_published_as_signed(idp, key)
    issuer = metadata["issuer"].replace("{tenantid}", claims["tid"])
    assert key["issuer"].replace("{tenantid}", claims["tid"]) == issuer
    expected: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": CLIENT_ID},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "nbf": {"essential": True},
        "tid": {"essential": True, "value": claims["tid"]},
        "oid": {"essential": True},
        "sid": {"essential": True},
    }
    if nonce is not None:
        expected["nonce"] = {"essential": True, "value": nonce}
    jwt.JWTClaimsRegistry(leeway=60, **expected).validate(claims)
    return claims


@pytest.mark.parametrize("tenant", [TENANT_A, "organizations", "common"])
async def test_discovery_and_keys(
    idp: RunningDevIdP, client: aiohttp.ClientSession, tenant: str
) -> None:
    async with client.get(f"{idp.url}/{tenant}/v2.0/.well-known/openid-configuration") as resp:
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
    auth = await sign_in(client, idp, "bob")
    _, body = await redeem(client, idp, auth)
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
    params = authorize_params()
    params.pop("verifier")
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/authorize"
    async with client.get(url, params=params) as resp:
        page = await resp.text()
    assert 'value="alice"' in page
    assert 'value="eve"' not in page
    async with client.post(url, data={**params, "user": "eve"}, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers


async def test_form_post_response_mode(idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    params = authorize_params(response_mode="form_post")
    params.pop("verifier")
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/authorize"
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
    params = authorize_params(redirect_uri="https://evil.example/cb")
    params.pop("verifier")
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/authorize"
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
    params = authorize_params(**override)
    params.pop("verifier")
    if drop:
        params.pop(drop)
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/authorize"
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert location.query["error"] == "invalid_request"
    assert location.query["state"] == params["state"]
    assert "code" not in location.query


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
    form = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
    }
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/token"
    credentials = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    basic = {"Authorization": f"Basic {credentials}"}
    async with client.post(url, data=form, headers=basic) as resp:
        assert resp.status == 200


# private_key_jwt (Entra certificate credentials; RFC 7523 §3) -----------------------


@cache
def leaf(index: int) -> trustme.LeafCert:
    """RSA client certificates from one throwaway CA: 0 is registered, 1 is a stranger."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    return ca.issue_cert(f"client-{index}.iap.test", key_type=trustme.KeyType.RSA)


def certificate(index: int = 0) -> ClientCertificate:
    pems = leaf(index)
    return ClientCertificate.load(pems.cert_chain_pems[0].bytes(), pems.private_key_pem.bytes())


@pytest.fixture
async def cert_idp() -> AsyncIterator[RunningDevIdP]:
    """The dev IdP with certificate 0 registered beside the secret."""
    running = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        client_certificate_pem=leaf(0).cert_chain_pems[0].bytes(),
    )
    yield running
    await running.stop()


def token_url(idp: RunningDevIdP, tenant: str = TENANT_A) -> str:
    return f"{idp.url}/{tenant}/oauth2/v2.0/token"


def now_of(idp: RunningDevIdP) -> int:
    return int(idp.idp.clock())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def assertion_claims(idp: RunningDevIdP, **changes: Any) -> dict[str, Any]:
    """Valid RFC 7523 claims for ``idp``; a change to ``None`` drops the claim."""
    now = now_of(idp)
    claims: dict[str, Any] = {
        "aud": token_url(idp),
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "jti": secrets.token_urlsafe(32),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def sign_claims(claims: dict[str, Any], key_of: int = 0, x5t_of: int = 0) -> str:
    """PS256 over ``claims`` with certificate ``key_of``'s key, naming ``x5t_of``'s thumbprint."""
    header = {"alg": "PS256", "typ": "JWT", "x5t#S256": certificate(x5t_of).x5t_s256}
    return jwt.encode(header, claims, certificate(key_of).key, algorithms=["PS256"])


def forged(idp: RunningDevIdP, alg: str) -> str:
    """A hand-built assertion whose header names ``alg`` (HS256 keyed with the public PEM)."""
    header = {"alg": alg, "typ": "JWT", "x5t#S256": certificate().x5t_s256}
    signing_input = f"{b64json(header)}.{b64json(assertion_claims(idp))}"
    public_pem = leaf(0).cert_chain_pems[0].bytes()
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac) if alg == 'HS256' else ''}"


def tampered_signature(idp: RunningDevIdP) -> str:
    signing_input, _, signature = client_assertion(
        certificate(), client_id=CLIENT_ID, token_endpoint=token_url(idp), now=now_of(idp)
    ).rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{signing_input}.{b64(bytes(raw))}"


def tampered_payload(idp: RunningDevIdP) -> str:
    header, _, signature = sign_claims(assertion_claims(idp)).split(".")
    return f"{header}.{b64json(assertion_claims(idp, sub='someone-else'))}.{signature}"


def assertion_fields(assertion: str) -> dict[str, str]:
    return {
        "client_id": CLIENT_ID,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }


async def redeem_with(
    client: aiohttp.ClientSession,
    idp: RunningDevIdP,
    auth: Authorization,
    credentials: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Redeem ``auth`` with ``credentials`` as the only client authentication."""
    form = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
        **credentials,
    }
    async with client.post(token_url(idp), data=form, headers=headers) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


def assert_refused(
    idp: RunningDevIdP, auth: Authorization, status: int, body: dict[str, Any], code: int
) -> None:
    error = "invalid_client" if status == 401 else "invalid_request"
    assert (status, body["error"], body["error_codes"]) == (status, error, [code]), body
    assert f"AADSTS{code}:" in body["error_description"]
    assert not {"access_token", "id_token", "refresh_token"} & set(body)
    assert auth.code in idp.idp.codes  # failed client authentication does not burn the code
    assert idp.idp.code_grants == 0


async def test_discovery_offers_private_key_jwt(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    url = f"{cert_idp.url}/{TENANT_A}/v2.0/.well-known/openid-configuration"
    async with client.get(url) as resp:
        metadata = await resp.json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == ["PS256"]
    assert metadata["token_endpoint"] == token_url(cert_idp)


async def test_private_key_jwt_redeems_a_code_and_refreshes(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_form(
        certificate(), client_id=CLIENT_ID, token_endpoint=token_url(cert_idp), now=now_of(cert_idp)
    )
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert status == 200, body
    claims = await verify_id_token(client, cert_idp, body["id_token"], TENANT_A, auth.nonce)
    assert claims["oid"] == USERS["alice"].oid
    fields = assertion_form(
        certificate(), client_id=CLIENT_ID, token_endpoint=token_url(cert_idp), now=now_of(cert_idp)
    )
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **fields}
    async with client.post(token_url(cert_idp), data=refresh) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["refresh_token"] != body["refresh_token"]
    assert (cert_idp.idp.code_grants, cert_idp.idp.refresh_grants) == (1, 1)
    assert cert_idp.idp.client_assertions == 2


async def test_secret_still_works_beside_a_certificate(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    status, body = await redeem(client, cert_idp, auth)
    assert status == 200, body
    assert cert_idp.idp.client_assertions == 0


REFUSED_ASSERTIONS = [
    pytest.param(lambda idp: sign_claims(assertion_claims(idp), 1, 1), 700027, id="other-cert"),
    pytest.param(lambda idp: sign_claims(assertion_claims(idp), 1, 0), 700027, id="other-key"),
    pytest.param(tampered_signature, 700027, id="tampered-signature"),
    pytest.param(tampered_payload, 700027, id="tampered-payload"),
    pytest.param(lambda idp: forged(idp, "HS256"), 700027, id="alg-HS256"),
    pytest.param(lambda idp: forged(idp, "none"), 700027, id="alg-none"),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, aud=token_url(idp, TENANT_B))),
        70002,
        id="aud-other-tenant",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, aud=f"{idp.url}/{TENANT_A}")),
        70002,
        id="aud-not-token-endpoint",
    ),
    pytest.param(
        lambda idp: client_assertion(
            certificate(), client_id=CLIENT_ID, token_endpoint=token_url(idp), now=now_of(idp) - 900
        ),
        700024,
        id="expired",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, nbf=now_of(idp) + 120)),
        700024,
        id="nbf-ahead",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, iat=now_of(idp) + 120)),
        700024,
        id="iat-ahead",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, exp=now_of(idp) + 601)),
        700024,
        id="lifetime-over-ten-minutes",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, sub="someone-else")), 700021, id="sub"
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, iss="someone-else")), 700021, id="iss"
    ),
    pytest.param(lambda idp: sign_claims(assertion_claims(idp, jti=None)), 70002, id="no-jti"),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, exp=str(now_of(idp) + 300))),
        70002,
        id="exp-not-integer",
    ),
    pytest.param(lambda idp: "not.a.jwt", 70002, id="garbage"),
    pytest.param(lambda idp: "e30.e30", 70002, id="two-segments"),
    pytest.param(lambda idp: f"{b64(b'[]')}.e30.", 70002, id="header-not-an-object"),
]


@pytest.mark.parametrize(("make", "code"), REFUSED_ASSERTIONS)
async def test_bad_client_assertions_are_refused(
    cert_idp: RunningDevIdP,
    client: aiohttp.ClientSession,
    make: Callable[[RunningDevIdP], str],
    code: int,
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    status, body = await redeem_with(client, cert_idp, auth, assertion_fields(make(cert_idp)))
    assert_refused(cert_idp, auth, status, body, code)
    assert cert_idp.idp.client_assertions == 0


async def test_iat_is_optional(cert_idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    assertion = sign_claims(assertion_claims(cert_idp, iat=None))
    status, body = await redeem_with(client, cert_idp, auth, assertion_fields(assertion))
    assert status == 200, body


async def test_replayed_jti_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    assertion = sign_claims(assertion_claims(cert_idp, jti="once"))
    first = await sign_in(client, cert_idp, "alice")
    status, _ = await redeem_with(client, cert_idp, first, assertion_fields(assertion))
    assert status == 200
    cert_idp.idp.code_grants = 0
    for replay in (assertion, sign_claims(assertion_claims(cert_idp, jti="once"))):
        auth = await sign_in(client, cert_idp, "alice")
        status, body = await redeem_with(client, cert_idp, auth, assertion_fields(replay))
        assert_refused(cert_idp, auth, status, body, 70002)
        assert "used before" in body["error_description"]
    assert cert_idp.idp.client_assertions == 1


async def test_assertion_with_a_secret_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    status, body = await redeem_with(
        client, cert_idp, auth, {**fields, "client_secret": CLIENT_SECRET}
    )
    assert_refused(cert_idp, auth, status, body, 90023)
    credentials = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    basic = {"Authorization": f"Basic {credentials}"}
    status, body = await redeem_with(client, cert_idp, auth, fields, headers=basic)
    assert_refused(cert_idp, auth, status, body, 90023)
    fields["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert_refused(cert_idp, auth, status, body, 70002)
    assert cert_idp.idp.client_assertions == 0


async def test_assertion_without_a_registered_certificate_is_refused(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    fields = assertion_form(
        certificate(), client_id=CLIENT_ID, token_endpoint=token_url(idp), now=now_of(idp)
    )
    status, body = await redeem_with(client, idp, auth, fields)
    assert_refused(idp, auth, status, body, 700027)


async def test_assertion_for_an_unknown_client_id_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    fields["client_id"] = "11111111-0000-4000-8000-000000000000"
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert (status, body["error"], body["error_codes"]) == (400, "unauthorized_client", [700016])
    assert auth.code in cert_idp.idp.codes


def test_a_non_rsa_certificate_cannot_be_registered() -> None:
    ec_leaf = trustme.CA().issue_cert("client.iap.test")
    with pytest.raises(ValueError, match="RSA"):
        dev_idp_app(
            "http://127.0.0.1:8081",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[REDIRECT_URI],
            client_certificate_pem=ec_leaf.cert_chain_pems[0].bytes(),
        )


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


async def test_groups_overage_and_graph_stand_in(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "olivia")
    _, body = await redeem(client, idp, auth)
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
    auth = await sign_in(client, idp, "eve", tenant=TENANT_B)
    _, body = await redeem(client, idp, auth)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    async with client.post(url, json={}, headers=bearer) as resp:
        assert resp.status == 404
    assert idp.idp.graph_calls == 0


async def test_rotation_publishes_a_new_kid_that_then_signs(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    old_kid = idp.idp.signing_kid
    new_kid = idp.idp.rotate()
    assert new_kid != old_kid
    async with client.get(f"{idp.url}/{TENANT_A}/discovery/v2.0/keys") as resp:
        jwks = await resp.json()
    assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
    auth = await sign_in(client, idp, "alice")
    _, body = await redeem(client, idp, auth)
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
    auth = await sign_in(client, idp, "alice")
    _, body = await redeem(client, idp, auth)
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(body["id_token"], KeySet.import_key_set(jwks))


async def test_id_token_hook_forges_tokens(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    idp.idp.id_token_hook = lambda header, claims: idp.idp.sign(header, {**claims, "aud": "x"})
    auth = await sign_in(client, idp, "alice")
    _, body = await redeem(client, idp, auth)
    assert independently_verified(idp, body["id_token"])["aud"] == "x"
    tampered = body["id_token"][:-4] + ("AAAA" if not body["id_token"].endswith("AAAA") else "BBBB")
    with pytest.raises(BadSignatureError):
        idp.idp.verify(tampered)
    with pytest.raises(pyjwt.InvalidSignatureError):
        independently_verified(idp, tampered)


async def test_logout_redirects_only_to_registered_uris(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    _, body = await redeem(client, idp, auth)
    claims = independently_verified(idp, body["id_token"])
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/logout"
    params = {
        "id_token_hint": body["id_token"],
        "post_logout_redirect_uri": AFTER_LOGOUT,
        "state": "s1",
    }
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == f"{AFTER_LOGOUT}?state=s1"
    assert idp.idp.logouts == [claims["sid"]]
    async with client.post(url, data=params, allow_redirects=False) as resp:
        assert resp.status == 302
    params["post_logout_redirect_uri"] = "https://evil.example/"
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 400
    params = {"id_token_hint": "not.a.token", "post_logout_redirect_uri": AFTER_LOGOUT}
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 400
    async with client.get(url, allow_redirects=False) as resp:
        assert resp.status == 200
        assert "signed out" in await resp.text()


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("203.0.113.7", False),
        ("::ffff:203.0.113.7", False),
        ("2001:db8::1", False),
        ("", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_is_loopback(remote: str | None, allowed: bool) -> None:
    assert is_loopback(remote) is allowed


@pytest.mark.parametrize(("peer", "status"), [("203.0.113.7", 403), ("127.0.0.1", 200)])
async def test_middleware_refuses_non_loopback_peers(peer: str, status: int) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/organizations/discovery/v2.0/keys", transport=transport)
    assert request.remote == peer

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    response = await loopback_only(request, handler)
    assert response.status == status


def test_refuses_a_non_loopback_base_url() -> None:
    with pytest.raises(ValueError, match="loopback"):
        dev_idp_app(
            "http://0.0.0.0:8081",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[REDIRECT_URI],
        )


# client credentials: Entra app-only access tokens (RFC 6749 §4.4) -------------------

API = "api://edge"
APP_ONLY_RESPONSE = {"token_type", "expires_in", "ext_expires_in", "access_token"}


async def service_token(
    client: aiohttp.ClientSession,
    idp: RunningDevIdP,
    service: DemoService,
    *,
    tenant: str | None = None,
    basic: bool = False,
    fields: Mapping[str, str | None] | None = None,
    **form: str | None,
) -> tuple[int, dict[str, Any]]:
    """Ask ``tenant``'s (default: the service's) token endpoint for an app-only token.

    The secret goes in the form (``client_secret_post``) or, with ``basic``, the header;
    a ``fields`` or ``form`` value overrides a field and ``None`` drops it.
    """
    data: dict[str, str | None] = {"grant_type": "client_credentials", "scope": f"{API}/.default"}
    headers = {}
    if basic:
        credentials = base64.b64encode(f"{service.client_id}:{service.secret}".encode()).decode()
        headers["Authorization"] = f"Basic {credentials}"
    else:
        data |= {"client_id": service.client_id, "client_secret": service.secret}
    data |= {**(fields or {}), **form}
    sent = {name: value for name, value in data.items() if value is not None}
    url = token_url(idp, tenant or service.tid)
    async with client.post(url, data=sent, headers=headers) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


async def verify_access_token(
    client: aiohttp.ClientSession, idp: RunningDevIdP, access_token: str, tenant: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What an API does: the tenant's discovery and JWKS, the signature, ``aud`` and times.

    Returns the token's claims and the published key that verified it.
    """
    async with client.get(f"{idp.url}/{tenant}/v2.0/.well-known/openid-configuration") as resp:
        metadata = await resp.json()
    async with client.get(metadata["jwks_uri"]) as resp:
        jwks = await resp.json()
    token = jwt.decode(access_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert (token.header["alg"], token.header["kid"]) == ("RS256", idp.idp.signing_kid)
    assert independently_verified(idp, access_token) == token.claims
    [key] = [k for k in jwks["keys"] if k["kid"] == token.header["kid"]]
    assert_published_as_signed(idp, key)
    jwt.JWTClaimsRegistry(
        leeway=60,
        aud={"essential": True, "value": API},
        exp={"essential": True},
        nbf={"essential": True},
        iat={"essential": True},
    ).validate(token.claims)
    return token.claims, key


def without_times(claims: dict[str, Any]) -> dict[str, Any]:
    """``claims`` minus ``iat``/``nbf``/``exp`` (checked apart) and the random ``uti``."""
    assert all(type(claims[name]) is int for name in ("iat", "nbf", "exp"))
    assert claims["nbf"] == claims["iat"]
    assert isinstance(claims["uti"], str)
    assert claims["uti"]
    return {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp", "uti")}


async def test_discovery_offers_client_credentials(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{idp.url}/{TENANT_A}/v2.0/.well-known/openid-configuration") as resp:
        metadata = await resp.json()
    assert metadata["grant_types_supported"] == [
        "authorization_code",
        "refresh_token",
        "client_credentials",
    ]


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
    form = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
    }
    status, body = await service_token(client, idp, orders, fields={**form, "scope": None})
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [70000])
    _, tokens = await redeem(client, idp, await sign_in(client, idp, "alice"))
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, body = await service_token(client, idp, orders, fields={**refresh, "scope": None})
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [70000])
    assert (idp.idp.code_grants, idp.idp.refresh_grants) == (1, 0)
    assert idp.idp.client_credentials_grants == 0


async def test_a_service_has_no_certificate_credential(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    orders = SERVICES["orders-service"]
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    form = {**fields, "client_id": orders.client_id, "client_secret": None}
    status, body = await service_token(client, cert_idp, orders, fields=form)
    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [700027])
    assert cert_idp.idp.client_credentials_grants == 0


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
