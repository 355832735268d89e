"""Server-side session state: a small async key-value interface, in memory or in Redis
(SPEC §7 "Sessions", §9 "State and scale"). The Redis store is
:class:`iap.adapters.redis_store.RedisStore`, apart so that a process without Redis never
imports redis-py.

Invariants:
- Every value, sid index and lock carries a TTL; nothing is stored forever.
- A lock is released only by its owner: each acquisition gets a random token, and release
  compares and deletes atomically (the Redis docs' single-instance lock pattern), so an
  owner whose lock expired cannot release the next owner's lock.
- A sid index lives as long as its longest-lived entry; a later, shorter TTL never
  shortens it. Listing may name handles whose sessions are gone; deleting them is harmless.
- Every Redis failure surfaces as :class:`StoreUnavailable`, never as a redis-py
  exception (:mod:`iap.adapters.redis_store`), so callers can fail closed (SPEC §9: no
  request is forwarded unauthenticated).
- :class:`MemoryStore` serves one process; it expires entries lazily on access, by a
  monotonic clock that tests may inject.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from iap.errors import IapError

_T = TypeVar("_T")


class StoreUnavailable(IapError):
    """The session store cannot be reached; the caller must fail closed."""


class Lock(Protocol):
    """A held lock; ``release`` frees it only while this holder still owns it."""

    async def release(self) -> bool:
        """Free the lock if still the owner; True when it was freed."""
        ...


class SessionStore(Protocol):
    """Async key-value storage for sessions, sid indexes and refresh locks."""

    async def get(self, handle: str) -> bytes | None:
        """The value stored under ``handle``, or None when absent or expired."""
        ...

    async def put(self, handle: str, value: bytes, *, ttl: float) -> None:
        """Store ``value`` under ``handle`` for ``ttl`` seconds, replacing any old value."""
        ...

    async def delete(self, handle: str) -> None:
        """Forget ``handle``; deleting an absent handle is not an error."""
        ...

    async def index_sid(self, sid: str, handle: str, *, ttl: float) -> None:
        """Remember that ``handle`` belongs to the IdP session ``sid`` (front-channel logout)."""
        ...

    async def handles_for_sid(self, sid: str) -> list[str]:
        """Every handle indexed under ``sid`` while the index lives, sorted."""
        ...

    async def acquire_lock(self, name: str, *, ttl: float) -> Lock | None:
        """Take the lock ``name`` for ``ttl`` seconds, or None when someone else holds it."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers (``/readyz``)."""
        ...

    def state(self) -> dict[str, object]:
        """``/readyz``'s view: ``backend``, whether the last ping ``answers``, and the
        ``error`` type when it did not (never a message, which may name hosts)."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def _ttl_ms(ttl: float) -> int:
    """A positive TTL in whole milliseconds, rounded up so it never ends early."""
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _new_token() -> str:
    return secrets.token_hex(16)


# --- in memory -------------------------------------------------------------------------


@dataclass
class _MemoryLock:
    store: MemoryStore
    name: str
    token: str

    async def release(self) -> bool:
        return self.store._release(self.name, self.token)


class MemoryStore:
    """A :class:`SessionStore` for one process. ``clock`` returns monotonic seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[bytes, float]] = {}
        self._sids: dict[str, tuple[set[str], float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._sweep_at = 1024

    def _live(self, table: dict[str, tuple[_T, float]], key: str) -> _T | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del table[key]
            return None
        return entry[0]

    def _sweep(self) -> None:
        """Drop expired entries now and then, so keys never read again do not pile up."""
        size = len(self._values) + len(self._sids) + len(self._locks)
        if size < self._sweep_at:
            return
        now = self._clock()
        for table in (self._values, self._sids, self._locks):
            for key in [k for k, (_, deadline) in table.items() if deadline <= now]:
                del table[key]
        self._sweep_at = max(1024, 2 * (len(self._values) + len(self._sids) + len(self._locks)))

    async def get(self, handle: str) -> bytes | None:
        return self._live(self._values, handle)

    async def put(self, handle: str, value: bytes, *, ttl: float) -> None:
        deadline = self._clock() + _ttl_ms(ttl) / 1000
        self._values[handle] = (bytes(value), deadline)
        self._sweep()

    async def delete(self, handle: str) -> None:
        self._values.pop(handle, None)

    async def index_sid(self, sid: str, handle: str, *, ttl: float) -> None:
        deadline = self._clock() + _ttl_ms(ttl) / 1000
        handles = self._live(self._sids, sid) or set()
        old = self._sids.get(sid)
        handles.add(handle)
        self._sids[sid] = (handles, max(deadline, old[1] if old else deadline))
        self._sweep()

    async def handles_for_sid(self, sid: str) -> list[str]:
        return sorted(self._live(self._sids, sid) or ())

    async def acquire_lock(self, name: str, *, ttl: float) -> Lock | None:
        if self._live(self._locks, name) is not None:
            return None
        token = _new_token()
        self._locks[name] = (token, self._clock() + _ttl_ms(ttl) / 1000)
        self._sweep()
        return _MemoryLock(self, name, token)

    def _release(self, name: str, token: str) -> bool:
        if self._live(self._locks, name) != token:
            return False
        del self._locks[name]
        return True

    async def ping(self) -> bool:
        return True

    def state(self) -> dict[str, object]:
        return {"backend": "memory", "answers": True}

    async def close(self) -> None:
        self._values.clear()
        self._sids.clear()
        self._locks.clear()
