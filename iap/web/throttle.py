"""The gateway's two rate limits: the edge-wide one on failed credentials
(``auth_failures``) and each route's own (SPEC §2 step 8, §5.1).

Invariants:
- A client address that failed too often gets 429 before its bearer token or sign-in
  callback is even examined (credential stuffing, bursts of random ``kid``s); only a
  request that presented credentials, and whose credentials failed, is counted.
- A route's limit applies after the decision and before a token is minted or the
  upstream contacted; over it, 429 with ``Retry-After`` and the RateLimit headers.
- When the store cannot count, ``on_store_error`` decides (the failure counter always
  allows), and an allowed request carries no RateLimit headers: nothing is known.
"""

from __future__ import annotations

import re

from aiohttp import web

from iap.adapters.metrics import Metrics
from iap.adapters.ratelimit import RateLimiter
from iap.config import Config
from iap.domain import ratelimit
from iap.errors import TooManyRequests
from iap.model import Exchange, Identity
from iap.web.routes import PreparedRoute

_CREDENTIAL_PATHS = ("/.iap/callback", "/.iap/token")
_FAILED = re.compile(r"(?:exchange_)?bearer_|login_refused:")
"""Audit reasons of a credential that failed: a refused bearer token or sign-in."""


class Throttle:
    """Both limits over one :class:`RateLimiter`; one per gateway."""

    def __init__(self, config: Config, *, limiter: RateLimiter | None, metrics: Metrics) -> None:
        failures = config.auth_failures
        self._failures = ratelimit.Quota(failures.requests, failures.per) if failures else None
        self._limiter = limiter
        self._metrics = metrics

    async def slow_down(self, request: web.BaseRequest, exchange: Exchange) -> bool:
        """429 for a client address over ``auth_failures``; whether this request presents
        credentials that count (then :meth:`settle` it once answered)."""
        failures = self._failures
        presents = (
            request.raw_path.startswith(_CREDENTIAL_PATHS)
            or request.headers.get("Authorization", "")[:7].lower() == "bearer "
        )
        if failures is None or self._limiter is None or not presents:
            return False
        if await self._limiter.exhausted(_failure_key(exchange), failures):
            exchange.decision = "deny"
            raise TooManyRequests(
                reason="auth_failures_limited", headers=[("Retry-After", str(failures.window))]
            )
        return True

    @staticmethod
    def failed(exchange: Exchange) -> bool:
        """Whether the answered request's credentials failed (its audit reason says so)."""
        return _FAILED.match(exchange.reason or "") is not None

    async def settle(self, exchange: Exchange) -> None:
        """Count one failed credential against the request's client address."""
        assert self._failures is not None
        assert self._limiter is not None
        await self._limiter.hit(_failure_key(exchange), self._failures, on_store_error="allow")

    async def route_limit(
        self, route: PreparedRoute, exchange: Exchange, identity: Identity | None
    ) -> list[tuple[str, str]]:
        """The route's limit: 429 over it; otherwise the RateLimit headers for the reply."""
        limit, quota = route.config.rate_limit, route.quota
        if limit is None or quota is None or self._limiter is None:
            return []
        key = ratelimit.key_for(
            limit.key,
            route=route.name,
            subject=identity.subject if identity else None,
            client=exchange.client_ip,
        )
        verdict = await self._limiter.hit(key, quota, on_store_error=limit.on_store_error)
        if verdict.store_error and verdict.allowed:
            return []  # nothing known to tell the client
        if verdict.allowed:
            return ratelimit.headers(
                limit=quota, remaining=verdict.remaining, reset_after=verdict.reset_after
            )
        self._metrics.rate_limited.labels(route.name).inc()
        exchange.decision = "deny"
        reason = "rate_limit_store_error" if verdict.store_error else "rate_limited"
        raise TooManyRequests(
            reason=reason,
            headers=ratelimit.headers(
                limit=quota, remaining=0, reset_after=verdict.reset_after, refused=True
            ),
        )


def _failure_key(exchange: Exchange) -> str:
    """The counter of failed credentials of the request's client address."""
    return ratelimit.key_for(
        "client", route="_auth_failures", subject=None, client=exchange.client_ip
    )
