"""The rate-limit counters shared by every worker and replica, in Redis through the
``limits`` library's async API (SPEC §2 step 8, §5.1 ``rate_limit``, §9): the
:class:`~iap.adapters.ratelimit.SharedWindows` of :class:`~iap.adapters.ratelimit.RateLimiter`.
Apart from :mod:`iap.adapters.ratelimit` so that a process whose config has no ``redis``
imports neither redis-py nor ``limits`` (about 8 MiB of each worker's memory): only the
composition root imports this module, and only when Redis is configured.

Strategy: ``limits``' sliding window counter (see :mod:`iap.adapters.ratelimit`), two round
trips per request (take a slot, read the window).

Invariants:
- Every store failure (``limits``' ``StorageError``, any redis-py error, ``OSError``)
  surfaces as :class:`~iap.adapters.ratelimit.SharedUnavailable` naming only the failure's
  type, never the Redis URL, which may carry a password; ``ping`` answers False instead.
- Every Redis call is bounded by the client of :mod:`iap.adapters.redis_client` (shared
  with the session store): connecting and each reply take at most ``redis.timeout``
  (0.5 s by default); a refused or reset connection is retried once, a timeout is not,
  so a server that stops answering costs a request about one ``timeout`` before
  ``on_store_error`` decides.
- ``limits`` gets only the shared client (its connection pool, or the cluster client for
  ``limits``' cluster storage, ``redis+cluster://``), never a URL or a password, so its
  errors cannot echo them. Through Sentinel it is the same pool as the session store's, so
  the counts follow a failover exactly as sessions do.
- Keys live under ``key_prefix`` and expire with their window. Timestamps are the workers'
  wall clocks, so replicas sharing a Redis need synchronised clocks (NTP), as every moving
  window does.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import redis.asyncio
import redis.exceptions
from limits import RateLimitItemPerSecond, WindowStats
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow
from limits.errors import StorageError
from redis.asyncio.cluster import RedisCluster

from iap.adapters import redis_client
from iap.adapters.ratelimit import SharedUnavailable
from iap.adapters.redis_client import Client, connect_url
from iap.domain.ratelimit import Quota, Verdict

_FAILURES = (
    StorageError,
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,  # no RedisError: a cluster that cannot be reached
    OSError,
)


class _SharedClusterStorage(RedisClusterStorage):
    """``limits``' cluster storage on a cluster client that already exists (the session
    store's), rather than one it would build from a URL with the password in it. Its
    sliding-window scripts name two keys under one ``{hash tag}``, so each runs on one node.
    It sets the two attributes ``limits``' redis-py bridge keeps its client in (``storage``,
    ``connection_getter``; limits 5.x, pinned by the locks), which ``use_cluster`` would set."""

    def __init__(self, client: RedisCluster, key_prefix: str) -> None:
        self._shared_client = client
        super().__init__(
            "async+redis+cluster://",
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=key_prefix,
        )

    def configure_bridge(self) -> None:
        client = self._shared_client
        self.bridge.storage = client  # type: ignore[attr-defined]
        self.bridge.connection_getter = lambda _readonly: client  # type: ignore[attr-defined]


def _storage(client: Client, key_prefix: str) -> RedisStorage:
    if isinstance(client, RedisCluster):
        return _SharedClusterStorage(client, key_prefix)
    # limits types its pass-through options as scalars; the pool goes to redis-py.
    options: dict[str, Any] = {"connection_pool": client.connection_pool}
    return RedisStorage(
        "async+redis://",
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=key_prefix,
        **options,
    )


@lru_cache(maxsize=256)
def _item(quota: Quota) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(quota.capacity, quota.window)


def _cause(exc: BaseException) -> str:
    """The failure's type name alone: redis-py messages name hosts and may grow more."""
    inner = exc.storage_error if isinstance(exc, StorageError) else exc
    return type(inner).__name__


class RedisWindows:
    """Sliding window counters in Redis on ``client`` (from :mod:`iap.adapters.redis_client`,
    shared with the session store; a URL is built into one, with ``timeout`` bounding
    connecting and each command)."""

    def __init__(
        self,
        client: Client | str,
        *,
        timeout: float = 0.5,
        key_prefix: str = "iap:ratelimit",
    ) -> None:
        if isinstance(client, str):
            client = connect_url(client, timeout=timeout)
        self._client = client
        self._windows = AsyncSlidingWindow(_storage(client, key_prefix))

    async def hit(self, key: str, quota: Quota) -> Verdict:
        item = _item(quota)
        stats: WindowStats
        try:
            allowed = await self._windows.hit(item, key)
            stats = await self._windows.get_window_stats(item, key)
        except _FAILURES as exc:
            raise SharedUnavailable(_cause(exc)) from exc
        reset_after = max(0.0, stats.reset_time - time.time())
        return Verdict(allowed, max(0, stats.remaining), reset_after)

    async def test(self, key: str, quota: Quota) -> bool:
        try:
            return await self._windows.test(_item(quota), key)
        except _FAILURES as exc:
            raise SharedUnavailable(_cause(exc)) from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except _FAILURES:
            return False

    async def close(self) -> None:
        await redis_client.close(self._client)  # shared with the store: twice is harmless
