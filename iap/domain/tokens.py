"""The tokens iap mints for the upstream, and how they are checked (SPEC §5 ``tokens``, §6);
the keys that sign them are :mod:`iap.domain.signing` (re-exported here).

Invariants (the keys' own, publish-before-use and retention among them, are in
:mod:`iap.domain.signing`):
- ES256 only: every token's header is exactly ``{"alg": "ES256", "kid": ..., "typ": "JWT"}``,
  signed by a key of :mod:`iap.domain.signing`.
- Times in claims are integers (RFC 7519 §2 NumericDate).
- Pure: no IO, no asyncio; the clock is an argument. Errors name the problem, never key
  material. The JWS itself is signed and checked by ``iap.domain.jose``, the one importer of
  joserfc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from iap.domain import claims as read
from iap.domain import compact, jose
from iap.domain.jose import ECKey
from iap.domain.signing import (
    ALGORITHM,
    CURVE,
    KeySet,
    NoSigningKey,
    Retired,
    SigningKey,
    load_key,
    new_key_pem,
    public_jwk,
)
from iap.model import Identity

__all__ = [
    "ALGORITHM",
    "CURVE",
    "InvalidToken",
    "KeySet",
    "NoSigningKey",
    "Retired",
    "SigningKey",
    "check_claims",
    "header_kid",
    "identity_of",
    "load_key",
    "mint",
    "new_key_pem",
    "public_jwk",
    "public_keys",
    "user_claims",
    "verified_claims",
    "verify",
]


def mint(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """The compact JWS of ``claims`` signed by ``key`` (RFC 7515 §7.1)."""
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}
    return jose.sign(header, claims, key.key, ALGORITHM)


def user_claims(
    identity: Identity,
    *,
    issuer: str,
    audience: str,
    sid: str | None,
    now: int,
    ttl: int,
    jti: str,
    groups: bool = False,
    act: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of a token for a signed-in user (SPEC §6), valid from ``now`` for ``ttl``.

    ``sub`` is ``<tid>:<oid>``; optional profile claims appear only when non-empty;
    ``roles`` are iap's internal roles. ``groups`` are added only when asked for (they can
    be large: the caller bounds them). ``sid`` is the browser session's.
    """
    for name, value in (("now", now), ("ttl", ttl)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer (RFC 7519 §2 NumericDate)")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": identity.subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": jti,
        "tid": identity.tid,
        "oid": identity.oid,
    }
    for name in read.PROFILE:
        value = getattr(identity, name)
        if value:
            claims[name] = value
    claims["roles"] = list(identity.roles)
    if groups:
        claims["groups"] = list(identity.groups)
    if sid is not None:
        claims["sid"] = sid
    if identity.azp:
        claims["azp"] = identity.azp
    if act is not None:  # RFC 8693 §4.1: who acts on the subject's behalf
        claims["act"] = dict(act)
    return claims


class InvalidToken(ValueError):
    """An iap token that must not be believed; ``reason`` is a short code for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"token refused ({reason})")
        self.reason = reason


# --- verifying (iap's own gateway and ``iap.mesh`` in the services) ---------------------

_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64"})

PublicKeys: TypeAlias = Mapping[str, ECKey]
"""Verification keys by ``kid``, as :func:`public_keys` makes them and :func:`verify` takes."""


def public_keys(jwks: Iterable[Any]) -> dict[str, ECKey]:
    """The ES256 verification keys among the members of a JWK Set's ``keys``, by ``kid``.

    Public members only are read; a ``kid`` named twice is ambiguous and dropped.
    """
    found: dict[str, ECKey | None] = {}
    for jwk in jwks:
        entry = _public_key(jwk)
        if entry is not None:
            kid, key = entry
            found[kid] = None if kid in found else key
    return {kid: key for kid, key in found.items() if key is not None}


def _public_key(jwk: Any) -> tuple[str, ECKey] | None:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != CURVE:
        return None
    kid, x, y = jwk.get("kid"), jwk.get("x"), jwk.get("y")
    if not (isinstance(kid, str) and kid and isinstance(x, str) and isinstance(y, str)):
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
        return None
    try:
        return kid, jose.ec_public_key(CURVE, x, y)
    except jose.KeyRefused:
        return None


def header_kid(token: str) -> str:
    """The ``kid`` of a well-formed token whose header is acceptable, judged before any key
    is touched (RFC 8725 §3.1: exactly ES256; no embedded or remote keys, no extensions)."""
    try:
        header = compact.header(token)
    except compact.Malformed:
        raise InvalidToken("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("alg")
    typ = header.get("typ", "JWT")
    if _FORBIDDEN_HEADERS & header.keys() or not isinstance(typ, str) or typ.upper() != "JWT":
        raise InvalidToken("header")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("header")
    return kid


def verified_claims(token: str, key: ECKey) -> dict[str, Any]:
    """The claims of ``token`` once its ES256 signature checks out with ``key``."""
    try:
        payload = jose.verified_payload(token, key, ALGORITHM)
    except jose.BadSignature:
        raise InvalidToken("signature") from None
    try:
        return compact.json_object(payload)
    except compact.Malformed:
        raise InvalidToken("malformed") from None


def check_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str | None, now: int, skew: int
) -> None:
    """``iss``; ``aud`` when an ``audience`` is given (a string, or a list holding it);
    integer ``exp`` and ``iat`` (required) and ``nbf`` within ``skew`` of ``now``."""
    try:
        if read.text(claims, "iss") != issuer:
            raise InvalidToken("iss")
        if audience is not None and audience not in read.audiences(claims):
            raise InvalidToken("aud")
        read.check_times(claims, now=now, skew=skew)
    except read.InvalidClaim as exc:
        raise InvalidToken(exc.reason("claims")) from None


def verify(
    token: str,
    keys: PublicKeys,
    *,
    issuer: str,
    now: int,
    audience: str | None = None,
    skew: int = 30,
) -> dict[str, Any]:
    """The claims of an iap token: header, the key of its ``kid`` among ``keys``, signature,
    then :func:`check_claims`. Raises :class:`InvalidToken`."""
    key = keys.get(header_kid(token))
    if key is None:
        raise InvalidToken("kid")
    claims = verified_claims(token, key)
    check_claims(claims, issuer=issuer, audience=audience, now=now, skew=skew)
    return claims


def identity_of(claims: Mapping[str, Any]) -> Identity:
    """The caller a verified iap token names (:func:`iap.domain.claims.minted`)."""
    try:
        return read.minted(claims)
    except read.InvalidClaim as exc:
        raise InvalidToken(exc.reason("claims")) from None
