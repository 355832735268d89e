"""Calls to the IdP: OpenID discovery and the per-tenant JWKS cache (SPEC §7 Login).

Invariants:
- Every URL is checked by :func:`require_https` before it is fetched: https, or http on a
  loopback address only (development and tests). Redirects are not followed, so a 3xx
  cannot lead a fetch to a URL that was never checked.
- IdP calls carry no cookies and no trace headers: the session must use a
  :class:`aiohttp.DummyCookieJar`, no ``trace_configs`` and no such default headers
  (:func:`new_session` builds one), and requests set only ``Accept``.
- Every network, HTTP or JSON failure becomes :class:`IdpUnavailable` (``raise ... from
  exc``); of those, no connection, a timeout or a 5xx is :class:`IdpUnreachable` (the IdP
  is down: a session may ride it out, ``iap.domain.outage``), anything else (a malformed or
  unexpected answer) is not. Bodies are read up to a size limit, so a hostile IdP cannot
  exhaust memory.
- Caches are per tenant and never refreshed in the background: an access to an old entry
  (older than 1 h, or half of ``max_stale`` when that is less) tries one refresh
  (single-flight per tenant) and keeps the last-known-good on errors, but never serves a
  document older than ``max_stale`` (``oidc.metadata_max_stale``): past it the document
  counts as absent. After a failed fetch no scheduled refresh is tried for
  :data:`FAILURE_BACKOFF` seconds, so an IdP outage costs one attempt per tenant in that
  time, not one per request. JWKS (``iap.adapters.jwks.KeyCache``, shared with the mesh
  SDK): an unknown ``kid`` refetches at most once per 5 min per tenant, so forged tokens
  cannot make iap hammer the IdP, down or up.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from iap.adapters.jwks import KeyCache
from iap.errors import IapError

REFRESH_AFTER = 3600.0
"""Age at which a cached discovery document or JWKS is refreshed on its next use."""
MAX_STALE = 24 * 3600.0
"""Default oldest discovery document or JWKS served (``oidc.metadata_max_stale``)."""
FAILURE_BACKOFF = 5.0
"""Seconds after a failed fetch during which a stale document is served without retrying."""
UNKNOWN_KID_INTERVAL = 5 * 60.0
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Entra tenant ids are GUIDs or verified domains; also ``organizations`` and ``common``.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_FORBIDDEN_HEADERS = frozenset(
    {"cookie", "traceparent", "tracestate", "baggage", "b3", "uber-trace-id"}
)

Clock = Callable[[], float]
_T = TypeVar("_T")


class IdpUnavailable(IapError):
    """The IdP could not be reached or gave an unusable answer; detail is in the cause."""

    def __init__(self) -> None:
        super().__init__("The identity provider is unavailable.")


class IdpUnreachable(IdpUnavailable):
    """The IdP did not answer: no connection, a timeout, or a 5xx status."""


def refresh_interval(max_stale: float) -> float:
    """When a cached document is refreshed: hourly, or at half of ``max_stale`` if sooner,
    so a refresh is always tried well before the document stops being served."""
    return min(REFRESH_AFTER, max_stale / 2)


def require_https(url: str) -> None:
    """Raise ValueError unless ``url`` is https, or http on a loopback host (SPEC §7)."""
    parsed = URL(url)
    host = parsed.raw_host
    if not parsed.absolute or not host:
        raise ValueError("IdP URL must be absolute")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("IdP URL must not carry userinfo")
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and _is_loopback_host(host):
        return
    raise ValueError("IdP URL must use https (http only on loopback)")


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_session() -> aiohttp.ClientSession:
    """A client session fit for IdP calls: no cookie jar, no tracing, no proxy from env."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


def _check_session(session: aiohttp.ClientSession) -> None:
    if not isinstance(session.cookie_jar, aiohttp.DummyCookieJar):
        raise ValueError("IdP session must use a DummyCookieJar (no cookies to the IdP)")
    if session.trace_configs:
        raise ValueError("IdP session must not have trace_configs")
    if _FORBIDDEN_HEADERS & {name.lower() for name in session.headers} or any(
        name.lower().startswith("x-b3-") for name in session.headers
    ):
        raise ValueError("IdP session must not send cookies or trace headers")


def _check_tenant(tenant: str) -> None:
    if not _TENANT.fullmatch(tenant):
        raise ValueError("tenant must be a tenant id, a domain, organizations or common")


def check_status(status: int) -> None:
    """:class:`IdpUnreachable` for a 5xx (the IdP is down), :class:`IdpUnavailable` for any
    other status but 200."""
    if status >= 500:
        raise IdpUnreachable
    if status != 200:
        raise IdpUnavailable


Observe = Callable[[str, str, str, int, int], None]
"""Told of every IdP call: (endpoint, method, result, start ns, end ns); for metrics, spans."""


@dataclass(frozen=True)
class Fetcher:
    """GETs JSON objects from the IdP with the invariants of this module."""

    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    max_bytes: int = MAX_DOCUMENT_BYTES
    observe: Observe | None = None

    async def observed(self, endpoint: str, method: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call`` and tell :attr:`observe` how it went (``ok``, ``refused``, ``error``)."""
        start = time.time_ns()
        result = "error"
        try:
            value = await call()
            result = "ok"
            return value
        except IapError as exc:
            result = "error" if isinstance(exc, IdpUnavailable) else "refused"
            raise
        finally:
            if self.observe is not None:
                self.observe(endpoint, method, result, start, time.time_ns())

    async def get_json(self, url: str, endpoint: str = "discovery") -> dict[str, Any]:
        """The JSON object at ``url``; :class:`IdpUnavailable` on any failure."""
        return await self.observed(endpoint, "GET", lambda: self._get_json(url))

    async def _get_json(self, url: str) -> dict[str, Any]:
        require_https(url)
        try:
            async with self.session.get(
                url,
                headers={"Accept": "application/json"},
                allow_redirects=False,
                timeout=self.timeout,
            ) as response:
                check_status(response.status)
                body = await self.read(response)
            document = json.loads(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpUnreachable from exc
        except ValueError as exc:
            raise IdpUnavailable from exc
        if not isinstance(document, dict):
            raise IdpUnavailable
        return document

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, up to ``max_bytes``; :class:`IdpUnavailable` past that."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                raise IdpUnavailable
            chunks.append(chunk)
        return b"".join(chunks)


class Discovery:
    """OpenID discovery documents per tenant in a :class:`~iap.adapters.jwks.KeyCache`:
    refreshed hourly on use, last-known-good served on errors while younger than
    ``max_stale``.

    ``authority`` is the IdP base (``https://login.microsoftonline.com``); the document of
    a tenant is ``{authority}/{tenant}/v2.0/.well-known/openid-configuration``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        authority: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_stale: float = MAX_STALE,
        clock: Clock = time.monotonic,
        observe: Observe | None = None,
    ) -> None:
        _check_session(session)
        require_https(authority)
        self._authority = authority.rstrip("/")
        client_timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self.fetcher = Fetcher(session, client_timeout, observe=observe)
        self._cache: KeyCache[str, dict[str, Any]] = KeyCache(
            self._fetch,
            error=IdpUnavailable,
            refresh_after=refresh_interval(max_stale),
            max_stale=max_stale,
            unknown_kid_interval=max_stale,  # discovery names no kid: never used
            failure_backoff=FAILURE_BACKOFF,
            clock=clock,
        )

    def url(self, tenant: str) -> str:
        """Where the discovery document of ``tenant`` lives."""
        _check_tenant(tenant)
        return f"{self._authority}/{tenant}/v2.0/.well-known/openid-configuration"

    async def document(self, tenant: str) -> dict[str, Any]:
        """The tenant's discovery document; :class:`IdpUnavailable` if none is usable."""
        self.url(tenant)  # checks the tenant
        return copy.deepcopy(await self._cache.get(tenant))

    def age(self, tenant: str) -> float | None:
        """Seconds since the tenant's document was fetched; None if it never was."""
        return self._cache.age(tenant)

    async def _fetch(self, tenant: str) -> dict[str, Any]:
        return _checked_discovery(await self.fetcher.get_json(self.url(tenant)))


def _checked_discovery(document: dict[str, Any]) -> dict[str, Any]:
    for name in ("issuer", "jwks_uri"):
        if not isinstance(document.get(name), str):
            raise IdpUnavailable
    try:
        require_https(document["jwks_uri"])
    except ValueError as exc:
        raise IdpUnavailable from exc
    return document


class JwksCache:
    """The JWKS of each tenant's ``jwks_uri`` (from discovery), per tenant, in a
    :class:`~iap.adapters.jwks.KeyCache`.

    Served from cache for 1 h (or half of ``max_stale``), then refreshed on access; a
    failed refresh keeps the last-known-good keys until they are ``max_stale`` old, after
    which :class:`IdpUnavailable` is raised. :meth:`for_unknown_kid` refetches at most once
    per 5 min per tenant. Callers get their own copy of the document.
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        max_stale: float = MAX_STALE,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        clock: Clock = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._cache: KeyCache[str, dict[str, Any]] = KeyCache(
            self._fetch,
            error=IdpUnavailable,
            refresh_after=refresh_interval(max_stale),
            max_stale=max_stale,
            unknown_kid_interval=unknown_kid_interval,
            failure_backoff=FAILURE_BACKOFF,
            clock=clock,
        )

    async def keys(self, tenant: str) -> dict[str, Any]:
        """The tenant's JWKS (``{"keys": [...]}``); :class:`IdpUnavailable` if none usable."""
        _check_tenant(tenant)
        return copy.deepcopy(await self._cache.get(tenant))

    async def for_unknown_kid(self, tenant: str) -> dict[str, Any] | None:
        """Refetch the JWKS because a token named an unknown ``kid`` (SPEC §7).

        None when this tenant already refetched within the last 5 minutes; the budget is
        spent by the attempt, whether or not it succeeds. Raises :class:`IdpUnavailable`.
        """
        _check_tenant(tenant)
        fresh = await self._cache.for_unknown_kid(tenant)
        return None if fresh is None else copy.deepcopy(fresh)

    def age(self, tenant: str) -> float | None:
        """Seconds since the tenant's JWKS was fetched; None if it never was."""
        return self._cache.age(tenant)

    async def _fetch(self, tenant: str) -> dict[str, Any]:
        """The tenant's JWKS from the ``jwks_uri`` of its discovery document."""
        discovery = await self._discovery.document(tenant)
        document = await self._discovery.fetcher.get_json(discovery["jwks_uri"], "jwks")
        if not isinstance(document.get("keys"), list):
            raise IdpUnavailable
        return document
