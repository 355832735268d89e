"""One key cache for every verifier that fetches someone's JWKS: the Entra ID tokens and
bearer tokens (``iap.adapters.idp``, per tenant) and the mesh SDK (``iap.mesh``, iap's own
keys), with the unknown-``kid`` retry they share (SPEC §7).

Invariants:
- Never refreshed in the background: an access to an entry older than ``refresh_after``
  tries one fetch. Concurrent accesses to one cache key share that fetch (single-flight:
  one lock per cache key, held across the fetch).
- A failed fetch keeps the last-known-good value, served while it is younger than
  ``max_stale``; after that, or if there never was one, the fetch's error is raised. For
  ``failure_backoff`` seconds after a failure no scheduled refresh is tried (a new
  exception of the last failure's type is raised when nothing usable is left).
- :meth:`KeyCache.for_unknown_kid` fetches at most once per ``unknown_kid_interval`` per
  cache key, so forged tokens cannot make a verifier hammer the key server; the attempt
  spends the budget whether or not it succeeds. Callers that waited while another refetch
  (or refresh) completed take its result without spending the budget.
- Fetch failures are exactly the exceptions of type ``error``; anything else propagates
  untouched. The clock is injected (``time.monotonic`` by default) and only compared.
- Dependencies: the standard library only, so the mesh SDK can import this module without
  the proxy's server dependencies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")

Clock = Callable[[], float]
UNKNOWN_KID: Final = "kid"
"""The ``reason`` of a refusal because no key of the JWKS has the token's ``kid``."""


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    fetched_at: float


class KeyCache(Generic[K, V]):
    """Values of ``fetch(key)`` (a JWKS, or the keys read from one), cached per ``key``.

    ``error`` is the exception type by which ``fetch`` reports a failure; the cache raises a
    new one (called without arguments) when a failure backoff leaves nothing usable.
    """

    def __init__(
        self,
        fetch: Callable[[K], Awaitable[V]],
        *,
        error: type[Exception],
        refresh_after: float,
        max_stale: float,
        unknown_kid_interval: float,
        failure_backoff: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._fetch_value = fetch
        self._error = error
        self._refresh_after = refresh_after
        self._max_stale = max_stale
        self._unknown_kid_interval = unknown_kid_interval
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._failed_at: dict[K, tuple[float, type[Exception]]] = {}
        self._unknown_kid_at: dict[K, float] = {}
        self._fetches: dict[K, int] = {}  # completed fetches per key, to spot shared ones
        self._locks: dict[K, asyncio.Lock] = {}

    async def get(self, key: K) -> V:
        """The value for ``key``: cached while fresh, else fetched (last-known-good on
        failure while younger than ``max_stale``). Raises ``error`` when none is usable."""
        async with self._lock(key):
            entry = self._entries.get(key)
            if entry is not None and self._age(entry) < self._refresh_after:
                return entry.value
            if self._may_refresh(key):
                try:
                    return await self._fetch(key)
                except self._error:
                    if not self._usable(entry):
                        raise
            if entry is None or not self._usable(entry):
                raise self._failed_at.get(key, (0.0, self._error))[1]()
            return entry.value  # last-known-good

    async def for_unknown_kid(self, key: K) -> V | None:
        """Fetch again because a token named a ``kid`` the cached value lacks (SPEC §7).

        The value another caller fetched while this one waited, if any; None when ``key``
        already refetched within ``unknown_kid_interval``. Raises ``error`` if the fetch
        fails (the budget is spent all the same).
        """
        completed = self._fetches.get(key, 0)
        async with self._lock(key):
            entry = self._entries.get(key)
            if entry is not None and self._fetches.get(key, 0) != completed:
                return entry.value  # a fetch finished while we waited: share it
            now = self._clock()
            last = self._unknown_kid_at.get(key)
            if last is not None and now - last < self._unknown_kid_interval:
                return None
            self._unknown_kid_at[key] = now
            return await self._fetch(key)

    def age(self, key: K) -> float | None:
        """Seconds since the value for ``key`` was last fetched; None if it never was."""
        entry = self._entries.get(key)
        return None if entry is None else self._age(entry)

    def _lock(self, key: K) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _age(self, entry: _Entry[V]) -> float:
        return self._clock() - entry.fetched_at

    def _usable(self, entry: _Entry[V] | None) -> bool:
        return entry is not None and self._age(entry) < self._max_stale

    def _may_refresh(self, key: K) -> bool:
        failed = self._failed_at.get(key)
        return failed is None or self._clock() - failed[0] >= self._failure_backoff

    async def _fetch(self, key: K) -> V:
        """Fetch and store the value; the caller holds the key's lock."""
        try:
            value = await self._fetch_value(key)
        except self._error as exc:
            self._failed_at[key] = (self._clock(), type(exc))
            raise
        self._entries[key] = _Entry(value, self._clock())
        self._failed_at.pop(key, None)
        self._fetches[key] = self._fetches.get(key, 0) + 1
        return value


async def verify_with_refetch(
    check: Callable[[V], R],
    keys: V,
    refetch: Callable[[], Awaitable[V | None]],
    *,
    refused: type[Exception],
) -> R:
    """``check(keys)``; when it raises ``refused`` with ``reason == "kid"`` (no key has the
    token's ``kid``: a rotation the cache has not seen), ``check`` once more with the keys
    of ``refetch()``. A None from ``refetch`` (the refetch budget is spent) re-raises the
    first refusal; whatever ``refetch`` raises propagates.

    ``refused`` is the checker's refusal type: ``tokens.InvalidToken``,
    ``idtoken.InvalidIdToken`` and ``bearer.InvalidBearer`` all carry a ``reason``.
    """
    try:
        return check(keys)
    except refused as exc:
        if getattr(exc, "reason", None) != UNKNOWN_KID:
            raise
        fresh = await refetch()
        if fresh is None:
            raise
    return check(fresh)
