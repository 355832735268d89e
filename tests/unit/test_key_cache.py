"""iap.adapters.jwks: the one key cache (single-flight, freshness, last-known-good, failure
backoff, the unknown-``kid`` cool-down) and the unknown-``kid`` retry, with an injected clock
and an injected fetch that the test holds open or makes fail. No sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field

import pytest

from iap.adapters.jwks import KeyCache, verify_with_refetch

REFRESH_AFTER = 3600.0
MAX_STALE = 24 * 3600.0
BACKOFF = 10.0
INTERVAL = 300.0


class Unavailable(Exception):
    """The fetch failure type of these tests."""


class Refused(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Source:
    """A key server: answers ``keys`` (a version per fetch) or fails; ``gate`` holds a fetch
    open until the test releases it."""

    fetches: list[str] = field(default_factory=list)
    failing: bool = False
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def fetch(self, key: str) -> str:
        self.fetches.append(key)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise Unavailable
        return f"{key}-v{len(self.fetches)}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def cache(source: Source, clock: Clock) -> KeyCache[str, str]:
    return KeyCache(
        source.fetch,
        error=Unavailable,
        refresh_after=REFRESH_AFTER,
        max_stale=MAX_STALE,
        unknown_kid_interval=INTERVAL,
        failure_backoff=BACKOFF,
        clock=clock,
    )


async def held_open(source: Source, *calls: Awaitable[object]) -> list[object]:
    """Wait until the first fetch has started, release it, and collect every result."""
    await source.started.wait()
    assert source.gate is not None
    source.gate.set()
    return list(await asyncio.gather(*calls))


# --- get ----------------------------------------------------------------------------------


async def test_concurrent_gets_share_one_fetch(cache: KeyCache[str, str], source: Source) -> None:
    source.gate = asyncio.Event()
    calls = [asyncio.ensure_future(cache.get("t")) for _ in range(20)]
    assert await held_open(source, *calls) == ["t-v1"] * 20
    assert source.fetches == ["t"]


async def test_keys_are_single_flight_per_key_only(
    cache: KeyCache[str, str], source: Source
) -> None:
    assert await asyncio.gather(cache.get("a"), cache.get("b"), cache.get("a")) == [
        "a-v1",
        "b-v2",
        "a-v1",
    ]
    assert source.fetches == ["a", "b"]


async def test_a_value_is_fresh_for_refresh_after(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    assert await cache.get("t") == "t-v1"
    clock.now += REFRESH_AFTER - 1
    assert await cache.get("t") == "t-v1"
    assert len(source.fetches) == 1
    clock.now += 1
    assert await cache.get("t") == "t-v2"
    assert len(source.fetches) == 2


async def test_last_known_good_is_served_while_fetches_fail_up_to_the_stale_limit(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    await cache.get("t")
    source.failing = True
    clock.now += REFRESH_AFTER
    assert await cache.get("t") == "t-v1"
    clock.now += MAX_STALE - REFRESH_AFTER - 1
    assert await cache.get("t") == "t-v1"
    clock.now += 1
    with pytest.raises(Unavailable):
        await cache.get("t")


async def test_a_value_never_fetched_is_the_fetch_error(
    cache: KeyCache[str, str], source: Source
) -> None:
    source.failing = True
    with pytest.raises(Unavailable):
        await cache.get("t")
    with pytest.raises(Unavailable):  # within the backoff: no fetch, still no value
        await cache.get("t")
    assert source.fetches == ["t"]


async def test_a_failed_fetch_is_not_retried_within_the_backoff(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    await cache.get("t")
    source.failing = True
    clock.now += REFRESH_AFTER
    for _ in range(3):
        assert await cache.get("t") == "t-v1"
    assert len(source.fetches) == 2
    clock.now += BACKOFF - 1
    assert await cache.get("t") == "t-v1"
    assert len(source.fetches) == 2
    source.failing = False
    clock.now += 1
    assert await cache.get("t") == "t-v3"


async def test_without_a_backoff_every_due_access_tries_again(source: Source, clock: Clock) -> None:
    cache: KeyCache[str, str] = KeyCache(
        source.fetch,
        error=Unavailable,
        refresh_after=REFRESH_AFTER,
        max_stale=MAX_STALE,
        unknown_kid_interval=INTERVAL,
        clock=clock,
    )
    await cache.get("t")
    source.failing = True
    clock.now += REFRESH_AFTER
    for _ in range(3):
        assert await cache.get("t") == "t-v1"
    assert len(source.fetches) == 4


async def test_other_exceptions_are_not_fetch_failures(clock: Clock) -> None:
    async def broken(_: str) -> str:
        raise RuntimeError("bug")

    cache: KeyCache[str, str] = KeyCache(
        broken,
        error=Unavailable,
        refresh_after=REFRESH_AFTER,
        max_stale=MAX_STALE,
        unknown_kid_interval=INTERVAL,
        clock=clock,
    )
    with pytest.raises(RuntimeError):
        await cache.get("t")


# --- for_unknown_kid ----------------------------------------------------------------------


async def test_an_unknown_kid_refetches_once_per_interval_per_key(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    await cache.get("a")
    assert await cache.for_unknown_kid("a") == "a-v2"
    assert await cache.get("a") == "a-v2"  # the refetch refreshed the cache
    clock.now += INTERVAL - 1
    assert await cache.for_unknown_kid("a") is None
    assert await cache.for_unknown_kid("b") == "b-v3"  # another key has its own budget
    clock.now += 1
    assert await cache.for_unknown_kid("a") == "a-v4"
    assert source.fetches == ["a", "a", "b", "a"]


async def test_a_failed_refetch_spends_the_budget_and_keeps_the_value(
    cache: KeyCache[str, str], source: Source
) -> None:
    await cache.get("t")
    source.failing = True
    with pytest.raises(Unavailable):
        await cache.for_unknown_kid("t")
    assert await cache.for_unknown_kid("t") is None
    assert await cache.get("t") == "t-v1"
    assert len(source.fetches) == 2


async def test_a_failed_refetch_starts_the_backoff(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    await cache.get("t")
    clock.now += REFRESH_AFTER  # due for a refresh
    source.failing = True
    with pytest.raises(Unavailable):
        await cache.for_unknown_kid("t")
    assert await cache.get("t") == "t-v1"  # the refetch just failed: no refresh yet
    assert len(source.fetches) == 2
    clock.now += BACKOFF
    source.failing = False
    assert await cache.get("t") == "t-v3"
    assert len(source.fetches) == 3


async def test_concurrent_refetches_for_an_unknown_kid_share_one_fetch(
    cache: KeyCache[str, str], source: Source
) -> None:
    await cache.get("t")
    source.gate, source.started = asyncio.Event(), asyncio.Event()
    calls = [asyncio.ensure_future(cache.for_unknown_kid("t")) for _ in range(10)]
    assert await held_open(source, *calls) == ["t-v2"] * 10  # none is told "budget spent"
    assert len(source.fetches) == 2


async def test_a_refresh_finished_while_waiting_counts_as_the_refetch(
    cache: KeyCache[str, str], source: Source, clock: Clock
) -> None:
    await cache.get("t")
    clock.now += REFRESH_AFTER
    source.gate, source.started = asyncio.Event(), asyncio.Event()
    refresh = asyncio.ensure_future(cache.get("t"))
    await source.started.wait()
    refetch = asyncio.ensure_future(cache.for_unknown_kid("t"))
    assert await held_open(source, refresh, refetch) == ["t-v2", "t-v2"]
    assert len(source.fetches) == 2
    assert await cache.for_unknown_kid("t") == "t-v3"  # the budget was not spent


# --- verify_with_refetch ------------------------------------------------------------------


async def test_known_keys_verify_without_a_refetch() -> None:
    async def refetch() -> str | None:
        raise AssertionError("no refetch for a known kid")

    def check(keys: str) -> str:
        return keys

    assert await verify_with_refetch(check, "old", refetch, refused=Refused) == "old"


async def test_an_unknown_kid_is_checked_again_with_the_refetched_keys() -> None:
    seen: list[str] = []

    def check(keys: str) -> str:
        seen.append(keys)
        if keys != "new":
            raise Refused("kid")
        return "ok"

    async def refetch() -> str | None:
        return "new"

    assert await verify_with_refetch(check, "old", refetch, refused=Refused) == "ok"
    assert seen == ["old", "new"]


async def test_other_refusals_and_a_spent_budget_keep_the_first_refusal() -> None:
    refetches: list[str] = []

    async def refetch() -> str | None:
        refetches.append("asked")
        return None

    def signature(_: str) -> str:
        raise Refused("signature")

    with pytest.raises(Refused) as refused:
        await verify_with_refetch(signature, "old", refetch, refused=Refused)
    assert refused.value.reason == "signature"
    assert refetches == []

    first = Refused("kid")

    def unknown(_: str) -> str:
        raise first

    with pytest.raises(Refused) as refused:
        await verify_with_refetch(unknown, "old", refetch, refused=Refused)
    assert refused.value is first
    assert refetches == ["asked"]


async def test_a_failing_refetch_propagates() -> None:
    async def refetch() -> str | None:
        raise Unavailable

    def unknown(_: str) -> str:
        raise Refused("kid")

    with pytest.raises(Unavailable):
        await verify_with_refetch(unknown, "old", refetch, refused=Refused)
