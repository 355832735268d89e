"""Typed reading of JWT claims: the one place where iap turns a claims object into values
(ID tokens, Entra access tokens, iap tokens and exchanged subject tokens alike).

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
- Pure: no IO; the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
