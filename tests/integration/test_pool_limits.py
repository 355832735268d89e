"""A route's pool limits in iap's own keep-alive pool (iap.adapters.pool), against a scripted
upstream on loopback: ``max_connections`` with a bounded wait, ``max_idle``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from iap.adapters.pool import Pool, PoolFull
from tests.support.scripted import Script, ScriptedConnection, ScriptedUpstream, response

HANG_GUARD = 30.0  # seconds; a guard against a hang, never a performance bound
PoolOf = Callable[..., Awaitable[tuple[ScriptedUpstream, Pool]]]


@pytest.fixture
async def pool_of() -> AsyncIterator[PoolOf]:
    started: list[tuple[ScriptedUpstream, Pool]] = []

    async def start(script: Script, **limits: int) -> tuple[ScriptedUpstream, Pool]:
        scripted = ScriptedUpstream(script)
        await scripted.start()
        port = int(scripted.url.rsplit(":", 1)[1])
        pool = Pool("127.0.0.1", port, tls=lambda: None, server_name=None, **limits)
        started.append((scripted, pool))
        return scripted, pool

    yield start
    for scripted, pool in started:
        await pool.close()
        await scripted.stop()


def held_until(release: asyncio.Event, arrived: asyncio.Event) -> Script:
    """Answers ``/hold`` once ``release`` is set, anything else at once; keeps alive."""

    async def script(connection: ScriptedConnection) -> None:
        while request := await connection.read_request():
            if request.startswith(b"GET /hold "):
                arrived.set()
                await release.wait()
            await connection.send(response(b"ok"))

    return script


async def get(pool: Pool, path: str, connect_timeout: float | None = 5.0) -> bytes:
    answer = await pool.request(
        "GET", path, [("Host", "app")], None, connect_timeout=connect_timeout, read_timeout=5.0
    )
    try:
        return await answer.read()
    finally:
        answer.release()


async def test_a_request_past_max_connections_waits_for_the_busy_one(pool_of: PoolOf) -> None:
    release, arrived = asyncio.Event(), asyncio.Event()
    upstream, pool = await pool_of(held_until(release, arrived), limit=1)
    async with asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(get(pool, "/hold"))
        await arrived.wait()
        waiting = asyncio.ensure_future(get(pool, "/next", connect_timeout=None))
        stepped = asyncio.Event()
        asyncio.get_running_loop().call_soon(stepped.set)  # after the task's first step (FIFO)
        await stepped.wait()
        assert (pool.waiting, upstream.connections) == (1, 1)  # queued for the only connection
        release.set()
        assert await asyncio.gather(held, waiting) == [b"ok", b"ok"]
    assert (upstream.connections, pool.waiting) == (1, 0)


async def test_the_wait_is_bounded_and_a_timed_out_waiter_leaves_no_trace(
    pool_of: PoolOf,
) -> None:
    release, arrived = asyncio.Event(), asyncio.Event()
    upstream, pool = await pool_of(held_until(release, arrived), limit=1)
    async with asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(get(pool, "/hold"))
        await arrived.wait()
        with pytest.raises(PoolFull):
            await get(pool, "/next", connect_timeout=0.05)
        assert pool.waiting == 0
        release.set()
        assert await held == b"ok"
        assert await get(pool, "/after") == b"ok"  # the pool serves on, on the same connection
    assert upstream.connections == 1


@pytest.mark.parametrize(("max_idle", "connections"), [(0, 3), (1, 1)])
async def test_max_idle_bounds_the_connections_kept_open(
    pool_of: PoolOf, max_idle: int, connections: int
) -> None:
    upstream, pool = await pool_of(held_until(asyncio.Event(), asyncio.Event()), max_idle=max_idle)
    async with asyncio.timeout(HANG_GUARD):
        for _ in range(3):
            assert await get(pool, "/") == b"ok"
    assert upstream.connections == connections
