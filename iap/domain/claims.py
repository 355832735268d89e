"""Typed reading of JWT claims: the one place where iap turns a claims object into values
and identities (ID tokens, Entra access tokens, iap tokens and exchanged subject tokens
alike). Every entry point reads its caller here: browser sign-in (:func:`user`), Entra
bearer tokens (:func:`entra_caller`), iap's own tokens at the gateway and in the mesh SDK
(:func:`minted`).

A claims set is JSON from outside, whose signature proves only who wrote it: Entra, a tenant
administrator's claims mapping, or iap itself. So no reader assumes a JSON type.

Invariants:
- Every reader checks the type of what it returns and raises :class:`InvalidClaim` naming the
  claim otherwise; nothing here raises anything else for any JSON value (property-tested).
- Text claims are non-empty strings; an empty optional one reads as absent. Lists are lists of
  strings. Numeric dates are integers (RFC 7519 §2; a bool is not one).
- ``aud`` is a string or a non-empty list of strings (RFC 7519 §4.1.3); it reads as a tuple.
- ``act`` (RFC 8693 §4.1) is an object whose ``sub`` is text, nesting earlier actors the same
  way, at most :data:`MAX_ACT_DEPTH` deep.
- Users are keyed by ``tid`` and ``oid`` (``sub = "<tid>:<oid>"``), never by email; a
  ``tid`` holding ``:`` is refused, as it would make that key ambiguous. Roles and group ids
  found in ``roles_map`` (``tokens.roles``) become iap roles; unmapped ones grant nothing.
- :func:`unverified` believes nothing: it reads a token already validated when it was
  received, or only picks which verification runs.
- Pure: no IO; the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from iap.domain import compact
from iap.model import Identity

MAX_ACT_DEPTH = 4
"""Actors an ``act`` chain may hold: each token exchange nests one more."""
_CHECKED = frozenset({"iss", "aud", "nonce", "exp", "nbf", "iat"})
"""Claims whose refusal keeps the claim's name as its reason; others share a generic one."""


class InvalidClaim(ValueError):
    """``claim`` is missing where required, of the wrong type, or (times) out of range."""

    def __init__(self, claim: str) -> None:
        super().__init__(f"claim {claim!r} refused")
        self.claim = claim

    def reason(self, generic: str) -> str:
        """The refusal's short code: the claim for ``iss``, ``aud``, ``nonce`` and the times
        (each a check of its own), ``generic`` for any other claim."""
        return self.claim if self.claim in _CHECKED else generic


def text(claims: Mapping[str, Any], name: str) -> str:
    """A required non-empty string."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidClaim(name)
    return value


def optional_text(claims: Mapping[str, Any], name: str) -> str | None:
    """A string, or None when absent, null or empty; any other type is refused."""
    value = claims.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidClaim(name)
    return value


PROFILE = ("name", "email", "preferred_username")


def profile(claims: Mapping[str, Any]) -> dict[str, str | None]:
    """The optional profile claims (OIDC Core §5.1) that an identity carries, by name."""
    return {name: optional_text(claims, name) for name in PROFILE}


def texts(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list of strings; absent reads as empty."""
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidClaim(name)
    return tuple(value)


def audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """``aud``: a string, or a non-empty list of strings (RFC 7519 §4.1.3)."""
    value = claims.get("aud")
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise InvalidClaim("aud")


def scopes(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    """``scp`` (Entra delegated tokens): space-separated scopes, or None when absent."""
    value = claims.get("scp")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidClaim("scp")
    return tuple(value.split())


def numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    """An integer NumericDate (RFC 7519 §2), or None when absent and not ``required``."""
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidClaim(name)
    return value


def check_times(claims: Mapping[str, Any], *, now: int, skew: int) -> int:
    """``exp`` (required) not passed, ``nbf`` reached and ``iat`` (required) not in the future,
    each within ``skew``; returns ``exp``."""
    exp = numeric_date(claims, "exp", required=True)
    if exp is None or exp + skew <= now:
        raise InvalidClaim("exp")
    nbf = numeric_date(claims, "nbf", required=False)
    if nbf is not None and nbf > now + skew:
        raise InvalidClaim("nbf")
    iat = numeric_date(claims, "iat", required=True)
    if iat is None or iat > now + skew:
        raise InvalidClaim("iat")
    return exp


def actor(claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """``act``: None when absent, else the chain as read, each level with a text ``sub``."""
    value = claims.get("act")
    if value is None:
        return None
    level, depth = value, 0
    while level is not None:
        depth += 1
        if depth > MAX_ACT_DEPTH or not isinstance(level, dict):
            raise InvalidClaim("act")
        sub = level.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidClaim("act")
        level = level.get("act")
    return dict(value)


def actor_depth(act: Mapping[str, Any]) -> int:
    """How many actors a chain read by :func:`actor` holds."""
    depth = 1
    while isinstance(act.get("act"), dict):
        act, depth = act["act"], depth + 1
    return depth


def unverified(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, checked by nobody here; ``{}`` when it is malformed."""
    try:
        return compact.json_object(compact.b64decode(compact.segments(token)[1]))
    except compact.Malformed:
        return {}


# --- identities ----------------------------------------------------------------------------


def key_text(claims: Mapping[str, Any], name: str) -> str:
    """``tid``, ``oid`` or a client id: text without ``:``, which would make a
    ``<tid>:<id>`` subject ambiguous."""
    value = text(claims, name)
    if ":" in value:
        raise InvalidClaim(name)
    return value


def mapped_roles(values: Iterable[str], roles_map: Mapping[str, str]) -> tuple[str, ...]:
    """iap's roles for Entra roles and group ids ``values``: sorted, each once."""
    return tuple(sorted({roles_map[value] for value in values if value in roles_map}))


def user(claims: Mapping[str, Any], *, roles_map: Mapping[str, str]) -> Identity:
    """The user that validated ID token ``claims`` name (SPEC §6)."""
    tid = key_text(claims, "tid")
    oid = text(claims, "oid")
    groups = texts(claims, "groups")
    return Identity(
        subject=f"{tid}:{oid}",
        tid=tid,
        oid=oid,
        roles=mapped_roles((*texts(claims, "roles"), *groups), roles_map),
        groups=groups,
        **profile(claims),
    )


def minted(claims: Mapping[str, Any]) -> Identity:
    """The caller a verified iap token names (its roles are iap's already); its ``act``
    chain, if any, is checked too, for whoever reads it next."""
    actor(claims)
    return Identity(
        subject=text(claims, "sub"),
        tid=text(claims, "tid"),
        oid=text(claims, "oid"),
        **profile(claims),
        roles=texts(claims, "roles"),
        groups=(),
        azp=optional_text(claims, "azp"),
    )


def entra_caller(
    claims: Mapping[str, Any], *, tid: str, roles_map: Mapping[str, str]
) -> tuple[Identity, str | None]:
    """The caller of a verified Entra access token of tenant ``tid``, and the client
    application that obtained it (v2 ``azp``, v1 ``appid``; both must agree).

    With ``scp`` the token is delegated and names the user ``<tid>:<oid>``; without, it is
    app-only and names the application ``<tid>:<app>``, never its service principal alone.
    """
    roles = mapped_roles((*texts(claims, "roles"), *texts(claims, "groups")), roles_map)
    oid = key_text(claims, "oid")
    azp, appid = optional_text(claims, "azp"), optional_text(claims, "appid")
    if azp is not None and appid is not None and azp != appid:
        raise InvalidClaim("appid")
    app = azp or appid
    if app is not None and ":" in app:
        raise InvalidClaim("azp")
    delegated = scopes(claims) is not None  # a user, through the client application
    idtyp = optional_text(claims, "idtyp")  # Entra's optional token-type claim
    if (idtyp == "app" and delegated) or (idtyp == "user" and not delegated):
        raise InvalidClaim("idtyp")
    optional_text(claims, "ver")
    actor(claims)  # an exchange nests it: checked like an iap token's
    if delegated:
        return _entra_identity(claims, f"{tid}:{oid}", tid, oid, roles, azp=None), app
    if app is None:
        raise InvalidClaim("azp")
    return _entra_identity(claims, f"{tid}:{app}", tid, oid, roles, azp=app), app


def _entra_identity(
    claims: Mapping[str, Any],
    subject: str,
    tid: str,
    oid: str,
    roles: tuple[str, ...],
    *,
    azp: str | None,
) -> Identity:
    """An access token's profile: v1 tokens name apps in ``app_displayname``, users in
    ``upn``."""
    return Identity(
        subject=subject,
        tid=tid,
        oid=oid,
        name=optional_text(claims, "name") or optional_text(claims, "app_displayname"),
        email=optional_text(claims, "email"),
        preferred_username=optional_text(claims, "preferred_username")
        or optional_text(claims, "upn"),
        roles=roles,
        groups=(),
        azp=azp,
    )
