"""OpenID Connect ID-token validation for Entra ID sign-in (SPEC §7 Login).

It verifies the RS256 signature of the IdP's ID tokens (through ``iap.domain.jose``, the
one importer of joserfc); everything else here is plain parsing and comparison.
Pure: no IO, the JWKS and the clock are arguments.

Invariants:
- The header is parsed and judged before any key is touched: ``alg`` must be exactly
  ``RS256`` (no ``none``, no HMAC keyed with a public key: RFC 8725 §2.1, §3.1,
  CVE-2015-9235), and headers that carry or point at their own key (``jwk``, ``jku``,
  ``x5u``, ``x5c``) or demand extensions (``crit``) are refused (RFC 8725 §3.10).
- The key is chosen here, by ``kid``, among the RSA keys of the IdP's JWKS; joserfc gets
  that single key and the allow-list ``["RS256"]``, never a choice of its own.
- Every segment must be canonical base64url (no padding, no stray bits), so a token has
  exactly one encoding and any changed byte of the signature fails.
- Claims: ``iss`` (Entra ``{tenantid}`` template and the key's own ``issuer``), ``aud``
  (with ``azp``), integer ``exp``/``nbf``/``iat`` within ``skew``, ``nonce``, and ``tid`` in
  the allowed tenants. A refusal raises :class:`InvalidIdToken` with a short ``reason``;
  messages never contain the token or its claims.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from iap.domain import claims as read
from iap.domain import compact, jose

TENANT_TEMPLATE = "{tenantid}"
ALGORITHM = "RS256"
#: Header members that embed or locate a key, or demand extensions we do not implement.
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})


class InvalidIdToken(ValueError):
    """The ID token is refused; ``reason`` is a short code for logs and metrics.

    ``reason == "kid"`` means no RSA key of the JWKS matches: the caller may refetch the
    JWKS once (rate-limited) and try again.
    """

    def __init__(self, reason: str, who: tuple[str | None, str | None] = (None, None)) -> None:
        super().__init__(f"ID token refused ({reason})")
        self.reason = reason
        self.who = who
        """The subject and tenant of a validly signed token refused anyway (``tenant``)."""


@dataclass(frozen=True)
class Claims:
    """The validated claims that identify an Entra user; ``raw`` holds all of them."""

    tid: str
    oid: str
    sub: str
    name: str | None
    email: str | None
    preferred_username: str | None
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    sid: str | None
    raw: Mapping[str, Any] = field(repr=False)


def validate(
    token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    client_id: str,
    nonce: str | None,
    allowed_tenants: Collection[str],
    now: int,
    skew: int = 120,
) -> Claims:
    """Validate an ID token from the token endpoint and return its claims.

    ``issuer`` is the configured authority's issuer, possibly the multi-tenant template
    ``.../{tenantid}/v2.0``; ``now`` is Unix seconds. ``nonce`` is the login's; it is None
    only for an ID token from a refresh grant, which answers no authorization request
    (OIDC Core §12.2). Raises :class:`InvalidIdToken`.
    """
    header, payload = _verified(token, jwks)
    claims = _json_object(payload)
    try:
        tid = read.text(claims, "tid")
        _check_issuer(claims, issuer, header, tid)
        _check_audience(claims, client_id)
        read.check_times(claims, now=now, skew=skew)
        if nonce is not None and not (
            nonce and hmac.compare_digest(read.text(claims, "nonce").encode(), nonce.encode())
        ):
            raise InvalidIdToken("nonce")
        if tid not in allowed_tenants:
            oid = claims.get("oid")
            raise InvalidIdToken("tenant", (f"{tid}:{oid}" if isinstance(oid, str) else None, tid))
        return _identity(claims, tid)
    except read.InvalidClaim as exc:
        raise InvalidIdToken(exc.reason("malformed")) from None


# signature --------------------------------------------------------------------------


def verified_claims(
    token: str, jwks: Mapping[str, Any]
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The JWK that verified ``token``'s RS256 signature, and its claims; nothing else is
    checked. For Entra access tokens (``iap.domain.bearer``), which share the ID token's
    header rules and keys. Raises :class:`InvalidIdToken`."""
    header, payload = _verified(token, jwks)
    return header.key, _json_object(payload)


def check_key_issuer(key: Mapping[str, Any], iss: str, tid: str) -> None:
    """Entra publishes an ``issuer`` per key (a ``{tenantid}`` template for multi-tenant
    keys); a token must name that issuer. Raises :class:`InvalidIdToken` (``iss``)."""
    key_issuer = key.get("issuer")
    if key_issuer is not None and (
        not isinstance(key_issuer, str) or iss != key_issuer.replace(TENANT_TEMPLATE, tid)
    ):
        raise InvalidIdToken("iss")


@dataclass(frozen=True)
class _Header:
    kid: str
    key: Mapping[str, Any]


def _verified(token: str, jwks: Mapping[str, Any]) -> tuple[_Header, bytes]:
    """The selected key and the payload bytes whose RS256 signature checked out."""
    try:
        encoded_header = compact.b64decode(compact.segments(token)[0])
    except compact.Malformed:
        raise InvalidIdToken("malformed") from None
    header = _json_object(encoded_header, reason="header")
    kid = _check_header(header)
    jwk = _select_key(jwks, kid)
    try:
        payload = jose.verified_payload(token, jose.rsa_public_key(jwk), ALGORITHM)
    except (jose.KeyRefused, jose.BadSignature):
        raise InvalidIdToken("signature") from None
    return _Header(kid, jwk), payload


def _check_header(header: Mapping[str, Any]) -> str:
    """The ``kid`` of an acceptable header (RFC 8725 §3.1: exactly one algorithm)."""
    if header.get("alg") != ALGORITHM:
        raise InvalidIdToken("alg")
    if _FORBIDDEN_HEADERS & header.keys():
        raise InvalidIdToken("header")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidIdToken("header")
    return kid


def _select_key(jwks: Mapping[str, Any], kid: str) -> Mapping[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise InvalidIdToken("kid")
    matches = [
        key
        for key in keys
        if isinstance(key, Mapping) and key.get("kid") == kid and key.get("kty") == "RSA"
    ]
    if len(matches) != 1:
        raise InvalidIdToken("kid")
    key = matches[0]
    if key.get("use", "sig") != "sig" or key.get("alg", ALGORITHM) != ALGORITHM:
        raise InvalidIdToken("kid")
    return key


def _json_object(raw: bytes, *, reason: str = "malformed") -> dict[str, Any]:
    try:
        return compact.json_object(raw)
    except compact.Malformed:
        raise InvalidIdToken(reason) from None


# claims -----------------------------------------------------------------------------


def _check_issuer(claims: Mapping[str, Any], issuer: str, header: _Header, tid: str) -> None:
    """Entra multi-tenant issuers are templates; each key may name its own issuer."""
    iss = read.text(claims, "iss")
    if iss != issuer.replace(TENANT_TEMPLATE, tid):
        raise InvalidIdToken("iss")
    check_key_issuer(header.key, iss, tid)


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    """OIDC Core §3.1.3.7 steps 3-5: ``aud`` contains us; several audiences need ``azp``."""
    aud = read.audiences(claims)
    azp = read.optional_text(claims, "azp")
    if client_id not in aud or (len(aud) > 1 and azp is None) or azp not in (None, client_id):
        raise InvalidIdToken("aud")


def _identity(claims: dict[str, Any], tid: str) -> Claims:
    return Claims(
        tid=tid,
        oid=read.text(claims, "oid"),
        sub=read.text(claims, "sub"),
        **read.profile(claims),
        groups=read.texts(claims, "groups"),
        roles=read.texts(claims, "roles"),
        sid=read.optional_text(claims, "sid"),
        raw=MappingProxyType(claims),
    )
