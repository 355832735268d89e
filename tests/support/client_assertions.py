"""``private_key_jwt`` against the dev IdP: client certificates and assertions, good and bad.

``leaf(0)`` is the certificate the ``cert_idp`` fixture registers beside the client secret,
``leaf(1)`` a stranger from the same throwaway CA. ``assertion_claims`` builds valid RFC 7523
claims for an IdP and ``sign_claims`` signs them (PS256) with any certificate's key while
naming any certificate's thumbprint; ``forged``, ``tampered_signature`` and
``tampered_payload`` build the assertions a careless verifier would accept.
``redeem_with`` redeems a code with nothing but the given credentials, and
``assert_refused`` checks a refusal left the code unredeemed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import aiohttp
import pytest
import trustme
from joserfc import jwt

from iap.dev.idp import RunningDevIdP
from iap.domain.client_auth import JWT_BEARER, ClientCertificate, client_assertion
from tests.support.dev_idp import (
    CLIENT_ID,
    Authorization,
    code_form,
    post_token,
    running_idp,
    token_url,
)


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
    async with running_idp(client_certificate_pem=leaf(0).cert_chain_pems[0].bytes()) as running:
        yield running


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
        certificate(),
        jti=secrets.token_urlsafe(32),
        client_id=CLIENT_ID,
        token_endpoint=token_url(idp),
        now=now_of(idp),
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
    return await post_token(client, token_url(idp), {**code_form(auth), **credentials}, headers)


def assert_refused(
    idp: RunningDevIdP, auth: Authorization, status: int, body: dict[str, Any], code: int
) -> None:
    error = "invalid_client" if status == 401 else "invalid_request"
    assert (status, body["error"], body["error_codes"]) == (status, error, [code]), body
    assert f"AADSTS{code}:" in body["error_description"]
    assert not {"access_token", "id_token", "refresh_token"} & set(body)
    assert auth.code in idp.idp.codes  # failed client authentication does not burn the code
    assert idp.idp.code_grants == 0
