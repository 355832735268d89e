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
  ``tokens.roles``; unmapped ones grant nothing. The caller is read by
  ``iap.domain.claims.entra_caller``, once the checks here passed.
- Refusals raise :class:`InvalidBearer` with a short ``reason``; messages never hold the token.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from iap.domain import claims as read
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
) -> tuple[Identity, int, str | None, Mapping[str, Any]]:
    """The caller an Entra access token names, the token's ``exp``, the client application
    that obtained it (``azp``, v1 ``appid``), and the token's claims."""
    try:
        key, claims = idtoken.verified_claims(token, jwks)
    except idtoken.InvalidIdToken as exc:
        raise InvalidBearer(exc.reason) from None
    try:
        found = _caller(claims, key, authority, audiences, allowed_tenants, roles_map, now, skew)
        return (*found, claims)
    except read.InvalidClaim as exc:
        raise InvalidBearer(exc.reason("claims")) from None


def _caller(
    claims: Mapping[str, Any],
    key: Mapping[str, Any],
    authority: str,
    audiences: Collection[str],
    allowed_tenants: Collection[str],
    roles_map: Mapping[str, str],
    now: int,
    skew: int,
) -> tuple[Identity, int, str | None]:
    """The checks of an access token; the caller is read by ``claims.entra_caller``."""
    tid = read.key_text(claims, "tid")
    _check_issuer(claims, key, authority, tid)
    exp = read.check_times(claims, now=now, skew=skew)
    if not set(read.audiences(claims)).intersection(audiences):
        raise InvalidBearer("aud")
    if tid not in allowed_tenants:
        raise InvalidBearer("tenant")
    identity, app = read.entra_caller(claims, tid=tid, roles_map=roles_map)
    return identity, exp, app


def _check_issuer(
    claims: Mapping[str, Any], key: Mapping[str, Any], authority: str, tid: str
) -> None:
    iss = read.text(claims, "iss")
    if iss not in (f"{authority.rstrip('/')}/{tid}/v2.0", V1_ISSUER.format(tid=tid)):
        raise InvalidBearer("iss")
    if iss.endswith("/v2.0"):  # Entra's per-key issuer names the v2 form
        try:
            idtoken.check_key_issuer(key, iss, tid)
        except idtoken.InvalidIdToken as exc:
            raise InvalidBearer(exc.reason) from None
