"""Fault drills (issue #15, point 6): real processes under steady load, one dependency broken
and mended per test, and the same properties asserted after each (``properties``).

Each drill: the load runs for :data:`BASELINE` s, the workers' fds and RSS are sampled, the
fault is made, the load runs through it, the fault ends (its end is when the dependency
answers again), the load runs :data:`AFTER` s more (longer than the 5 s recovery window, so
a failure late in it or after it is seen), and the workers are sampled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path

import pytest

from tests.drills.load import Load, running_load
from tests.drills.properties import (
    RECOVERY,
    Fault,
    assert_forwarded_only_successes,
    assert_identities,
    assert_recovered,
    assert_statuses,
    assert_workers_back,
    summary,
)
from tests.drills.stack import Stack, WorkerSample, running_stack

BASELINE = 2.0  # seconds of load before the fault (warm pools, caches and keep-alives)
AFTER = RECOVERY + 1.0  # seconds of load after the fault ends

Step = Callable[[], Awaitable[None]]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        yield running


@pytest.fixture
async def redis_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, redis=True) as running:
        yield running


@contextlib.asynccontextmanager
async def drill(
    stack: Stack, name: str, *, unaffected: Collection[str] = (), cuts_connections: bool = False
) -> AsyncIterator[tuple[Load, Fault, dict[int, WorkerSample]]]:
    """Load before, during (the body of the ``with``) and after the fault; then every property.

    The body starts the fault and sets ``fault.start``/``fault.end`` with the load's clock.
    """
    fault = Fault(name, cuts_connections=cuts_connections)
    async with running_load(stack.load()) as load:
        await load.hold(BASELINE)
        before = stack.workers()
        yield load, fault, before
        assert fault.end >= fault.start > 0, "the drill did not mark its fault"
        await load.hold(max(0.0, fault.end + AFTER - load.now()))
        after = stack.workers()
    outcomes = load.outcomes
    took = assert_recovered(outcomes, fault)
    print(summary(fault, outcomes, stack, took))
    print(f"DRILL {name} metrics:", *_interesting(await stack.metrics()), sep="\n  ")
    assert_statuses(outcomes, fault, unaffected)
    subjects = assert_identities(stack)
    assert len(subjects) == 3, subjects  # public ("-"), alice and the service
    if not cuts_connections:  # every forwarded request was answered 200, and only those
        assert_forwarded_only_successes(stack, outcomes)
    assert_workers_back(before, after)


def _interesting(metrics: str) -> list[str]:
    words = ("store", "circuit", "dropped", "upstream_errors", "redis", "refresh", "jwks")
    return [
        line
        for line in metrics.splitlines()
        if not line.startswith("#") and any(w in line for w in words) and not line.endswith(" 0.0")
    ]


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_redis_killed_and_restarted(redis_stack: Stack) -> None:
    """Sessions in Redis: while it is down, signed-in requests get 503 (never forwarded as
    anonymous), public routes go on; after the restart the same session works again."""
    redis = redis_stack.redis
    assert redis is not None
    async with drill(redis_stack, "redis", unaffected={"public"}) as (load, fault, _):
        fault.start = load.now()
        await redis.kill()
        await load.hold(2.0)
        await redis.start()  # the same port, the sessions back from the append-only file
        fault.end = load.now()
    during = [o for o in load.outcomes if o.route == "cookie" and fault.in_window(o)]
    assert any(o.status == 503 for o in during), "the outage was not seen: no 503"


async def test_idp_stopped_and_brought_back(stack: Stack) -> None:
    """Signed-in sessions and verified bearer tokens do not need the IdP on each request."""
    async with drill(stack, "idp", unaffected={"public", "cookie", "bearer"}) as (load, fault, _):
        fault.start = load.now()
        await stack.idp.stop()
        assert await _refused(stack.idp.port)
        await load.hold(3.0)
        await stack.idp.start()
        fault.end = load.now()
    await stack.prepare()  # a new sign-in and a new token work again after the outage


async def test_upstream_resets_connections_mid_response(stack: Stack) -> None:
    async with drill(stack, "upstream-reset", cuts_connections=True) as (load, fault, _):
        fault.start = load.now()
        stack.upstream.resetting = True
        await load.hold(2.0)
        stack.upstream.resetting = False
        fault.end = load.now()
    assert stack.upstream.resets > 0
    during = [o for o in load.outcomes if fault.in_window(o) and not o.ok]
    assert {o.route for o in during} == {"public", "cookie", "bearer"}


async def test_otlp_collector_black_holed(stack: Stack) -> None:
    """Tracing is best effort: a collector that accepts and never answers costs no request."""
    collector = stack.collector
    async with drill(stack, "otlp", unaffected={"public", "cookie", "bearer"}) as (load, fault, _):
        fault.start = load.now()
        await collector.black_hole()
        await load.hold(3.0)
        exports = collector.received.requests
        await collector.mend()
        fault.end = load.now()
        await _export_after(stack, exports, load)
    assert collector.swallowed > 0, "iap never tried to export into the black hole"


async def _export_after(stack: Stack, exports: int, load: Load) -> None:
    """Until the mended collector receives an export again (a hang guard of 30 s)."""
    start = load.now()
    async with asyncio.timeout(30):
        while stack.collector.received.requests == exports:
            await load.hold(0.05)
    print(f"DRILL otlp: first export {load.now() - start:.2f}s after the collector came back")


async def test_one_of_two_workers_killed(stack: Stack) -> None:
    """The surviving worker takes the new connections; only requests in flight on the killed
    worker's connections go unanswered."""
    async with drill(stack, "worker-kill", cuts_connections=True) as (load, fault, before):
        victim = min(before)
        fault.start = load.now()
        os.kill(victim, signal.SIGKILL)
        fault.end = load.now()
    assert victim not in stack.iap.children()


async def test_a_killed_worker_is_replaced(stack: Stack) -> None:
    [victim, survivor] = sorted(stack.iap.children())
    os.kill(victim, signal.SIGKILL)
    async with asyncio.timeout(RECOVERY):
        await stack.iap.wait_for_stderr("iap listening: ", count=3)
    children = stack.iap.children()
    assert len(children) == 2
    assert survivor in children
    assert victim not in children
