"""iap's signing keys as a service sees them: the JWKS at ``jwks_url``, fetched over HTTP and
held in the shared :class:`~iap.adapters.jwks.KeyCache` (SPEC §6, §7).

Invariants:
- ``jwks_url`` is an absolute http or https URL without userinfo (inside the mesh the
  sidecar provides mTLS, so plain http is allowed).
- Cache: one fetch at a time (single-flight), fresh for :data:`REFRESH_AFTER`; an unknown
  ``kid`` refetches at most once per ``refetch_interval``, so forged tokens cannot make a
  service hammer iap; a failed fetch keeps the last-known-good keys (for up to
  :data:`MAX_STALE`) and no scheduled refresh is tried for :data:`FAILURE_BACKOFF` seconds.
- Fetches follow no redirects, read at most :data:`MAX_JWKS_BYTES`, store no cookies, and
  send only ``Accept``. Every network, HTTP or JSON failure is :class:`KeysUnavailable`.
- Only EC P-256 keys for ES256 are kept, by ``kid`` (``iap.domain.tokens.public_keys``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import aiohttp
from yarl import URL

from iap.adapters.jwks import Clock, KeyCache
from iap.domain import tokens
from iap.mesh.errors import KeysUnavailable

REFRESH_AFTER: Final = 3600.0
"""Seconds a fetched JWKS is used before the next access refreshes it."""
MAX_STALE: Final = 24 * 3600.0
"""Seconds the last-known-good JWKS stays usable while refreshes fail."""
FAILURE_BACKOFF: Final = 10.0
"""Seconds after a failed fetch during which no scheduled refresh is tried."""
MAX_JWKS_BYTES: Final = 256 * 1024

log = logging.getLogger("iap.mesh")  # the logger docs/mesh.md names


class IapKeys:
    """The ES256 keys published at ``jwks_url``, by ``kid``. Without ``session``, one is
    made on first use and closed by :meth:`close`."""

    def __init__(
        self,
        jwks_url: str,
        *,
        session: aiohttp.ClientSession | None,
        clock: Clock,
        refetch_interval: float,
        timeout: float,
    ) -> None:
        check_url(jwks_url)
        self._url = jwks_url
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache: KeyCache[str, tokens.PublicKeys] = KeyCache(
            self._fetch,
            error=KeysUnavailable,
            refresh_after=REFRESH_AFTER,
            max_stale=MAX_STALE,
            unknown_kid_interval=refetch_interval,
            failure_backoff=FAILURE_BACKOFF,
            clock=clock,
        )

    async def current(self) -> tokens.PublicKeys:
        """The keys, refreshed first when due; :class:`KeysUnavailable` if none are usable."""
        return await self._cache.get(self._url)

    async def after_unknown_kid(self) -> tokens.PublicKeys | None:
        """The keys after a refetch for an unknown ``kid``; None when the budget is spent
        or the refetch failed (the cached keys stay)."""
        try:
            return await self._cache.for_unknown_kid(self._url)
        except KeysUnavailable:
            return None

    async def close(self) -> None:
        """Close the session made here, if any."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, url: str) -> tokens.PublicKeys:
        try:
            return _p256_keys(await self._get(url))
        except KeysUnavailable as exc:
            log.warning("iap JWKS fetch failed: %r", exc.__cause__ or exc)
            raise

    async def _get(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            async with self._session.get(
                url,
                headers={"Accept": "application/json"},
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status != 200:
                    raise KeysUnavailable
                body = await _bounded_body(response)
            return json.loads(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KeysUnavailable from exc


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL without userinfo."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.absolute or not parsed.raw_host:
        raise ValueError("jwks_url must be an absolute http or https URL")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("jwks_url must not carry userinfo")


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_JWKS_BYTES:
            raise KeysUnavailable
        chunks.append(chunk)
    return b"".join(chunks)


def _p256_keys(document: Any) -> tokens.PublicKeys:
    """The ES256 keys of a JWK Set by ``kid`` (``iap.domain.tokens.public_keys``)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable
    return tokens.public_keys(document["keys"])
