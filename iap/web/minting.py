"""Minted identity: one short-lived ES256 token per caller and route audience, and the key
documents the mesh verifies it with (SPEC §2 step 9, §3 jwks and discovery, §6).

Invariants:
- Exactly one token reaches the upstream, in ``tokens.header`` (``Authorization: Bearer``
  by default); the gateway strips every client-sent copy of that header first.
- A cached token is keyed by every input it depends on: subject, IdP session, audience and
  the key set's version (a rotation changes it), and is reused only while more than
  :data:`REUSE_MARGIN` (or a fifth of ``tokens.ttl``, if less) of its life is left.
- The JWKS never holds a private member; it is built by ``iap.domain.tokens``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from iap.adapters.signing_keys import KeyDirectory
from iap.config import Config
from iap.domain import tokens
from iap.model import Identity

REUSE_MARGIN = 60
"""Seconds of life a cached token must have left to be sent again."""
CACHE_SIZE = 8192
JWKS_MAX_AGE = 300
"""Seconds verifiers may cache the JWKS document (istiod refreshes every 20 minutes)."""

Clock = Callable[[], float]


class Minter:
    """Mints and caches tokens; serves the JWKS and the discovery document."""

    def __init__(self, config: Config, *, clock: Clock = time.time) -> None:
        assert config.tokens is not None
        settings = config.tokens
        self.keys = KeyDirectory(
            settings.keys_dir, publish_before_use=settings.publish_before_use, ttl=settings.ttl
        )
        self._issuer = settings.issuer
        self._ttl = int(settings.ttl)
        self._margin = min(REUSE_MARGIN, self._ttl // 5)
        self._clock = clock
        self.header = settings.header
        self._bearer = settings.header == "authorization"
        self._cache: OrderedDict[tuple[str, str | None, str, str], tuple[str, int]] = OrderedDict()

    def header_for(self, identity: Identity, *, audience: str, sid: str | None) -> tuple[str, str]:
        """The header pair that carries the caller's token for ``audience``."""
        token = self.token(identity, audience=audience, sid=sid)
        return ("Authorization", f"Bearer {token}") if self._bearer else (self.header, token)

    def carry(self, token: str) -> tuple[str, str]:
        """The header pair for an iap token the caller presented, sent on unchanged."""
        return ("Authorization", f"Bearer {token}") if self._bearer else (self.header, token)

    def token(self, identity: Identity, *, audience: str, sid: str | None) -> str:
        """A token for ``identity`` and ``audience``, from the cache while fresh enough."""
        now = int(self._clock())
        keys = self.keys.current
        key = (identity.subject, sid, audience, keys.version(now))
        cached = self._cache.get(key)
        if cached is not None and cached[1] - now > self._margin:
            self._cache.move_to_end(key)
            return cached[0]
        token, exp = self._mint(identity, audience=audience, sid=sid, act=None, now=now)
        self._cache[key] = (token, exp)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return token

    def exchanged(
        self, identity: Identity, *, audience: str, act: Mapping[str, Any], until: int
    ) -> tuple[str, int]:
        """A token for a token exchange (RFC 8693) and its lifetime in seconds: names its
        actor, is never cached, and expires by ``until`` (the subject token's ``exp``), so an
        exchange never lengthens a caller's access. ValueError when ``until`` has passed."""
        now = int(self._clock())
        ttl = min(self._ttl, until - now)
        if ttl <= 0:
            raise ValueError("the subject token has no time left")
        return self._mint(identity, audience=audience, sid=None, act=act, now=now, ttl=ttl)[0], ttl

    def _mint(
        self,
        identity: Identity,
        *,
        audience: str,
        sid: str | None,
        act: Mapping[str, Any] | None,
        now: int,
        ttl: int | None = None,
    ) -> tuple[str, int]:
        """A fresh token and its ``exp`` (``ttl``: ``tokens.ttl`` unless shorter)."""
        claims = tokens.user_claims(
            identity,
            issuer=self._issuer,
            audience=audience,
            sid=sid,
            now=now,
            ttl=self._ttl if ttl is None else ttl,
            jti=secrets.token_urlsafe(16),
            act=act,
        )
        return tokens.mint(self.keys.current.signing_key(now), claims), claims["exp"]

    def refresh(self) -> bool | None:
        """Re-read the key directory if it changed (the TLS watcher's loop calls this)."""
        return self.keys.refresh(self._clock())

    def ready(self) -> bool:
        """A key can sign now (``/readyz``)."""
        try:
            self.keys.current.signing_key(self._clock())
        except tokens.NoSigningKey:
            return False
        return True

    def signing_key_age(self) -> float | None:
        """Seconds since the key that signs now was made, or None without one
        (``iap_signing_key_age_seconds``)."""
        now = self._clock()
        try:
            return now - self.keys.current.signing_key(now).created
        except tokens.NoSigningKey:
            return None

    # --- documents for verifiers ------------------------------------------------------

    def documents(self) -> dict[str, Callable[[], Awaitable[web.Response]]]:
        """The key documents the gateway serves under ``/.iap/``, by path."""
        return {
            "/.iap/jwks.json": self.jwks,
            "/.iap/.well-known/openid-configuration": self.discovery,
        }

    async def jwks(self, _: web.BaseRequest | None = None) -> web.Response:
        """``GET /.iap/jwks.json`` (public) and ``GET /jwks.json`` (admin)."""
        document = self.keys.current.jwks(self._clock())
        return web.Response(
            text=json.dumps(document),
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
        )

    async def discovery(self, _: web.BaseRequest | None = None) -> web.Response:
        """``GET /.iap/.well-known/openid-configuration``: enough for generic verifiers."""
        document = {
            "issuer": self._issuer,
            "jwks_uri": f"{self._issuer.rstrip('/')}/jwks.json",
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["none"],
        }
        return web.Response(
            text=json.dumps(document),
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
        )
