"""The :class:`~iap.adapters.store.SessionStore` shared by every replica, in Redis (SPEC §7
"Sessions", §9 "State and scale"). Apart from :mod:`iap.adapters.store` so that a process
whose config has no ``redis`` never imports redis-py (about 8 MiB of each worker's memory):
only the composition root imports this module, and only when Redis is configured.

Invariants: those of :mod:`iap.adapters.store`. Every redis-py failure surfaces as
:class:`~iap.adapters.store.StoreUnavailable`, so callers fail closed; a lock is released
only by its owner (compare and delete in one script).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio
import redis.exceptions

from iap.adapters import redis_client
from iap.adapters.redis_client import connect_url
from iap.adapters.store import Lock, StoreUnavailable, _new_token, _ttl_ms

_T = TypeVar("_T")

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
