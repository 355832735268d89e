"""Sign-in stacks over both session stores: the same test runs with cookies and with Redis.

``stack`` is parametrized ``cookie``/``redis``: the dev IdP, iap and the test upstream, with
a real redis-server on a free port for the second. On the way out the dev IdP stops first,
then (with Redis) iap, and the Redis server last, so that iap never outlives its store.
``redis_session_store`` is that server as a context for tests that build their own stacks;
``visitor`` is a fresh user agent on the ``stack``'s iap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartEdge, Upstream
from tests.support.redis_server import start_redis_server
from tests.support.signin import SignInStack, Visitor, running_stack


@contextlib.asynccontextmanager
async def redis_session_store() -> AsyncIterator[dict[str, Any]]:
    """A redis-server on a free port; yields the config that keeps sessions in it."""
    server = await start_redis_server()
    try:
        yield {"session": {"store": "redis"}, "redis": {"url": server.url}}
    finally:
        await server.stop()


@pytest.fixture(params=["cookie", "redis"])
async def stack(
    request: pytest.FixtureRequest, upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    async with contextlib.AsyncExitStack() as later:
        store: dict[str, Any] = {}
        if request.param == "redis":
            store = await later.enter_async_context(redis_session_store())
        async with running_stack(upstream, start_edge, tmp_path, **store) as running:
            yield running
        if store:
            await running.edge.edge.stop()  # before the store goes away


@pytest.fixture
def visitor(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)
