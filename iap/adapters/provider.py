"""The identity provider of iap's one OIDC client: its HTTP client, discovery, the JWKS cache
and the token and Graph calls, opened inside the event loop (SPEC §7 Login, §8 readiness).

Invariants:
- Every IdP call of the process goes through one client session made by
  :func:`iap.adapters.idp.new_session` (no cookies, no trace headers), opened by
  :meth:`Provider.start` inside the loop and closed by :meth:`Provider.close`.
- The issuer is split once into the authority (``https://login.microsoftonline.com``) and the
  tenant segment whose metadata and keys are used.
- ``ready`` turns true once the metadata or keys loaded; until then each readiness probe
  starts one more attempt in the background, never two at once, so a pod that started
  during an IdP outage becomes ready once the IdP is back.
- Tokens are checked with the cached keys; an unknown ``kid`` refetches the JWKS at most
  once (rate-limited per tenant, :func:`iap.adapters.jwks.verify_with_refetch`).
- While the IdP is down its discovery document and JWKS are served stale, never older than
  ``max_stale`` (``oidc.metadata_max_stale``); :meth:`Provider.ages` says how old they are.
  The caches' clock is this module's ``time.monotonic``, looked up on each call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from iap.adapters.idp import (
    MAX_STALE,
    Discovery,
    IdpUnavailable,
    JwksCache,
    Observe,
    new_session,
)
from iap.adapters.jwks import verify_with_refetch
from iap.adapters.oauth import ClientCredential, OAuthClient

log = logging.getLogger("iap")
_R = TypeVar("_R")


def _monotonic() -> float:
    """The metadata caches' clock (``time`` is looked up here on each call)."""
    return time.monotonic()


class Provider:
    """The IdP behind ``issuer`` (an Entra v2.0 issuer URL), for one client credential."""

    def __init__(
        self,
        issuer: str,
        credential: ClientCredential,
        *,
        observe: Observe | None = None,
        max_stale: float = MAX_STALE,
    ) -> None:
        base, tenant, _ = issuer.rsplit("/", 2)
        self.authority = base
        """The IdP's base URL (``https://login.microsoftonline.com``)."""
        self.tenant = tenant
        self._credential = credential
        self._observe = observe
        self._max_stale = max_stale
        self._http: aiohttp.ClientSession | None = None
        self._warming: asyncio.Task[None] | None = None
        self.ready = False

    async def start(self) -> None:
        """Open the IdP client and load its metadata in the background."""
        self._http = new_session()
        self._discovery = Discovery(
            self._http,
            self.authority,
            observe=self._observe,
            max_stale=self._max_stale,
            clock=_monotonic,
        )
        self._jwks = JwksCache(self._discovery, max_stale=self._max_stale, clock=_monotonic)
        self.oauth = OAuthClient(self._discovery.fetcher, self._credential)
        self._warming = asyncio.ensure_future(self._warm())

    async def close(self) -> None:
        """Stop warming and close the client."""
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _warm(self) -> None:
        try:
            await self._jwks.keys(self.tenant)
            self.ready = True
        except IdpUnavailable:
            log.warning("identity provider metadata not loaded yet; will retry on demand")

    def probe(self) -> bool:
        """Whether the metadata is loaded; if not, one more attempt in the background."""
        if not self.ready and (self._warming is None or self._warming.done()):
            self._warming = asyncio.ensure_future(self._warm())
        return self.ready

    def ages(self) -> dict[str, float]:
        """Seconds since the discovery document and the JWKS were fetched (``discovery``,
        ``jwks``); a document never fetched is left out."""
        if self._http is None:
            return {}
        ages = {"discovery": self._discovery.age(self.tenant), "jwks": self._jwks.age(self.tenant)}
        return {name: age for name, age in ages.items() if age is not None}

    async def metadata(self) -> dict[str, Any]:
        """The tenant's discovery document (cached); :class:`IdpUnavailable`."""
        document = await self._discovery.document(self.tenant)
        self.ready = True
        return document

    async def keys(self, *, unknown_kid: bool = False) -> dict[str, Any] | None:
        """The IdP's JWKS (cached); with ``unknown_kid``, a rate-limited refetch or None."""
        if unknown_kid:
            return await self._jwks.for_unknown_kid(self.tenant)
        return await self._jwks.keys(self.tenant)

    async def verified(
        self, check: Callable[[Mapping[str, Any]], _R], *, refused: type[Exception]
    ) -> _R:
        """``check`` with the cached keys; once more with refetched ones on an unknown kid."""
        keys = await self._jwks.keys(self.tenant)
        return await verify_with_refetch(
            check, keys, lambda: self._jwks.for_unknown_kid(self.tenant), refused=refused
        )
