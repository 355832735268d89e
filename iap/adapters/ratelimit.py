"""Counting requests against a route's quota, in process memory or in Redis (SPEC §2
step 8, §5.1 ``rate_limit``, §9), on the ``limits`` library's async API.

Strategy: ``limits``' sliding window counter. It keeps two counters per key (this window and
the previous one) and weighs the previous count by the part of it still inside the last
``per`` seconds, so a caller cannot spend the quota at the end of one window and again at the
start of the next (a fixed window's flaw, which would make ``burst`` meaningless). It is an
approximation of a moving window that costs O(1) per key: the moving window stores one
timestamp per counted request, and its memory store moves each key's expiry to a thread on
every hit, which halved the throughput of a limited route in ``make bench``
(docs/PERFORMANCE.md). Two round trips per request on Redis (take a slot, read the window).

Process memory uses ``limits``' synchronous API (``limits.storage.MemoryStorage``), called
directly on the event loop: each call is a few dictionary operations, and the per-key thread
locks around the counters are taken by the loop's thread only (the expiry thread drops
expired counters without them), so a call never waits. Its async twin costs about
four times as much per request: every storage call is a coroutine wrapped in another, and
every hit schedules a task that walks all keys to expire them (O(keys) per request). The
synchronous store expires keys from a timer thread at most every 10 ms instead.

Invariants:
- A store failure never raises: ``hit`` returns a :class:`Verdict` with
  ``store_error=True`` whose ``allowed`` is the route's ``on_store_error`` ("allow"
  admits, anything else refuses, so a typo fails closed), calls the error counter and
  logs a warning (at most one every ``_WARN_EVERY`` seconds, with how many failures it
  covers) naming only the exception type: never the Redis URL, which may carry a
  password.
- Every Redis call is bounded by redis-py's socket timeouts: connecting and each reply
  take at most ``timeout`` seconds (0.5 by default). A refused or reset connection is
  retried once at once, to step over a pooled connection that died with a Redis
  restart; a timeout is not retried, so a server that stops answering costs a request
  about one ``timeout`` before ``on_store_error`` decides.
- The Redis URL goes to redis-py only (a connection pool); ``limits`` never sees it,
  so its errors cannot echo it.
- Keys come from :func:`iap.domain.ratelimit.key_for`; ``limits`` appends the quota,
  so changing a route's limit starts its counts afresh. Redis keys live under
  ``key_prefix`` and expire with their window. Timestamps are the workers' wall clocks,
  so replicas sharing a Redis need synchronised clocks (NTP), as every moving window does.
- Without a Redis URL the counts are per process (one worker; SPEC §9).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import redis.asyncio
import redis.exceptions
from limits import RateLimitItemPerSecond, WindowStats
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from iap.domain.ratelimit import Quota, Verdict

log = logging.getLogger("iap.ratelimit")

_WARN_EVERY = 10.0  # seconds between two store-failure warnings
_FAILURES = (StorageError, redis.exceptions.RedisError, OSError)


@lru_cache(maxsize=256)
def _item(quota: Quota) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(quota.capacity, quota.window)


def _cause(exc: BaseException) -> str:
    """The failure's type name alone: redis-py messages name hosts and may grow more."""
    inner = exc.storage_error if isinstance(exc, StorageError) else exc
    return type(inner).__name__


class RateLimiter:
    """The process's rate-limit counters: memory when ``redis_url`` is None, else Redis
    (shared by every worker and replica). Build once per process; ``close`` at exit.

    ``on_store_error_count`` is called once per store failure
    (``iap_rate_limit_store_errors_total``).
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        timeout: float = 0.5,
        key_prefix: str = "iap:ratelimit",
        on_store_error_count: Callable[[], None] | None = None,
    ) -> None:
        self._count = on_store_error_count
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._client: redis.asyncio.Redis | None = None
        self._memory: SlidingWindowCounterRateLimiter | None = None
        self._shared: AsyncSlidingWindow | None = None
        if redis_url is None:
            self._memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        else:
            self._pool = _pool(redis_url, timeout)
            self._client = redis.asyncio.Redis(connection_pool=self._pool)
            # limits types its pass-through options as scalars; the pool goes to redis-py.
            options: dict[str, Any] = {"connection_pool": self._pool}
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=key_prefix,
                **options,
            )
            self._shared = AsyncSlidingWindow(storage)
        self._failing = False
        self._warned_at = -math.inf
        self._unreported = 0

    async def hit(self, key: str, quota: Quota, *, on_store_error: str) -> Verdict:
        """Count one request under ``key`` against ``quota``. A store failure is decided
        by ``on_store_error`` ("allow" | "deny")."""
        item = _item(quota)
        stats: WindowStats
        try:
            if self._memory is not None:
                allowed = self._memory.hit(item, key)
                stats = self._memory.get_window_stats(item, key)
            else:
                assert self._shared is not None
                allowed = await self._shared.hit(item, key)
                stats = await self._shared.get_window_stats(item, key)
        except _FAILURES as exc:
            return self._failed(exc, on_store_error)
        if self._failing:
            self._failing = False
            log.info("rate-limit store reachable again")
        reset_after = max(0.0, stats.reset_time - time.time())
        return Verdict(allowed, max(0, stats.remaining), reset_after)

    async def exhausted(self, key: str, quota: Quota) -> bool:
        """Whether ``key`` has used up ``quota``, without counting. A store failure
        answers False: this check only slows callers down."""
        item = _item(quota)
        try:
            if self._memory is not None:
                return not self._memory.test(item, key)
            assert self._shared is not None
            return not await self._shared.test(item, key)
        except _FAILURES as exc:
            self._failed(exc, "allow")
            return False

    def _failed(self, exc: BaseException, on_store_error: str) -> Verdict:
        if self._count is not None:
            self._count()
        self._failing = True
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            log.warning(
                "rate-limit store unavailable (%s): %d request(s) decided by "
                "on_store_error since the last warning, this one: %s",
                _cause(exc),
                self._unreported,
                on_store_error,
            )
            self._warned_at, self._unreported = now, 0
        return Verdict(on_store_error == "allow", 0, 0.0, store_error=True)

    async def ping(self) -> bool:
        """Whether the counters can be reached (``/readyz``); memory always can."""
        if self._client is None:
            return True
        try:
            return bool(await self._client.ping())
        except _FAILURES:
            return False

    async def close(self) -> None:
        """Release connections, or stop the memory store's expiry timer."""
        if self._client is not None and self._pool is not None:
            await self._client.aclose()
            await self._pool.aclose()
        elif self._memory is not None:
            storage = self._memory.storage
            assert isinstance(storage, MemoryStorage)
            storage.timer.cancel()


def _pool(url: str, timeout: float) -> redis.asyncio.ConnectionPool:
    """A pool whose every connect and reply is bounded by ``timeout`` seconds."""
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    try:
        return redis.asyncio.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry
        )
    except ValueError:
        # redis-py's message may quote the URL, password included.
        raise ValueError("redis.url is not a valid Redis URL") from None
