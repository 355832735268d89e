"""The dev IdP on a real loopback socket and a relying party's steps against it.

Fixtures: ``idp`` (the dev IdP with one registered client and its secret) and ``client``
(an aiohttp session); ``tests.support.client_assertions`` adds ``cert_idp``, and
``running_idp`` starts one with other options (its own ``directory`` of users, say). Test modules
import the fixtures they use and name them in ``__all__``.

Helpers run the code flow step by step (``sign_in`` clicks through the authorize page and
captures the redirect; ``redeem`` and ``token_request`` call the token endpoint with the
client secret), and check what comes back the way a relying party or an API would
(``verify_id_token``, ``verify_access_token``): discovery, the tenant's JWKS, then the
signature, which ``independently_verified`` checks again with PyJWT and the private key's
own public half, so neither the IdP's JWKS nor joserfc vouch for themselves. Every token
endpoint answer is asserted ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from jwt.algorithms import RSAAlgorithm
from jwt.types import Options
from yarl import URL

from iap.dev.idp import TENANT_A, DemoService, RunningDevIdP, pkce_challenge, start_dev_idp

CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "dev-secret"
REDIRECT_URI = "http://127.0.0.1:9/.iap/callback"  # never contacted: redirects are captured
AFTER_LOGOUT = "http://127.0.0.1:9/signed-out"
SCOPES = "openid profile email offline_access"
#: the resource the client-credentials tests ask tokens for
API = "api://edge"
APP_ONLY_RESPONSE = {"token_type", "expires_in", "ext_expires_in", "access_token"}


@contextlib.asynccontextmanager
async def running_idp(**options: Any) -> AsyncIterator[RunningDevIdP]:
    """The dev IdP on a free loopback port for the client ``CLIENT_ID``; ``options`` go to
    ``start_dev_idp`` (a certificate, a ``directory``...). It stops on the way out."""
    running = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        **options,
    )
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def idp() -> AsyncIterator[RunningDevIdP]:
    async with running_idp(post_logout_redirect_uris=[AFTER_LOGOUT]) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# URLs and request parts -----------------------------------------------------------


def discovery_url(idp: RunningDevIdP, tenant: str = TENANT_A) -> str:
    return f"{idp.url}/{tenant}/v2.0/.well-known/openid-configuration"


def authorize_url(idp: RunningDevIdP, tenant: str = TENANT_A) -> str:
    return f"{idp.url}/{tenant}/oauth2/v2.0/authorize"


def token_url(idp: RunningDevIdP, tenant: str = TENANT_A) -> str:
    return f"{idp.url}/{tenant}/oauth2/v2.0/token"


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    """An ``Authorization`` header for ``client_secret_basic``."""
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


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


def request_params(**overrides: str) -> dict[str, str]:
    """:func:`authorize_params` as sent: without the client-side ``verifier``."""
    params = authorize_params(**overrides)
    params.pop("verifier")
    return params


# the code flow ----------------------------------------------------------------------


@dataclass
class Authorization:
    code: str
    verifier: str
    nonce: str
    state: str


def code_form(auth: Authorization, **overrides: str) -> dict[str, str]:
    """The ``authorization_code`` grant fields for ``auth``, without client authentication."""
    return {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
        **overrides,
    }


async def sign_in(
    client: aiohttp.ClientSession, idp: RunningDevIdP, user: str, tenant: str = TENANT_A
) -> Authorization:
    """GET authorize, click the user's button (POST), capture the redirect to the client."""
    params = authorize_params()
    verifier = params.pop("verifier")
    async with client.get(authorize_url(idp, tenant), params=params) as resp:
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
    return await post_token(client, token_url(idp), data)


async def post_token(
    client: aiohttp.ClientSession,
    url: str,
    data: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a token request as it is; the status and the JSON body of a no-store answer."""
    async with client.post(url, data=data, headers=headers) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


async def redeem(
    client: aiohttp.ClientSession, idp: RunningDevIdP, auth: Authorization, **overrides: str
) -> tuple[int, dict[str, Any]]:
    return await token_request(client, idp, **code_form(auth, **overrides))


async def signed_in_tokens(
    client: aiohttp.ClientSession, idp: RunningDevIdP, user: str, tenant: str = TENANT_A
) -> tuple[Authorization, dict[str, Any]]:
    """:func:`sign_in` then :func:`redeem`: the authorization and the token response body."""
    auth = await sign_in(client, idp, user, tenant)
    _, body = await redeem(client, idp, auth)
    return auth, body


# what a relying party or an API checks ------------------------------------------------


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


async def provider_documents(
    client: aiohttp.ClientSession, idp: RunningDevIdP, tenant: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``tenant``'s discovery document and the JWKS it points at."""
    async with client.get(discovery_url(idp, tenant)) as resp:
        metadata = await resp.json()
    async with client.get(metadata["jwks_uri"]) as resp:
        jwks = await resp.json()
    return metadata, jwks


async def verify_id_token(
    client: aiohttp.ClientSession, idp: RunningDevIdP, id_token: str, tenant: str, nonce: str | None
) -> dict[str, Any]:
    """What a relying party does: discovery, JWKS, signature, then iss/aud/nonce/tid."""
    metadata, jwks = await provider_documents(client, idp, tenant)
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


async def verify_access_token(
    client: aiohttp.ClientSession, idp: RunningDevIdP, access_token: str, tenant: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What an API does: the tenant's discovery and JWKS, the signature, ``aud`` and times.

    Returns the token's claims and the published key that verified it.
    """
    _, jwks = await provider_documents(client, idp, tenant)
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


# client credentials -------------------------------------------------------------------


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
        headers = basic_auth(service.client_id, service.secret)
    else:
        data |= {"client_id": service.client_id, "client_secret": service.secret}
    data |= {**(fields or {}), **form}
    sent = {name: value for name, value in data.items() if value is not None}
    return await post_token(client, token_url(idp, tenant or service.tid), sent, headers)


def without_times(claims: dict[str, Any]) -> dict[str, Any]:
    """``claims`` minus ``iat``/``nbf``/``exp`` (checked apart) and the random ``uti``."""
    assert all(type(claims[name]) is int for name in ("iat", "nbf", "exp"))
    assert claims["nbf"] == claims["iat"]
    assert isinstance(claims["uti"], str)
    assert claims["uti"]
    return {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp", "uti")}
