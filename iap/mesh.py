"""For Python services inside the mesh: verify the tokens iap mints and carry identity and
trace context on east-west calls (SPEC §6, issue 4). See docs/mesh.md.

    verifier = Verifier(jwks_url, issuer="https://edge.contoso.com/.iap", audience="orders")
    app = web.Application(middlewares=[middleware(verifier)])
    # in a handler: request[IDENTITY].subject; await call(session, "GET", url, request=request)

Invariants:
- The token checks are iap's own (``iap.domain.tokens``: ``header_kid``, ``verify``), the same
  code that judges iap tokens at the edge; this module adds the JWKS fetching around them.
- The header is judged before any key is fetched or touched: ``alg`` must be exactly
  ``ES256`` (no ``none``, no HMAC keyed with the public key: RFC 8725 §2.1, §3.1,
  CVE-2015-9235), and headers that carry or point at a key (``jwk``, ``jku``, ``x5u``,
  ``x5c``) or demand extensions (``crit``, ``b64``) are refused (RFC 8725 §3.10). A refused
  header costs no JWKS fetch.
- The key is chosen here, by ``kid``, among the EC P-256 keys of the configured JWKS; joserfc
  gets that one key and the allow-list ``["ES256"]``, never a choice of its own.
- Every segment is canonical base64url, so a token has exactly one encoding.
- Claims: ``iss`` equal to the issuer, ``aud`` equal to (or a list containing) the audience,
  integer ``exp`` (required), ``nbf`` and ``iat`` (required) within ``leeway`` (RFC 7519 §2,
  §4.1), ``sub`` and ``tid`` non-empty strings. A refusal raises :class:`InvalidToken` with a
  short ``reason``; messages never contain the token or its claims.
- JWKS cache: one fetch at a time (single-flight), fresh for an hour; an unknown ``kid``
  refetches at most once per ``refetch_interval``, so forged tokens cannot make a service
  hammer iap; a failed fetch keeps the last-known-good keys (for up to a day) and is not
  retried for :data:`FAILURE_BACKOFF` seconds. Redirects are not followed; bodies are
  bounded; no cookies are stored.
- :func:`forward_headers` copies an allow-list (the token, correlation and request ids, W3C
  trace context and baggage, B3 multi headers) and nothing else: never cookies.
- Dependencies: aiohttp, joserfc and ``iap.domain.tokens`` (pure: cryptography, joserfc).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from joserfc.jwk import ECKey
from multidict import CIMultiDict
from yarl import URL

from iap.domain import claims as read
from iap.domain import tokens

REFRESH_AFTER: Final = 3600.0
"""Seconds a fetched JWKS is used before the next access refreshes it."""
MAX_STALE: Final = 24 * 3600.0
"""Seconds the last-known-good JWKS stays usable while refreshes fail."""
FAILURE_BACKOFF: Final = 10.0
"""Seconds after a failed fetch during which no scheduled refresh is tried."""
MAX_TOKEN_LENGTH: Final = 16 * 1024
"""An iap token is well under 2 KB; longer ones are refused before any parsing."""
MAX_JWKS_BYTES: Final = 256 * 1024
FORWARDED_HEADERS: Final = (
    "X-Correlation-ID",
    "X-Request-ID",
    "traceparent",
    "tracestate",
    "baggage",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
"""What an east-west call carries besides the token (SPEC §6 headers to the upstream)."""
#: List-valued headers whose repeated lines are one value (W3C Trace Context §3.3, Baggage).
_LIST_HEADERS = frozenset({"tracestate", "baggage"})

Clock = Callable[[], float]
log = logging.getLogger(__name__)


class MeshError(Exception):
    """Root of this module's errors: :class:`InvalidToken`, :class:`KeysUnavailable`."""


class InvalidToken(MeshError):
    """The token is refused; ``reason`` is a short code for logs and metrics (``alg``,
    ``header``, ``malformed``, ``kid``, ``signature``, ``iss``, ``aud``, ``exp``, ``nbf``,
    ``iat``, ``missing``, ``scheme``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"token refused ({reason})")
        self.reason = reason


class KeysUnavailable(MeshError):
    """No usable JWKS: never fetched, or the last-known-good one is too old (answer 503)."""

    def __init__(self) -> None:
        super().__init__("iap signing keys unavailable")


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


IDENTITY: Final = web.RequestKey("iap.mesh.identity", MeshIdentity)
"""Where :func:`middleware` stores the caller's :class:`MeshIdentity` on the request."""


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
        _check_url(jwks_url)
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        if leeway < 0 or refetch_interval < 0:
            raise ValueError("leeway and refetch_interval must not be negative")
        self._url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._lock = asyncio.Lock()
        self._keys: dict[str, ECKey] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._unknown_kid_at: float | None = None

    async def verify(self, token: str) -> MeshIdentity:
        """The identity in ``token``. Raises :class:`InvalidToken`, or
        :class:`KeysUnavailable` when no JWKS could ever be obtained (or it is too old)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed")
        try:  # the checks are iap's own (iap.domain.tokens): one verifier on both sides
            kid = tokens.header_kid(token)
            keys = await self._current()
            if kid not in keys:
                keys = await self._after_unknown_kid(kid)
            claims = tokens.verify(
                token,
                keys,
                issuer=self._issuer,
                audience=self._audience,
                now=int(self._clock()),
                skew=self._leeway,
            )
        except tokens.InvalidToken as exc:
            raise InvalidToken(exc.reason) from None
        return _identity(claims, self._audience)

    async def close(self) -> None:
        """Close the session this verifier made, if any."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Verifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the JWKS cache ---------------------------------------------------------------

    async def _current(self) -> Mapping[str, ECKey]:
        """The keys, refreshed first when older than an hour (unless a fetch just failed)."""
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < REFRESH_AFTER:
                return self._keys
            if self._failed_at is None or now - self._failed_at >= FAILURE_BACKOFF:
                try:
                    return await self._fetch()
                except KeysUnavailable:
                    pass
            if self._fetched_at is None or now - self._fetched_at >= MAX_STALE:
                raise KeysUnavailable
            return self._keys  # last-known-good

    async def _after_unknown_kid(self, kid: str) -> Mapping[str, ECKey]:
        """The keys after a refetch for ``kid``, if the budget allows one (SPEC §7)."""
        async with self._lock:
            if kid in self._keys:  # a concurrent verify refetched meanwhile
                return self._keys
            now = self._clock()
            last = self._unknown_kid_at
            if last is not None and now - last < self._refetch_interval:
                return self._keys
            self._unknown_kid_at = now
            try:
                return await self._fetch()
            except KeysUnavailable:
                return self._keys

    async def _fetch(self) -> Mapping[str, ECKey]:
        """Fetch and store the JWKS; the caller holds the lock."""
        try:
            keys = _p256_keys(await self._get())
        except KeysUnavailable as exc:
            self._failed_at = self._clock()
            log.warning("iap JWKS fetch failed: %r", exc.__cause__ or exc)
            raise
        self._keys, self._fetched_at, self._failed_at = keys, self._clock(), None
        return keys

    async def _get(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            async with self._session.get(
                self._url,
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


def _check_url(url: str) -> None:
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


def _p256_keys(document: Any) -> dict[str, ECKey]:
    """The ES256 keys of a JWK Set by ``kid`` (``iap.domain.tokens.public_keys``)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable
    return tokens.public_keys(document["keys"])


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


# --- aiohttp server side ----------------------------------------------------------------


def middleware(
    verifier: Verifier, *, header: str = "authorization", required: bool = True
) -> Middleware:
    """An aiohttp middleware that verifies the iap token of every request and stores the
    caller at ``request[IDENTITY]``.

    The token is read from ``Authorization: Bearer <token>``, or bare from ``header`` when
    iap is configured with another ``tokens.header``. Missing (when ``required``) or invalid:
    401 JSON with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3) and no handler
    call. With ``required=False`` a request without a token reaches the handler with no
    identity (``request.get(IDENTITY)`` is None); an invalid token is still a 401. No JWKS:
    503.
    """
    name = header.lower()

    @web.middleware
    async def iap_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            token = _token_from(request, name)
            if token is not None:
                request[IDENTITY] = await verifier.verify(token)
        except InvalidToken as exc:
            log.info("iap token refused (%s): %s %s", exc.reason, request.method, request.path)
            return _unauthorized(request, invalid=True)
        except KeysUnavailable:
            return _error(request, 503, "temporarily_unavailable", {"Retry-After": "10"})
        if token is None and required:
            return _unauthorized(request, invalid=False)
        return await handler(request)

    return iap_token


def _token_from(request: web.BaseRequest, name: str) -> str | None:
    """The token in header ``name``; None when absent. A repeated header is refused."""
    values = request.headers.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("header")
    value = values[0]
    if name == "authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":  # RFC 7235 §2.1: schemes are case-insensitive
            raise InvalidToken("scheme")
    token = value.strip(" ")
    if not token:
        raise InvalidToken("missing")
    return token


def _unauthorized(request: web.BaseRequest, *, invalid: bool) -> web.Response:
    # RFC 6750 §3.1: no error code when the request carried no token at all.
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    error = "invalid_token" if invalid else "unauthorized"
    return _error(request, 401, error, {"WWW-Authenticate": challenge})


def _error(
    request: web.BaseRequest, status: int, error: str, headers: Mapping[str, str]
) -> web.Response:
    body = {"error": error}
    correlation_id = request.headers.get("X-Correlation-ID", "")
    if 0 < len(correlation_id) <= 128:
        body["correlation_id"] = correlation_id
    return web.json_response(body, status=status, headers={**headers, "Cache-Control": "no-store"})


# --- aiohttp client side ----------------------------------------------------------------


def forward_headers(request: web.BaseRequest, *, header: str = "authorization") -> dict[str, str]:
    """The headers an east-west call made on behalf of ``request`` carries: the incoming
    token unchanged (``Authorization``, or ``header``) and :data:`FORWARDED_HEADERS`, when
    present; nothing else. A header sent more than once is dropped as ambiguous, except
    ``tracestate`` and ``baggage``, whose lines are joined (RFC 9110 §5.3)."""
    token_header = "Authorization" if header.lower() == "authorization" else header
    forwarded: dict[str, str] = {}
    for name in (token_header, *FORWARDED_HEADERS):
        values = request.headers.getall(name, [])
        if name.lower() in _LIST_HEADERS and values:
            forwarded[name] = ",".join(values)
        elif len(values) == 1:
            forwarded[name] = values[0]
    return forwarded


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    request: web.BaseRequest,
    header: str = "authorization",
    **kwargs: Any,
) -> aiohttp.ClientResponse:
    """``session.request(method, url, **kwargs)`` carrying :func:`forward_headers` of
    ``request``; headers given in ``kwargs`` win over forwarded ones of the same name.
    Redirects are not followed unless ``allow_redirects=True`` is passed, so the token goes
    only where it was sent. Use as ``async with await call(...) as response``."""
    headers: CIMultiDict[str] = CIMultiDict(forward_headers(request, header=header))
    given = kwargs.pop("headers", None)
    if given:
        headers.update(given)
    kwargs.setdefault("allow_redirects", False)
    return await session.request(method, url, headers=headers, **kwargs)
