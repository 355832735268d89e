"""Signing keys of the dev IdP: RS256 key generation, the JWKS document, sign and verify.

Keys are plain joserfc ``RSAKey`` objects whose ``kid`` is their RFC 7638 thumbprint. The
published JWKS carries a per-key ``issuer`` (as Entra does for its multi-tenant authorities)
and leaves out keys marked unpublished, which lets tests present an "unknown kid". These are
stateless helpers; ``DevIdP`` owns the key list and the current signing key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


def new_key() -> RSAKey:
    """A fresh 2048-bit RS256 signing key whose ``kid`` is its thumbprint."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = RSAKey.import_key(private, {"use": "sig", "alg": "RS256"})
    kid = key.thumbprint()
    return RSAKey.import_key(private, {"use": "sig", "alg": "RS256", "kid": kid})


def jwks(keys: Sequence[RSAKey], unpublished: Collection[str], issuer: str) -> dict[str, Any]:
    """The public JWKS of ``keys`` minus ``unpublished`` kids, each key tagged ``issuer``."""
    published = [key for key in keys if key.kid not in unpublished]
    return {"keys": [key.as_dict(private=False, issuer=issuer, x5t=key.kid) for key in published]}


def sign(
    keys: Sequence[RSAKey], kid: str, header: Mapping[str, Any], claims: Mapping[str, Any]
) -> str:
    """Sign ``claims`` (RS256) with the key ``kid``; ``header`` extends the JWT header."""
    [key] = [key for key in keys if key.kid == kid]
    full_header = {"alg": "RS256", "typ": "JWT", **header, "kid": kid}
    return jwt.encode(full_header, dict(claims), key, algorithms=["RS256"])


def verify(keys: Sequence[RSAKey], token: str) -> dict[str, Any]:
    """Claims of ``token`` if any of ``keys`` signed it (RS256); raises JoseError."""
    return jwt.decode(token, KeySet(list(keys)), algorithms=["RS256"]).claims
