"""iap.domain.client_auth: Entra certificate credentials (``private_key_jwt``, RFC 7523 §3).

Everything is checked against independent code: the thumbprint with hashlib over the DER
that ``cryptography`` writes, the signature with ``cryptography``'s RSASSA-PSS directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from iap.adapters.oauth import ClientCredential
from iap.domain.client_auth import (
    JWT_BEARER,
    MAX_LIFETIME,
    ClientCertificate,
    assertion_form,
    client_assertion,
)

NOW = 1_700_000_000
CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"
TOKEN_ENDPOINT = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"


def self_signed(key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iap client")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def pem_key(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@cache
def rsa_key(index: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def rsa_material(index: int = 0) -> tuple[bytes, bytes, x509.Certificate]:
    """(certificate PEM, key PEM, certificate) of RSA key ``index``."""
    cert = self_signed(rsa_key(index))
    return cert.public_bytes(serialization.Encoding.PEM), pem_key(rsa_key(index)), cert


@cache
def loaded() -> ClientCertificate:
    cert_pem, key_pem, _ = rsa_material()
    return ClientCertificate.load(cert_pem, key_pem)


def segment(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return json.loads(segment(header)), json.loads(segment(payload)), segment(signature)


def ps256_verify(token: str, public: rsa.RSAPublicKey) -> None:
    """RFC 7518 §3.5: RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt as long as the hash."""
    signing_input, _, signature = token.rpartition(".")
    public.verify(
        segment(signature),
        signing_input.encode("ascii"),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def assertion(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "token_endpoint": TOKEN_ENDPOINT,
        "now": NOW,
        "jti": secrets.token_urlsafe(32),
        **overrides,
    }
    return client_assertion(loaded(), **arguments)


def test_header_is_exactly_alg_typ_and_the_certificate_thumbprint() -> None:
    _, _, cert = rsa_material()
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    header, _, _ = parts(assertion())
    assert header == {"alg": "PS256", "typ": "JWT", "x5t#S256": expected}
    assert "=" not in expected
    assert loaded().x5t_s256 == expected


def test_claims_follow_rfc_7523() -> None:
    _, claims, _ = parts(assertion(jti="fixed-jti"))
    assert claims == {
        "aud": TOKEN_ENDPOINT,
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "jti": "fixed-jti",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }


def test_the_oauth_client_draws_a_fresh_random_jti_per_assertion() -> None:
    credential = ClientCredential(CLIENT_ID, certificate=loaded())
    forms = [credential.form(TOKEN_ENDPOINT) for _ in range(20)]
    jtis = {parts(form["client_assertion"])[1]["jti"] for form in forms}
    assert len(jtis) == 20
    assert all(len(jti) >= 43 for jti in jtis)  # 256 bits, base64url


def test_signature_is_ps256_over_header_and_payload() -> None:
    token = assertion()
    ps256_verify(token, rsa_key(0).public_key())
    with pytest.raises(InvalidSignature):
        ps256_verify(token, rsa_key(1).public_key())
    header, _, signature = token.split(".")
    tampered = f"{header}.{base64.urlsafe_b64encode(b'{}').rstrip(b'=').decode()}.{signature}"
    with pytest.raises(InvalidSignature):
        ps256_verify(tampered, rsa_key(0).public_key())
    # PSS is randomised: two signatures of the same input differ and both verify
    again = assertion(jti=parts(token)[1]["jti"])
    assert again.rpartition(".")[0] == token.rpartition(".")[0]
    assert again != token
    ps256_verify(again, rsa_key(0).public_key())


@settings(max_examples=25, deadline=None)
@given(
    client_id=st.text(min_size=1, max_size=40),
    endpoint=st.text(min_size=1, max_size=80),
    now=st.integers(min_value=0, max_value=2**40),
    lifetime=st.integers(min_value=1, max_value=MAX_LIFETIME),
)
def test_any_claims_round_trip(client_id: str, endpoint: str, now: int, lifetime: int) -> None:
    token = assertion(client_id=client_id, token_endpoint=endpoint, now=now, lifetime=lifetime)
    _, claims, _ = parts(token)
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["aud"] == endpoint
    assert claims["exp"] - claims["nbf"] == lifetime
    assert claims["iat"] == claims["nbf"] == now
    ps256_verify(token, rsa_key(0).public_key())


@pytest.mark.parametrize("lifetime", [0, -1, MAX_LIFETIME + 1, 3600])
def test_lifetime_beyond_ten_minutes_is_refused(lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        assertion(lifetime=lifetime)


def test_assertion_form_has_the_three_fields() -> None:
    form = assertion_form(
        loaded(), client_id=CLIENT_ID, token_endpoint=TOKEN_ENDPOINT, now=NOW, jti="j"
    )
    assert set(form) == {"client_id", "client_assertion_type", "client_assertion"}
    assert form["client_id"] == CLIENT_ID
    assert form["client_assertion_type"] == JWT_BEARER
    assert JWT_BEARER == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header, claims, _ = parts(form["client_assertion"])
    assert header["alg"] == "PS256"
    assert (claims["sub"], claims["aud"], claims["exp"]) == (CLIENT_ID, TOKEN_ENDPOINT, NOW + 300)


def test_key_of_another_certificate_is_refused() -> None:
    cert_pem, _, _ = rsa_material(0)
    _, other_key, _ = rsa_material(1)
    refused_quietly(cert_pem, other_key, "private key does not match the certificate")


def test_ec_key_and_certificate_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = self_signed(key).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="not an RSA key"):
        ClientCertificate.load(cert_pem, pem_key(key))
    rsa_cert_pem, rsa_key_pem, _ = rsa_material()
    with pytest.raises(ValueError, match="not RSA"):
        ClientCertificate.load(cert_pem, rsa_key_pem)
    assert ClientCertificate.load(rsa_cert_pem, rsa_key_pem) == loaded()


def test_short_rsa_key_is_refused() -> None:
    short = rsa_key(2, bits=1024)
    cert_pem = self_signed(short).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="2048"):
        ClientCertificate.load(cert_pem, pem_key(short))


UNREADABLE = [
    b"",
    b"not PEM at all",
    b"-----BEGIN PRIVATE KEY-----\nAAAAsecret\n-----END PRIVATE KEY-----\n",
    b"-----BEGIN CERTIFICATE-----\nAAAAsecret\n-----END CERTIFICATE-----\n",
]


def refused_quietly(cert_pem: bytes, key_pem: bytes, message: str) -> None:
    """``load`` refuses with ``message``, echoes nothing and chains no parser exception."""
    with pytest.raises(ValueError, match=message) as caught:
        ClientCertificate.load(cert_pem, key_pem)
    assert "AAAA" not in str(caught.value)
    assert "BEGIN" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


@pytest.mark.parametrize("bad", UNREADABLE)
def test_unreadable_certificate_is_refused(bad: bytes) -> None:
    refused_quietly(bad, rsa_material()[1], "not a readable PEM certificate")


@pytest.mark.parametrize("bad", UNREADABLE)
def test_unreadable_key_is_refused(bad: bytes) -> None:
    refused_quietly(rsa_material()[0], bad, "not a readable unencrypted PEM private key")


def test_certificate_in_place_of_the_key_is_refused() -> None:
    cert_pem = rsa_material()[0]
    refused_quietly(cert_pem, cert_pem, "not a readable unencrypted PEM private key")


def test_encrypted_key_is_refused() -> None:
    cert_pem, _, _ = rsa_material()
    encrypted = rsa_key(0).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    with pytest.raises(ValueError, match="unencrypted"):
        ClientCertificate.load(cert_pem, encrypted)


def test_repr_hides_the_key() -> None:
    certificate = loaded()
    text = repr(certificate)
    assert certificate.x5t_s256 in text
    numbers = rsa_key(0).private_numbers()
    for secret in (numbers.d, numbers.p, numbers.q):
        assert str(secret) not in text
    assert "RSAKey" not in text
    assert "key=" not in text
    assert str(certificate) == text
