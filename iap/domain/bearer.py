"""Entra ID access tokens presented as ``Authorization: Bearer`` by services and API clients
(SPEC §2 step 6, issue 4 "Bearer authentication").

Pure: the JWKS and the clock are arguments. The signature check is the ID token's
(``iap.domain.idtoken.verified_claims``: RS256 only, ``kid`` chosen here, no embedded keys).

Invariants:
- ``iss`` is Entra's v2 issuer ``{authority}/{tid}/v2.0`` or v1 ``https://sts.windows.net/{tid}/``
  for the token's own ``tid``, and matches the signing key's published ``issuer``; ``tid`` is
  in ``allowed_tenants``; ``aud`` is one of ``bearer.entra_audiences``; times are integers
  within the skew.
- A token with ``scp`` is delegated (a user through a client app): the caller is
  ``<tid>:<oid>``. A token without ``scp`` is app-only: the caller is the application,
  ``<tid>:<azp or appid>``, never its service principal's ``oid`` alone; its app permissions
  are the ``roles`` claim. Both kinds map Entra roles (and group ids) through
  ``tokens.roles``; unmapped ones grant nothing.
- Refusals raise :class:`InvalidBearer` with a short ``reason``; messages never hold the token.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from iap.domain import idtoken
from iap.model import Identity

V1_ISSUER = "https://sts.windows.net/{tid}/"


class InvalidBearer(ValueError):
    """A bearer token that must not be believed; ``reason`` is for logs and metrics.

    ``reason == "kid"`` means no key of the JWKS matches: the caller may refetch once.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"bearer token refused ({reason})")
        self.reason = reason


def entra_identity(
    token: str,
    *,
    jwks: Mapping[str, Any],
    authority: str,
    audiences: Collection[str],
    allowed_tenants: Collection[str],
    roles_map: Mapping[str, str],
    now: int,
    skew: int = 120,
) -> tuple[Identity, int, str | None]:
    """The caller an Entra access token names, the token's ``exp``, and the client
    application that obtained it (``azp``, v1 ``appid``)."""
    try:
        key, claims = idtoken.verified_claims(token, jwks)
        tid = _text(claims, "tid")
        _check_issuer(claims, key, authority, tid)
        idtoken.check_times(claims, now, skew)
    except idtoken.InvalidIdToken as exc:
        raise InvalidBearer(exc.reason) from None
    if claims.get("aud") not in audiences:
        raise InvalidBearer("aud")
    if tid not in allowed_tenants:
        raise InvalidBearer("tenant")
    granted = [*_texts(claims, "roles"), *_texts(claims, "groups")]
    roles = tuple(sorted({roles_map[value] for value in granted if value in roles_map}))
    oid = _text(claims, "oid")
    app = claims.get("azp") or claims.get("appid")  # v2 names it azp, v1 appid
    if app is not None and (not isinstance(app, str) or ":" in app):
        raise InvalidBearer("claims")
    if "scp" in claims:  # delegated: a user, through the client application ``app``
        identity = _identity(claims, f"{tid}:{oid}", tid, oid, roles, azp=None)
        return identity, claims["exp"], app or None
    if not app:
        raise InvalidBearer("claims")
    return _identity(claims, f"{tid}:{app}", tid, oid, roles, azp=app), claims["exp"], app


def _check_issuer(
    claims: Mapping[str, Any], key: Mapping[str, Any], authority: str, tid: str
) -> None:
    iss = claims.get("iss")
    if iss not in (f"{authority.rstrip('/')}/{tid}/v2.0", V1_ISSUER.format(tid=tid)):
        raise idtoken.InvalidIdToken("iss")
    if iss.endswith("/v2.0"):  # Entra's per-key issuer names the v2 form
        idtoken.check_key_issuer(key, iss, tid)


def _identity(
    claims: Mapping[str, Any],
    subject: str,
    tid: str,
    oid: str,
    roles: tuple[str, ...],
    *,
    azp: str | None,
) -> Identity:
    return Identity(
        subject=subject,
        tid=tid,
        oid=oid,
        name=_optional(claims, "name") or _optional(claims, "app_displayname"),
        email=_optional(claims, "email"),
        preferred_username=_optional(claims, "preferred_username") or _optional(claims, "upn"),
        roles=roles,
        groups=(),
        azp=azp,
    )


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or ":" in value:
        raise InvalidBearer("claims")
    return value


def _optional(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def _texts(claims: Mapping[str, Any], name: str) -> list[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidBearer("claims")
    return value
