"""Server-side session state: a small async key-value interface, in memory or in Redis
(SPEC §7 "Sessions", §9 "State and scale").

Invariants:
- Every value, sid index and lock carries a TTL; nothing is stored forever.
- A lock is released only by its owner: each acquisition gets a random token, and release
  compares and deletes atomically (the Redis docs' single-instance lock pattern), so an
  owner whose lock expired cannot release the next owner's lock.
- A sid index lives as long as its longest-lived entry; a later, shorter TTL never
  shortens it. Listing may name handles whose sessions are gone; deleting them is harmless.
- Every Redis failure surfaces as :class:`StoreUnavailable`, never as a redis-py
  exception, so callers can fail closed (SPEC §9: no request is forwarded unauthenticated).
- :class:`MemoryStore` serves one process; it expires entries lazily on access, by a
  monotonic clock that tests may inject.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis.asyncio
import redis.exceptions

from iap.adapters import redis_client
from iap.adapters.redis_client import connect_url
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


# --- Redis -----------------------------------------------------------------------------

# Compare-and-delete: release only while the stored token is still ours
# (https://redis.io/docs/latest/develop/use/patterns/distributed-locks/, single instance).
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""

# Add a handle to a sid's set and extend (never shorten) the set's TTL.
_INDEX = """
redis.call("SADD", KEYS[1], ARGV[1])
if redis.call("PTTL", KEYS[1]) < tonumber(ARGV[2]) then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 1
"""

# Every redis-py error fails closed: a refused password (AuthenticationError), a missing
# permission (NOPERM) or a read-only former primary are outages to the caller, not a pass.
# A cluster that cannot be reached raises RedisClusterException, which is no RedisError.
_UNAVAILABLE = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)


async def _call(operation: Awaitable[_T]) -> _T:
    """Await a redis-py call, translating connection failures at the adapter boundary."""
    try:
        return await operation
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc


def _as_bytes(value: bytes | str) -> bytes:
    """Replies are bytes (``decode_responses`` stays off); redis-py's types also allow str."""
    return value.encode() if isinstance(value, str) else value


@dataclass
class _RedisLock:
    client: redis_client.Client
    key: str
    token: str

    async def release(self) -> bool:
        released = await _call(self.client.eval(_RELEASE, 1, self.key, self.token))
        return bool(released)


class RedisStore:
    """A :class:`SessionStore` shared by every replica, on ``redis.asyncio``.

    ``client`` comes from :mod:`iap.adapters.redis_client` (a URL is built into one, with
    ``timeout`` bounding connecting and each command, so a dead server fails fast).
    """

    def __init__(
        self,
        client: redis_client.Client | str,
        *,
        prefix: str = "iap:",
        timeout: float = 0.5,
        backend: str = "redis",
    ) -> None:
        self._client = connect_url(client, timeout=timeout) if isinstance(client, str) else client
        self._prefix = prefix
        self._backend = backend
        self._error: str | None = "not checked yet"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def get(self, handle: str) -> bytes | None:
        value = await _call(self._client.get(self._key("session", handle)))
        return None if value is None else _as_bytes(value)

    async def put(self, handle: str, value: bytes, *, ttl: float) -> None:
        await _call(self._client.set(self._key("session", handle), value, px=_ttl_ms(ttl)))

    async def delete(self, handle: str) -> None:
        await _call(self._client.delete(self._key("session", handle)))

    async def index_sid(self, sid: str, handle: str, *, ttl: float) -> None:
        key = self._key("sid", sid)
        await _call(self._client.eval(_INDEX, 1, key, handle, _ttl_ms(ttl)))

    async def handles_for_sid(self, sid: str) -> list[str]:
        members = await _call(self._client.smembers(self._key("sid", sid)))
        return sorted(_as_bytes(member).decode() for member in members)

    async def acquire_lock(self, name: str, *, ttl: float) -> Lock | None:
        key, token = self._key("lock", name), _new_token()
        taken = await _call(self._client.set(key, token, px=_ttl_ms(ttl), nx=True))
        return _RedisLock(self._client, key, token) if taken else None

    async def ping(self) -> bool:
        try:
            answered = bool(await _call(self._client.ping()))
        except StoreUnavailable as exc:
            self._error = type(exc.__cause__).__name__
            return False
        self._error = None
        return answered

    def state(self) -> dict[str, object]:
        state: dict[str, object] = {"backend": self._backend, "answers": self._error is None}
        if self._error is not None:
            state["error"] = self._error
        return state

    async def close(self) -> None:
        await redis_client.close(self._client)
