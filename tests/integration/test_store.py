"""One conformance suite for both session stores (SPEC §7 "Sessions", §9): the memory
store and the Redis store, against a real redis-server, pass the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from iap.adapters.redis_store import RedisStore
from iap.adapters.store import Lock, MemoryStore, SessionStore, StoreUnavailable
from tests.support.identities import Clock
from tests.support.redis_server import RedisServer, start_redis_server


@dataclass
class Harness:
    store: SessionStore
    short_ttl: float
    clock: Clock | None = None

    async def elapse_until(self, condition: Callable[[], Awaitable[bool]]) -> None:
        """Let ``short_ttl`` pass: move the memory clock past it, or poll Redis until the
        condition holds (bounded by a hang guard, never a fixed sleep)."""
        if self.clock is not None:
            self.clock.now += self.short_ttl + 0.001
            assert await condition()
            return
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            while True:  # Redis expires keys on access or in its 100 ms sweep
                if await condition():
                    return
                await asyncio.sleep(0.01)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = await start_redis_server()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = Clock()
        yield Harness(MemoryStore(clock=clock), short_ttl=1.0, clock=clock)
        return
    server = await start_redis_server()
    store = RedisStore(server.url, prefix="test:")
    try:
        yield Harness(store, short_ttl=0.05)
    finally:
        await store.close()
        await server.stop()


async def test_put_get_round_trip(harness: Harness) -> None:
    store = harness.store
    assert await store.get("h1") is None
    await store.put("h1", b"\x00sealed\xff", ttl=60)
    assert await store.get("h1") == b"\x00sealed\xff"
    assert await store.get("h2") is None


async def test_put_overwrites(harness: Harness) -> None:
    await harness.store.put("h1", b"old", ttl=60)
    await harness.store.put("h1", b"new", ttl=60)
    assert await harness.store.get("h1") == b"new"


async def test_delete(harness: Harness) -> None:
    store = harness.store
    await store.put("h1", b"one", ttl=60)
    await store.put("h2", b"two", ttl=60)
    await store.delete("h1")
    await store.delete("absent")
    assert await store.get("h1") is None
    assert await store.get("h2") == b"two"


async def test_values_expire(harness: Harness) -> None:
    store = harness.store
    await store.put("short", b"s", ttl=harness.short_ttl)
    await store.put("long", b"l", ttl=60)

    async def short_gone() -> bool:
        return await store.get("short") is None

    await harness.elapse_until(short_gone)
    assert await store.get("long") == b"l"


async def test_sid_index_lists_every_handle(harness: Harness) -> None:
    store = harness.store
    await store.index_sid("sid-a", "h2", ttl=60)
    await store.index_sid("sid-a", "h1", ttl=60)
    await store.index_sid("sid-a", "h1", ttl=60)
    await store.index_sid("sid-b", "h3", ttl=60)
    assert await store.handles_for_sid("sid-a") == ["h1", "h2"]
    assert await store.handles_for_sid("sid-b") == ["h3"]
    assert await store.handles_for_sid("sid-c") == []


async def test_sid_index_forgets_expired_handles(harness: Harness) -> None:
    store = harness.store
    await store.index_sid("sid-a", "h1", ttl=harness.short_ttl)
    await store.index_sid("sid-a", "h2", ttl=harness.short_ttl)
    await store.index_sid("sid-b", "h3", ttl=60)

    async def sid_a_forgotten() -> bool:
        return await store.handles_for_sid("sid-a") == []

    await harness.elapse_until(sid_a_forgotten)
    assert await store.handles_for_sid("sid-b") == ["h3"]


async def test_sid_index_ttl_is_never_shortened(harness: Harness) -> None:
    store = harness.store
    await store.index_sid("sid-a", "h1", ttl=60)
    await store.index_sid("sid-a", "h2", ttl=harness.short_ttl)
    await store.put("marker", b"m", ttl=harness.short_ttl)  # expires no earlier than h2

    async def marker_gone() -> bool:
        return await store.get("marker") is None

    await harness.elapse_until(marker_gone)
    assert await store.handles_for_sid("sid-a") == ["h1", "h2"]


async def test_lock_is_exclusive_until_released(harness: Harness) -> None:
    store = harness.store
    first = await store.acquire_lock("refresh:h1", ttl=60)
    assert first is not None
    assert await store.acquire_lock("refresh:h1", ttl=60) is None
    assert await store.acquire_lock("refresh:h2", ttl=60) is not None
    assert await first.release()
    second = await store.acquire_lock("refresh:h1", ttl=60)
    assert second is not None
    assert await store.acquire_lock("refresh:h1", ttl=60) is None


async def test_lock_is_released_only_by_its_owner(harness: Harness) -> None:
    store = harness.store
    stale = await store.acquire_lock("refresh:h1", ttl=harness.short_ttl)
    assert stale is not None
    taken: list[Lock] = []

    async def someone_else_takes_it() -> bool:
        lock = await store.acquire_lock("refresh:h1", ttl=60)
        if lock is not None:
            taken.append(lock)
        return bool(taken)

    await harness.elapse_until(someone_else_takes_it)
    assert not await stale.release()
    assert await store.acquire_lock("refresh:h1", ttl=60) is None
    assert await taken[0].release()
    assert not await taken[0].release()
    assert await store.acquire_lock("refresh:h1", ttl=60) is not None


async def test_ping(harness: Harness) -> None:
    assert await harness.store.ping() is True


async def test_ttl_must_be_positive(harness: Harness) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await harness.store.put("h1", b"v", ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        await harness.store.acquire_lock("l", ttl=-1)


async def test_redis_down_raises_store_unavailable(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=1.0)
    try:
        await store.put("h1", b"v", ttl=60)
        lock = await store.acquire_lock("refresh:h1", ttl=60)
        assert lock is not None
        await redis_server.stop()

        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("h1"),
            lambda: store.put("h1", b"v", ttl=60),
            lambda: store.delete("h1"),
            lambda: store.index_sid("sid", "h1", ttl=60),
            lambda: store.handles_for_sid("sid"),
            lambda: store.acquire_lock("refresh:h2", ttl=60),
            lock.release,
        ]
        for operation in operations:
            with pytest.raises(StoreUnavailable) as caught:
                await operation()
            assert type(caught.value) is StoreUnavailable
        assert await store.ping() is False
    finally:
        await store.close()
