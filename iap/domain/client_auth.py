"""OAuth client authentication by certificate: ``private_key_jwt`` as Entra ID documents it.

Instead of a ``client_secret``, the client sends ``client_assertion_type`` (the RFC 7523
§2.2 JWT bearer URN) and ``client_assertion``, a JWT it signs with the private key of a
certificate registered on the application (RFC 7521 §4.2, RFC 7523 §3; Entra "certificate
credentials").

Invariants:
- The assertion is PS256 only, and its header is exactly ``alg``, ``typ: JWT`` and
  ``x5t#S256``, the base64url (no padding) SHA-256 of the certificate's DER, which is how
  Entra finds the registered certificate. The claims are ``aud`` (the token endpoint URL),
  ``iss == sub == client_id``, a random unique ``jti`` and integer ``iat``, ``nbf`` and
  ``exp``, valid for at most :data:`MAX_LIFETIME` seconds.
- A :class:`ClientCertificate` exists only for an RSA certificate of at least 2048 bits
  whose public key is that of the private key it holds; everything is checked in
  :meth:`ClientCertificate.load`, at startup, never per request.
- Neither an error message nor a ``repr`` contains key material: load errors say what is
  wrong and drop the parser's exception, and the ``repr`` shows the thumbprint only.
- Pure: no IO; the clock and the ``jti`` (256 random bits, drawn by the OAuth adapter) are
  arguments. The signature is made by ``iap.domain.jose``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from iap.domain import jose
from iap.domain.jose import RSAKey

#: RFC 7523 §2.2: the ``client_assertion_type`` of a JWT bearer client assertion.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHM = "PS256"
#: Entra refuses client assertions valid for longer than ten minutes.
MAX_LIFETIME = 600
DEFAULT_LIFETIME = 300
MIN_KEY_BITS = 2048


def thumbprint(certificate_der: bytes) -> str:
    """The ``x5t#S256`` of a certificate: base64url, unpadded, SHA-256 of its DER (RFC 7515)."""
    digest = hashlib.sha256(certificate_der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ClientCertificate:
    """The private key of a registered client certificate and that certificate's thumbprint."""

    key: RSAKey = field(repr=False, compare=False)
    x5t_s256: str

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> ClientCertificate:
        """Load a PEM certificate and its unencrypted PEM private key (RSA, ≥ 2048 bits).

        Raises ``ValueError`` naming the problem: an unreadable PEM, a key or certificate
        that is not RSA (PS256 needs RSA), a short key, or a key that is not the
        certificate's.
        """
        certificate = _load_certificate(cert_pem)
        private = _load_private_key(key_pem)
        public = certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("client certificate: its public key is not RSA (PS256 needs RSA)")
        if public.public_numbers() != private.public_key().public_numbers():
            raise ValueError("client certificate: the private key does not match the certificate")
        der = certificate.public_bytes(serialization.Encoding.DER)
        return cls(jose.rsa_key(private), thumbprint(der))


def _load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError("client certificate: not a readable PEM certificate") from None


def _load_private_key(key_pem: bytes) -> rsa.RSAPrivateKey:
    # ``from None``: the parser's exception could describe or quote the key material
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            "client certificate key: not a readable unencrypted PEM private key"
        ) from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError("client certificate key: not an RSA key (PS256 needs RSA)")
    if private.key_size < MIN_KEY_BITS:
        raise ValueError(f"client certificate key: RSA keys need at least {MIN_KEY_BITS} bits")
    return private


def client_assertion(
    certificate: ClientCertificate,
    *,
    client_id: str,
    token_endpoint: str,
    now: int,
    jti: str,
    lifetime: int = DEFAULT_LIFETIME,
) -> str:
    """The compact PS256 JWS that authenticates ``client_id`` at ``token_endpoint``.

    ``aud`` is the token endpoint URL and ``iss == sub == client_id`` (RFC 7523 §3); it is
    valid from ``now`` for ``lifetime`` seconds (1 to :data:`MAX_LIFETIME`). ``jti`` must be
    fresh and unguessable for every assertion (the caller draws 256 random bits), so that the
    IdP can refuse a replay (RFC 7523 §3, item 7).
    """
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"client assertion lifetime must be 1 to {MAX_LIFETIME} seconds")
    header = {"alg": ALGORITHM, "typ": "JWT", "x5t#S256": certificate.x5t_s256}
    claims = {
        "aud": token_endpoint,
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    return jose.sign(header, claims, certificate.key, ALGORITHM)


def assertion_form(
    certificate: ClientCertificate,
    *,
    client_id: str,
    token_endpoint: str,
    now: int,
    jti: str,
    lifetime: int = DEFAULT_LIFETIME,
) -> dict[str, str]:
    """The token request fields that authenticate the client; merge them into the form body.

    ``client_id`` is optional with an assertion (RFC 7521 §4.2) but Entra documents it, and
    it must then equal the assertion's ``sub``.
    """
    assertion = client_assertion(
        certificate,
        client_id=client_id,
        token_endpoint=token_endpoint,
        now=now,
        jti=jti,
        lifetime=lifetime,
    )
    return {
        "client_id": client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
