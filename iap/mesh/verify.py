"""The verifier: iap's own token checks around the JWKS of :mod:`iap.mesh.keys` (SPEC §6).

Invariants:
- The token checks are iap's own (``iap.domain.tokens``: ``header_kid``, ``verify``), the same
  code that judges iap tokens at the edge; this module only chooses the keys.
- The header is judged before any key is fetched or touched: ``alg`` must be exactly
  ``ES256`` (no ``none``, no HMAC keyed with the public key: RFC 8725 §2.1, §3.1,
  CVE-2015-9235), and headers that carry or point at a key (``jwk``, ``jku``, ``x5u``,
  ``x5c``) or demand extensions (``crit``, ``b64``) are refused (RFC 8725 §3.10). A refused
  header costs no JWKS fetch.
- The key is chosen by ``kid`` among the EC P-256 keys of the configured JWKS; joserfc gets
  that one key and the allow-list ``["ES256"]``, never a choice of its own. An unknown
  ``kid`` refetches once (``iap.adapters.jwks.verify_with_refetch``), within the budget.
- Every segment is canonical base64url, so a token has exactly one encoding.
- Claims: ``iss`` equal to the issuer, ``aud`` equal to (or a list containing) the audience,
  integer ``exp`` (required), ``nbf`` and ``iat`` (required) within ``leeway`` (RFC 7519 §2,
  §4.1), ``sub`` and ``tid`` non-empty strings. A refusal raises :class:`InvalidToken` with a
  short ``reason``; messages never contain the token or its claims.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

import aiohttp

from iap.adapters.jwks import Clock, verify_with_refetch
from iap.domain import claims as read
from iap.domain import tokens
from iap.mesh.errors import InvalidToken
from iap.mesh.keys import IapKeys, check_url

MAX_TOKEN_LENGTH: Final = 16 * 1024
"""An iap token is well under 2 KB; longer ones are refused before any parsing."""


@dataclass(frozen=True)
class MeshIdentity:
    """The caller named by a verified iap token. Key users by ``subject`` (``<tid>:<oid>``,
    or ``<tid>:<client app id>`` for services), never by email. ``actor`` is the ``act``
    claim's ``sub`` after a token exchange (RFC 8693 §4.1); ``claims`` holds every claim."""

    subject: str
    tid: str
    oid: str | None
    name: str | None
    email: str | None
    roles: tuple[str, ...]
    audience: str
    actor: str | None
    claims: Mapping[str, Any] = field(repr=False, compare=False)


class Verifier:
    """Verifies iap tokens for one audience against the JWKS at ``jwks_url`` (http or https;
    inside the mesh the sidecar provides mTLS). ``clock`` gives Unix seconds, for the token
    times and the cache alike. Without ``session``, one is made on first use and closed by
    :meth:`close` (or ``async with``)."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.time,
        leeway: int = 30,
        refetch_interval: float = 300,
        timeout: float = 5.0,
    ) -> None:
        check_url(jwks_url)
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        if leeway < 0 or refetch_interval < 0:
            raise ValueError("leeway and refetch_interval must not be negative")
        self._keys = IapKeys(
            jwks_url,
            session=session,
            clock=clock,
            refetch_interval=refetch_interval,
            timeout=timeout,
        )
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._leeway = leeway

    async def verify(self, token: str) -> MeshIdentity:
        """The identity in ``token``. Raises :class:`InvalidToken`, or
        :class:`KeysUnavailable` when no JWKS could ever be obtained (or it is too old)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed")
        try:  # the checks are iap's own (iap.domain.tokens): one verifier on both sides
            tokens.header_kid(token)  # a refused header costs no fetch
            claims = await verify_with_refetch(
                lambda keys: self._claims(token, keys),
                await self._keys.current(),
                self._keys.after_unknown_kid,
                refused=tokens.InvalidToken,
            )
        except tokens.InvalidToken as exc:
            raise InvalidToken(exc.reason) from None
        return _identity(claims, self._audience)

    async def close(self) -> None:
        """Close the session this verifier made, if any."""
        await self._keys.close()

    async def __aenter__(self) -> Verifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _claims(self, token: str, keys: tokens.PublicKeys) -> dict[str, Any]:
        return tokens.verify(
            token,
            keys,
            issuer=self._issuer,
            audience=self._audience,
            now=int(self._clock()),
            skew=self._leeway,
        )


def _identity(claims: dict[str, Any], audience: str) -> MeshIdentity:
    try:
        act = read.actor(claims)
        return MeshIdentity(
            subject=read.text(claims, "sub"),
            tid=read.text(claims, "tid"),
            oid=read.optional_text(claims, "oid"),
            name=read.optional_text(claims, "name"),
            email=read.optional_text(claims, "email"),
            roles=read.texts(claims, "roles"),
            audience=audience,
            actor=None if act is None else act["sub"],
            claims=MappingProxyType(claims),
        )
    except read.InvalidClaim:
        raise InvalidToken("malformed") from None
