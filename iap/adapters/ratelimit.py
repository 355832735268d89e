"""Counting requests against a route's quota, in process memory or in Redis (SPEC §2
step 8, §5.1 ``rate_limit``, §9): Redis through the ``limits`` library's async API
(:mod:`iap.adapters.ratelimit_redis`, which the composition root imports only when Redis
is configured, so a process without it loads neither redis-py nor ``limits``), process
memory through :class:`ProcessWindows`, the same strategy in one dictionary.

Strategy: ``limits``' sliding window counter. It keeps two counters per key (this window and
the previous one) and weighs the previous count by the part of it still inside the last
``per`` seconds, so a caller cannot spend the quota at the end of one window and again at the
start of the next (a fixed window's flaw, which would make ``burst`` meaningless). It is an
approximation of a moving window that costs O(1) per key: the moving window stores one
timestamp per counted request, and its memory store moves each key's expiry to a thread on
every hit, which halved the throughput of a limited route in ``make bench``
(docs/PERFORMANCE.md). Two round trips per request on Redis (take a slot, read the window).

Process memory uses :class:`ProcessWindows`, the same sliding window counter kept in one
dictionary on the event loop: one lookup and a few float operations per request. It is
written here rather than taken from ``limits`` because ``limits``' memory store cost 35 µs
of CPU per request in ``make bench`` (every hit goes through the strategy, the key builder,
an exception wrapper, per-key thread locks, several dictionary lookups and clock reads, and
starts a new expiry thread every 10 ms under load), which held a limited route to 0.81x of
the same route without a limit, against the 0.95x the decisions issue asks for. Its
arithmetic is ``limits``' own, and a property test holds it to ``limits.MemoryStorage``
verdict for verdict (tests/unit/test_process_windows.py). Redis stays on ``limits``.

Invariants:
- A store failure never raises: ``hit`` returns a :class:`Verdict` with
  ``store_error=True`` whose ``allowed`` is the route's ``on_store_error`` ("allow"
  admits, anything else refuses, so a typo fails closed), calls the error counter and
  logs a warning (at most one every ``_WARN_EVERY`` seconds, with how many failures it
  covers) naming only the exception type: never the Redis URL, which may carry a
  password.
- The shared counters (:class:`SharedWindows`) raise only :class:`SharedUnavailable`,
  whose ``cause`` is the failure's type name; their bounds and their care for the URL are
  :mod:`iap.adapters.ratelimit_redis`'s.
- Keys come from :func:`iap.domain.ratelimit.key_for`; both stores count per key and
  quota, so changing a route's limit starts its counts afresh. Redis keys live under
  ``key_prefix`` and expire with their window. Timestamps are the workers' wall clocks,
  so replicas sharing a Redis need synchronised clocks (NTP), as every moving window does.
- Without a Redis URL the counts are per process (one worker; SPEC §9).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from iap.domain.ratelimit import Quota, Verdict

log = logging.getLogger("iap.ratelimit")

_WARN_EVERY = 10.0  # seconds between two store-failure warnings


class ProcessWindows:
    """Sliding window counters in process memory: per (key, quota), the index of the
    current ``window``-second window, the count of the window before it and its own.

    ``limits``' sliding window counter, kept in one dict: a request is allowed while the
    previous window's count, weighted by the share of that window still inside the last
    ``window`` seconds, plus the current count stays within capacity (rounded down, as
    ``limits`` does). ``clock`` is wall-clock seconds (``time.time``), like ``limits``,
    so a verdict's reset matches Redis'. Counters older than the previous window are
    dropped at most once a second, so memory is bounded by the keys seen in the last two
    windows. Not thread-safe: the event loop is its only caller.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, int, int], tuple[int, int, int]] = {}
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str, capacity: int, window: int) -> Verdict:
        """Count one request under ``key`` if ``capacity`` allows it, and say what is left."""
        now = self._clock()
        if now - self._swept >= 1.0:
            self._sweep(now)
        slot = (key, capacity, window)
        index = int(now / window)
        seen = self._windows.get(slot)
        if seen is None or seen[0] < index - 1:
            previous = current = 0
        elif seen[0] < index:
            previous, current = seen[2], 0
        else:
            index, previous, current = seen
        if previous:  # the part of the previous window still inside the last `window` s
            overlap = (1 - (((now - window) / window) % 1)) * window
            weighted = previous * overlap / window + current
        else:
            weighted = current
        if allowed := weighted < capacity:  # floor(weighted) + 1 <= capacity
            current += 1
            weighted += 1
            self._windows[slot] = (index, previous, current)
        remaining = capacity - math.floor(weighted) if weighted < capacity else 0
        # The reset: when the current window becomes the previous one, or sooner when the
        # previous window's weight next drops by one request.
        resets = ((1 - ((now / window) % 1)) * window + window) % window if current else math.inf
        if previous:
            resets = min(resets, overlap % (window / previous))
        return Verdict(allowed, remaining, resets if resets < math.inf else 0.0)

    def test(self, key: str, capacity: int, window: int) -> bool:
        """Whether one more request under ``key`` would be allowed, without counting it."""
        now = self._clock()
        seen = self._windows.get((key, capacity, window))
        index = int(now / window)
        if seen is None or seen[0] < index - 1:
            return True
        previous, current = (seen[2], 0) if seen[0] < index else seen[1:]
        overlap = (1 - (((now - window) / window) % 1)) * window if previous else 0.0
        return previous * overlap / window + current < capacity

    def _sweep(self, now: float) -> None:
        self._swept = now
        stale = [
            slot for slot, (index, _, _) in self._windows.items() if index < int(now / slot[2]) - 1
        ]
        for slot in stale:
            del self._windows[slot]


class SharedUnavailable(Exception):
    """The shared counters did not answer; ``cause`` names the failure's type alone (a
    redis-py message may name hosts)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class SharedWindows(Protocol):
    """Counters shared by every worker and replica
    (:class:`iap.adapters.ratelimit_redis.RedisWindows`); each call raises
    :class:`SharedUnavailable` when the store fails."""

    async def hit(self, key: str, quota: Quota) -> Verdict:
        """Count one request under ``key`` if ``quota`` allows it, and say what is left."""
        ...

    async def test(self, key: str, quota: Quota) -> bool:
        """Whether one more request under ``key`` would be allowed, without counting it."""
        ...

    async def ping(self) -> bool:
        """Whether the counters answer; False (never raises) when they do not."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...


class RateLimiter:
    """The process's rate-limit counters: memory when ``shared`` is None, else the shared
    counters (Redis, shared by every worker and replica; the composition root builds
    them). Build once per process; ``close`` at exit.

    ``on_store_error_count`` is called once per store failure
    (``iap_rate_limit_store_errors_total``).
    """

    def __init__(
        self,
        shared: SharedWindows | None = None,
        *,
        on_store_error_count: Callable[[], None] | None = None,
    ) -> None:
        self._count = on_store_error_count
        self._shared = shared
        self._memory = ProcessWindows() if shared is None else None
        self._failing = False
        self._warned_at = -math.inf
        self._unreported = 0

    async def hit(self, key: str, quota: Quota, *, on_store_error: str) -> Verdict:
        """Count one request under ``key`` against ``quota``. A store failure is decided
        by ``on_store_error`` ("allow" | "deny")."""
        if self._memory is not None:
            return self._memory.hit(key, quota.capacity, quota.window)
        assert self._shared is not None
        try:
            verdict = await self._shared.hit(key, quota)
        except SharedUnavailable as exc:
            return self._failed(exc, on_store_error)
        if self._failing:
            self._failing = False
            log.info("rate-limit store reachable again")
        return verdict

    async def exhausted(self, key: str, quota: Quota) -> bool:
        """Whether ``key`` has used up ``quota``, without counting. A store failure
        answers False: this check only slows callers down."""
        if self._memory is not None:
            return not self._memory.test(key, quota.capacity, quota.window)
        assert self._shared is not None
        try:
            return not await self._shared.test(key, quota)
        except SharedUnavailable as exc:
            self._failed(exc, "allow")
            return False

    def _failed(self, exc: SharedUnavailable, on_store_error: str) -> Verdict:
        if self._count is not None:
            self._count()
        self._failing = True
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            log.warning(
                "rate-limit store unavailable (%s): %d request(s) decided by "
                "on_store_error since the last warning, this one: %s",
                exc.cause,
                self._unreported,
                on_store_error,
            )
            self._warned_at, self._unreported = now, 0
        return Verdict(on_store_error == "allow", 0, 0.0, store_error=True)

    async def ping(self) -> bool:
        """Whether the counters can be reached (``/readyz``); memory always can."""
        return True if self._shared is None else await self._shared.ping()

    async def close(self) -> None:
        """Release the Redis connections (memory has nothing to release)."""
        if self._shared is not None:
            await self._shared.close()  # shares the store's client: twice is harmless
