"""JWS signing and verifying (RFC 7515): the one module of iap's proxy and mesh SDK that
imports joserfc. ``tokens`` (ES256, iap's own tokens), ``idtoken`` (RS256, Entra's ID and
access tokens) and ``client_auth`` (PS256 client assertions) call it.

Invariants:
- Every call names exactly one algorithm and one key: joserfc never picks a key from a set
  nor an algorithm from a header (RFC 8725 §2.1, §3.1). Callers judge the header and choose
  the key by ``kid`` before they get here.
- Every failure to import a key is :class:`KeyRefused`, every failure to verify is
  :class:`BadSignature`; both are ValueErrors whose messages hold neither the token nor key
  material (joserfc's own exception is dropped).
- Pure: no IO, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "BadSignature",
    "ECKey",
    "KeyRefused",
    "RSAKey",
    "ec_key",
    "ec_public_key",
    "rsa_key",
    "rsa_public_key",
    "sign",
    "verified_payload",
]

Key = ECKey | RSAKey


class KeyRefused(ValueError):
    """A JWK that does not make a usable key."""

    def __init__(self) -> None:
        super().__init__("unusable key")


class BadSignature(ValueError):
    """A token whose signature does not verify with the given key and algorithm."""

    def __init__(self) -> None:
        super().__init__("signature does not verify")


def ec_key(private: ec.EllipticCurvePrivateKey) -> ECKey:
    """The JWK of an EC private key (its ``thumbprint()`` is the RFC 7638 ``kid``)."""
    return ECKey.import_key(private)


def ec_public_key(crv: str, x: str, y: str) -> ECKey:
    """The EC public key of these members only; :class:`KeyRefused` if they make none."""
    try:
        return ECKey.import_key({"kty": "EC", "crv": crv, "x": x, "y": y})
    except (JoseError, ValueError, TypeError):
        raise KeyRefused from None


def rsa_key(private: rsa.RSAPrivateKey) -> RSAKey:
    """The JWK of an RSA private key."""
    return RSAKey.import_key(private)


def rsa_public_key(jwk: Mapping[str, Any]) -> RSAKey:
    """The RSA key of a published JWK; :class:`KeyRefused` if it makes none."""
    try:
        return RSAKey.import_key(dict(jwk))
    except (JoseError, ValueError, TypeError):
        raise KeyRefused from None


def sign(header: Mapping[str, Any], claims: Mapping[str, Any], key: Key, algorithm: str) -> str:
    """The compact JWS of the JSON ``claims`` under ``header``, signed with ``algorithm``."""
    return jwt.encode(dict(header), dict(claims), key, algorithms=[algorithm])


def verified_payload(token: str, key: Key, algorithm: str) -> bytes:
    """The payload of ``token`` once its signature checks out with ``key`` under exactly
    ``algorithm``; :class:`BadSignature` otherwise."""
    try:
        return jws.deserialize_compact(token, key, algorithms=[algorithm]).payload
    except (JoseError, ValueError, TypeError):
        raise BadSignature from None
