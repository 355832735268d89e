"""One suite for the rate limiter on both stores (SPEC §2 step 8, §5.1, §9): process
memory and a real redis-server, the same tests; then what only Redis can do (counts
shared between workers) and what only Redis can suffer (going away mid-test)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from iap.adapters.ratelimit import RateLimiter
from iap.adapters.ratelimit_redis import RedisWindows
from iap.domain.ratelimit import Quota, Verdict
from tests.support.redis_server import RedisServer, redis_server_binary, start_redis_server


@dataclass
class Harness:
    """Builds limiters on one store; counts the store-error callback's calls."""

    server: RedisServer | None
    errors: list[None] = field(default_factory=list)
    limiters: list[RateLimiter] = field(default_factory=list)

    def limiter(self, url: str | None = None) -> RateLimiter:
        if url is None and self.server is not None:
            url = self.server.url
        shared = RedisWindows(url) if url is not None else None
        limiter = RateLimiter(shared, on_store_error_count=lambda: self.errors.append(None))
        self.limiters.append(limiter)
        return limiter


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = await start_redis_server()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def _harness(server: RedisServer | None) -> AsyncIterator[Harness]:
    harness = Harness(server)
    try:
        yield harness
    finally:
        for limiter in harness.limiters:
            await limiter.close()


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        async with _harness(None) as harness:
            yield harness
        return
    server = await start_redis_server()
    try:
        async with _harness(server) as harness:
            yield harness
    finally:
        await server.stop()


@pytest.fixture
async def redis_harness(redis_server: RedisServer) -> AsyncIterator[Harness]:
    async with _harness(redis_server) as harness:
        yield harness


async def _hit(
    limiter: RateLimiter,
    key: str = "k",
    *,
    requests: int = 3,
    per: float = 60.0,
    burst: int = 2,
    on_store_error: str = "allow",
) -> Verdict:
    return await limiter.hit(key, Quota(requests, per, burst), on_store_error=on_store_error)


# --- the shared suite ------------------------------------------------------------------


async def test_requests_plus_burst_are_allowed_then_refused(harness: Harness) -> None:
    limiter = harness.limiter()
    verdicts = [await _hit(limiter) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.remaining for v in verdicts] == [4, 3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert 0 < refused.reset_after <= 60
    assert not any(v.store_error for v in verdicts)
    assert harness.errors == []


async def test_refusals_do_not_consume_the_next_window(harness: Harness) -> None:
    limiter = harness.limiter()
    for _ in range(5):
        assert (await _hit(limiter)).allowed
    for _ in range(10):
        verdict = await _hit(limiter)
        assert (verdict.allowed, verdict.remaining) == (False, 0)


async def test_keys_and_quotas_count_apart(harness: Harness) -> None:
    limiter = harness.limiter()
    for _ in range(5):
        await _hit(limiter, "a")
    assert not (await _hit(limiter, "a")).allowed
    assert (await _hit(limiter, "b")).remaining == 4
    # Another quota on the same key is another count (a route's limit was changed).
    assert (await _hit(limiter, "a", requests=10, burst=0)).remaining == 9


async def test_a_slot_frees_when_the_reported_reset_has_passed(harness: Harness) -> None:
    limiter = harness.limiter()
    for _ in range(2):
        assert (await _hit(limiter, requests=2, per=1.0, burst=0)).allowed
    refused = await _hit(limiter, requests=2, per=1.0, burst=0)
    assert not refused.allowed
    assert 0 < refused.reset_after <= 1.0
    async with asyncio.timeout(5):  # a hang guard, not a performance bound
        verdict = refused
        while not verdict.allowed:
            # Wait as long as the limiter says, never longer; timer granularity may need
            # one more short round.
            await asyncio.sleep(max(verdict.reset_after, 0.01))
            verdict = await _hit(limiter, requests=2, per=1.0, burst=0)
    assert verdict.remaining in (0, 1)


async def test_ping(harness: Harness) -> None:
    assert await harness.limiter().ping()


async def test_concurrent_hits_never_overshoot(harness: Harness) -> None:
    limiter = harness.limiter()
    verdicts = await asyncio.gather(*(_hit(limiter, requests=10, burst=5) for _ in range(40)))
    assert sum(v.allowed for v in verdicts) == 15


# --- memory only -----------------------------------------------------------------------


async def test_memory_counts_are_per_process() -> None:
    async with _harness(None) as harness:
        one, two = harness.limiter(), harness.limiter()
        for _ in range(5):
            await _hit(one)
        assert not (await _hit(one)).allowed
        assert (await _hit(two)).allowed


# --- Redis only ------------------------------------------------------------------------


async def test_two_workers_share_one_count(redis_harness: Harness) -> None:
    one, two = redis_harness.limiter(), redis_harness.limiter()
    verdicts = [await _hit(worker) for worker in (one, two, one, two, one, two)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.remaining for v in verdicts] == [4, 3, 2, 1, 0, 0]


@pytest.mark.parametrize(("on_store_error", "allowed"), [("allow", True), ("deny", False)])
async def test_redis_gone_is_decided_by_on_store_error(
    redis_harness: Harness, on_store_error: str, allowed: bool
) -> None:
    assert redis_harness.server is not None
    limiter = redis_harness.limiter()
    assert (await _hit(limiter)).allowed  # a pooled connection exists when Redis dies
    await redis_harness.server.stop()
    async with asyncio.timeout(5):  # a hang guard, not a performance bound
        verdicts = [await _hit(limiter, on_store_error=on_store_error) for _ in range(3)]
        assert not await limiter.ping()
    assert all(v == Verdict(allowed, 0, 0.0, store_error=True) for v in verdicts)
    assert len(redis_harness.errors) == 3


async def test_unknown_on_store_error_fails_closed(redis_harness: Harness) -> None:
    assert redis_harness.server is not None
    limiter = redis_harness.limiter()
    await redis_harness.server.stop()
    verdict = await _hit(limiter, on_store_error="alow")
    assert (verdict.allowed, verdict.store_error) == (False, True)


async def test_store_failures_warn_without_the_url_and_not_on_every_request(
    redis_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_harness.server
    assert server is not None
    await server.stop()
    limiter = redis_harness.limiter(f"redis://iap:s3cret-pw@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.INFO, logger="iap.ratelimit"):
        for _ in range(5):
            assert (await _hit(limiter)).store_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()
    assert len(redis_harness.errors) == 5
    for record in caplog.records:
        text = record.getMessage() + str(record.exc_info or "") + str(record.args)
        assert "s3cret" not in text
        assert str(server.port) not in text


async def test_a_server_that_never_answers_costs_one_timeout() -> None:
    """A blackholed Redis (it accepts, then says nothing): each call ends at the socket
    timeout, is not retried, and on_store_error decides."""
    connections: list[asyncio.StreamWriter] = []
    errors: list[None] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RateLimiter(
        RedisWindows(f"redis://127.0.0.1:{port}/0", timeout=0.2),
        on_store_error_count=lambda: errors.append(None),
    )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            started = loop.time()
            verdict = await _hit(limiter, on_store_error="deny")
            elapsed = loop.time() - started
            assert not await limiter.ping()
    finally:
        await limiter.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    assert verdict == Verdict(False, 0, 0.0, store_error=True)
    assert 0.2 <= elapsed < 1.0  # one reply timeout, not a retry chain
    assert errors == [None]


async def _restart_on(port: int) -> RedisServer:
    """A new redis-server on a stopped server's port, as after a Redis restart."""
    proc = await asyncio.create_subprocess_exec(
        *(redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return RedisServer(proc, port)


async def test_the_same_limiter_recovers_when_redis_comes_back(
    redis_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_harness.server
    assert server is not None
    limiter = redis_harness.limiter()
    assert not (await _hit(limiter)).store_error
    await server.stop()
    assert (await _hit(limiter)).store_error
    restarted = await _restart_on(server.port)
    try:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            while True:  # poll until the restarted server answers
                if await limiter.ping():
                    break
                await asyncio.sleep(0.02)
        with caplog.at_level(logging.INFO, logger="iap.ratelimit"):
            verdict = await _hit(limiter)
        # The restarted server is empty: the count starts again.
        assert verdict == Verdict(True, 4, verdict.reset_after)
        assert "reachable again" in caplog.text
    finally:
        await restarted.stop()


def test_a_malformed_url_does_not_echo_the_password() -> None:
    with pytest.raises(ValueError, match="not a valid Redis URL") as caught:
        RedisWindows("redis://:s3cret-pw@127.0.0.1:notaport/0")
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
