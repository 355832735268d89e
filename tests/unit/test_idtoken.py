"""ID-token validation: one refusal per rule (issue 3), and a valid token accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey

from iap.dev.idp import DEMO_USERS, TENANT_A, TENANT_B, USERS, DevIdP
from iap.domain.idtoken import Claims, InvalidIdToken, validate

NOW = 1_700_000_000
CLIENT_ID = "8c4a1e2f-0000-4000-8000-00000000c1d0"
NONCE = "n-0S6_WzA2Mj"
BASE = "http://127.0.0.1:1"

IDP = DevIdP(BASE, CLIENT_ID, "secret", (f"{BASE}/cb",), clock=lambda: float(NOW))
ALICE = USERS["alice"]
BOB = USERS["bob"]
EVE = USERS["eve"]
assert ALICE in DEMO_USERS


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def claims(user: Any = ALICE, **changes: Any) -> dict[str, Any]:
    result = IDP.id_token_claims(user, nonce=NONCE, sid="sid-1")
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def sign(payload: dict[str, Any], **header: Any) -> str:
    return IDP.sign(header, payload)


def check(
    token: str,
    *,
    tenant: str = TENANT_A,
    jwks: dict[str, Any] | None = None,
    issuer: str | None = None,
    allowed: tuple[str, ...] = (TENANT_A,),
    nonce: str = NONCE,
    now: int = NOW,
) -> Claims:
    return validate(
        token,
        jwks=IDP.jwks(tenant) if jwks is None else jwks,
        issuer=IDP.issuer(tenant) if issuer is None else issuer,
        client_id=CLIENT_ID,
        nonce=nonce,
        allowed_tenants=allowed,
        now=now,
    )


def refused(reason: str, call: Callable[[], object]) -> None:
    with pytest.raises(InvalidIdToken) as caught:
        call()
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


# accepted ---------------------------------------------------------------------------


def test_valid_token_is_accepted_with_its_claims() -> None:
    token = sign(claims())
    result = check(token)
    assert result.tid == TENANT_A
    assert result.oid == ALICE.oid
    assert result.sub == IDP.subject(ALICE)
    assert result.name == "Alice Admin"
    assert result.email == result.preferred_username == "alice@contoso.example"
    assert result.roles == ("Edge.Admin",)
    assert result.groups == ()
    assert result.sid == "sid-1"
    assert result.raw["nonce"] == NONCE
    assert token not in repr(result)


def test_groups_are_returned() -> None:
    assert check(sign(claims(BOB))).groups == tuple(BOB.groups)


def test_skew_is_tolerated_both_ways() -> None:
    token = sign(claims(exp=NOW - 60, iat=NOW + 60, nbf=NOW + 60))
    assert check(token).tid == TENANT_A


def test_organizations_template_is_substituted_with_tid() -> None:
    token = sign(claims(EVE))
    result = check(token, tenant="organizations", allowed=(TENANT_A, TENANT_B))
    assert result.tid == TENANT_B
    assert "{tenantid}" in IDP.issuer("organizations")


def test_audience_list_with_azp_is_accepted() -> None:
    token = sign(claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))
    assert check(token).tid == TENANT_A


# claims refused ---------------------------------------------------------------------


def test_wrong_audience_is_refused() -> None:
    refused("aud", lambda: check(sign(claims(aud="someone-else"))))


def test_audience_list_without_azp_is_refused() -> None:
    refused("aud", lambda: check(sign(claims(aud=[CLIENT_ID, "other"]))))


def test_foreign_azp_is_refused() -> None:
    refused("aud", lambda: check(sign(claims(azp="someone-else"))))


def test_wrong_issuer_is_refused() -> None:
    token = sign(claims(iss=f"{BASE}/{TENANT_B}/v2.0"))
    refused("iss", lambda: check(token))


def test_issuer_of_another_tenant_under_template_is_refused() -> None:
    # tid says tenant A but iss names tenant B: the substituted template differs
    token = sign(claims(iss=f"{BASE}/{TENANT_B}/v2.0"))
    refused("iss", lambda: check(token, tenant="organizations", allowed=(TENANT_A, TENANT_B)))


def test_per_key_issuer_mismatch_is_refused() -> None:
    jwks = IDP.jwks("organizations")
    for key in jwks["keys"]:
        key["issuer"] = f"{BASE}/{TENANT_B}/v2.0"  # this key may only sign for tenant B
    token = sign(claims())
    refused(
        "iss",
        lambda: check(token, tenant="organizations", jwks=jwks, allowed=(TENANT_A, TENANT_B)),
    )
    assert check(sign(claims(EVE)), tenant="organizations", jwks=jwks, allowed=(TENANT_B,))


def test_expired_token_is_refused() -> None:
    refused("exp", lambda: check(sign(claims(exp=NOW - 121))))


def test_missing_or_fractional_exp_is_refused() -> None:
    refused("exp", lambda: check(sign(claims(exp=None))))
    refused("exp", lambda: check(sign(claims(exp=NOW + 10.5))))
    refused("exp", lambda: check(sign(claims(exp=str(NOW + 600)))))


def test_nbf_in_the_future_is_refused() -> None:
    refused("nbf", lambda: check(sign(claims(nbf=NOW + 121))))


def test_iat_in_the_future_is_refused() -> None:
    refused("iat", lambda: check(sign(claims(iat=NOW + 121, nbf=None))))


def test_wrong_nonce_is_refused() -> None:
    refused("nonce", lambda: check(sign(claims(nonce="other"))))
    refused("nonce", lambda: check(sign(claims(nonce=None))))
    refused("nonce", lambda: check(sign(claims(nonce="")), nonce=""))


def test_tenant_not_allowed_is_refused() -> None:
    token = sign(claims(EVE))
    refused("tenant", lambda: check(token, tenant="organizations", allowed=(TENANT_A,)))


def test_a_refused_tenant_names_who_was_refused_and_other_refusals_do_not() -> None:
    """The token is genuine (signature, issuer, audience, times, nonce checked), so the audit
    line may name its subject and tenant; a token refused earlier names nobody."""
    with pytest.raises(InvalidIdToken) as tenant:
        check(sign(claims(EVE)), tenant="organizations", allowed=(TENANT_A,))
    assert tenant.value.who == (f"{EVE.tid}:{EVE.oid}", EVE.tid)
    with pytest.raises(InvalidIdToken) as nonce:
        check(sign(claims(EVE)), tenant="organizations", allowed=(TENANT_A,), nonce="other")
    assert (nonce.value.reason, nonce.value.who) == ("nonce", (None, None))


# header and signature refused -------------------------------------------------------


def test_alg_none_is_refused() -> None:
    header = {"alg": "none", "typ": "JWT", "kid": IDP.signing_kid}
    token = f"{b64json(header)}.{b64json(claims())}."
    refused("alg", lambda: check(token))
    token = f"{b64json({'alg': 'none'})}.{b64json(claims())}."
    refused("alg", lambda: check(token))


def test_hs256_keyed_with_the_public_key_pem_is_refused() -> None:
    # the classic key-confusion attack (CVE-2015-9235): HMAC secret = the RSA public key
    [key] = [k for k in IDP.keys if k.kid == IDP.signing_kid]
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}."
    signing_input += b64json(claims())
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    refused("alg", lambda: check(f"{signing_input}.{b64(mac)}"))


def test_unknown_kid_is_refused_with_reason_kid() -> None:
    previous = IDP.signing_kid
    IDP.rotate(publish=False)
    try:
        token = sign(claims())
    finally:
        IDP.signing_kid = previous
    refused("kid", lambda: check(token))


def test_missing_kid_is_refused() -> None:
    raw = sign(claims())
    signing_input = f"{b64json({'alg': 'RS256'})}.{raw.split('.')[1]}"
    refused("header", lambda: check(f"{signing_input}.{raw.split('.')[2]}"))


def _attacker_token(header_member: str) -> tuple[str, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker = RSAKey.import_key(private, {"kid": IDP.signing_kid})
    public = attacker.as_dict(private=False)
    values = {
        "jwk": public,
        "jku": "https://evil.example/keys",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIB"],
    }
    header = {"alg": "RS256", "kid": IDP.signing_kid, header_member: values[header_member]}
    return jwt.encode(header, claims(), attacker, algorithms=["RS256"]), public


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_or_remote_key_headers_are_refused(member: str) -> None:
    token, public = _attacker_token(member)
    refused("header", lambda: check(token))
    # even when the JWKS also holds the attacker's key under that kid, the header decides
    refused("header", lambda: check(token, jwks={"keys": [public]}))


def test_token_signed_by_another_key_with_a_known_kid_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker = RSAKey.import_key(private, {"kid": IDP.signing_kid})
    token = jwt.encode({"alg": "RS256", "kid": IDP.signing_kid}, claims(), attacker)
    refused("signature", lambda: check(token))


def test_tampered_payload_is_refused() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64json(claims(oid=BOB.oid))
    refused("signature", lambda: check(f"{header}.{forged}.{signature}"))


def test_non_rsa_key_with_the_kid_is_refused() -> None:
    token = sign(claims())
    jwks = {"keys": [{"kty": "oct", "kid": IDP.signing_kid, "k": b64(b"x" * 32)}]}
    refused("kid", lambda: check(token, jwks=jwks))


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.e30=", "W10.e30.", "e30.W10.sig"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidIdToken) as caught:
        check(token)
    assert caught.value.reason in {"malformed", "header", "alg"}


def test_duplicate_header_members_are_refused() -> None:
    raw = sign(claims())
    header = b64(b'{"alg":"none","alg":"RS256","kid":"%s"}' % IDP.signing_kid.encode())
    _, payload, signature = raw.split(".")
    refused("header", lambda: check(f"{header}.{payload}.{signature}"))


def test_message_never_contains_the_token() -> None:
    token = sign(claims(aud="someone-else"))
    with pytest.raises(InvalidIdToken) as caught:
        check(token)
    for part in token.split("."):
        assert part not in str(caught.value)


# properties -------------------------------------------------------------------------

_VALID = sign(claims())
_HEAD, _BODY, _SIGNATURE = _VALID.split(".")


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(_SIGNATURE) - 1),
    replacement=st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
)
def test_any_single_change_in_the_signature_is_refused(index: int, replacement: str) -> None:
    if replacement == _SIGNATURE[index]:
        return
    signature = _SIGNATURE[:index] + replacement + _SIGNATURE[index + 1 :]
    with pytest.raises(InvalidIdToken) as caught:
        check(f"{_HEAD}.{_BODY}.{signature}")
    assert caught.value.reason in {"signature", "malformed"}


def test_the_last_signature_character_cannot_be_swapped_for_a_bit_twin() -> None:
    # 256 signature bytes leave 2 unused bits in the last base64url character; a decoder
    # that ignores them would accept a second spelling of the same token
    last = _SIGNATURE[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    refused("malformed", lambda: check(f"{_HEAD}.{_BODY}.{_SIGNATURE[:-1]}{twin}"))


def test_ambiguous_kid_in_the_jwks_is_refused() -> None:
    token = sign(claims())
    [published] = [k for k in IDP.jwks(TENANT_A)["keys"] if k["kid"] == IDP.signing_kid]
    _, attacker = _attacker_token("jwk")
    refused("kid", lambda: check(token, jwks={"keys": [published, attacker]}))
