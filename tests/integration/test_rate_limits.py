"""Route rate limits at the gateway (SPEC §2 step 8, §5.1): 429 with Retry-After and the
RateLimit headers past the quota, counted per route and key; with Redis the count is shared by
every process, and a Redis outage follows ``on_store_error``, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningEdge, StartEdge, Upstream, edge_config
from tests.support.redis_server import RedisServer, start_redis_server


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = await start_redis_server()
    yield server
    await server.stop()


def limited(upstream: Upstream, **limit: Any) -> dict[str, Any]:
    route = {"rate_limit": {"requests": 2, "per": "1s", **limit}, "timeouts": {"read": "5s"}}
    return edge_config(upstream.url, route=route)


async def get(http: aiohttp.ClientSession, edge: RunningEdge) -> aiohttp.ClientResponse:
    async with http.get(f"{edge.url}/x") as answer:
        await answer.read()
        return answer


async def test_past_the_quota_is_429_with_retry_after_and_ratelimit_headers(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(limited(upstream, burst=1))
    async with aiohttp.ClientSession() as http:
        answers = [await get(http, edge) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Policy"] == '"default";q=3;w=1'
    assert answers[0].headers["RateLimit"].startswith('"default";r=2;t=')
    refused = answers[3]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit"].startswith('"default";r=0;')
    assert len(upstream.seen.requests) == 3  # the refused request never reached it
    line = edge.audit_lines()[-1]
    assert (line["status"], line["reason"], line["decision"]) == (429, "rate_limited", "deny")
    registry = edge.edge.metrics.registry
    assert registry.get_sample_value("iap_rate_limited_total", {"route": "app"}) == 1


async def test_two_processes_sharing_redis_share_the_count_and_recover_after_the_window(
    upstream: Upstream, start_edge: StartEdge, redis_server: RedisServer
) -> None:
    """Two edges on one redis-server, as two workers or replicas are."""
    document = limited(upstream) | {"redis": {"url": redis_server.url}}
    first, second = await start_edge(document), await start_edge(document)
    async with aiohttp.ClientSession() as http:
        statuses = [(await get(http, edge)).status for edge in (first, second, first, second)]
        assert statuses == [200, 200, 429, 429]
        retry = int((await get(http, second)).headers["Retry-After"])
        # Recovery needs the window to pass: wait exactly what iap told the client to wait.
        await asyncio.sleep(retry)
        assert (await get(http, first)).status == 200


@pytest.mark.parametrize(("on_store_error", "status"), [("allow", 200), ("deny", 429)])
async def test_redis_down_follows_on_store_error_and_never_500(
    upstream: Upstream,
    start_edge: StartEdge,
    redis_server: RedisServer,
    on_store_error: str,
    status: int,
) -> None:
    document = limited(upstream, on_store_error=on_store_error)
    edge = await start_edge(document | {"redis": {"url": redis_server.url}})
    async with aiohttp.ClientSession() as http:
        assert (await get(http, edge)).status == 200
        async with http.get(f"{edge.admin_url}/readyz") as ready:
            assert (ready.status, (await ready.json())["degraded"]) == (200, [])
        await redis_server.stop()  # killed mid-test
        seen = len(upstream.seen.requests)
        answers = [await get(http, edge) for _ in range(3)]
        async with http.get(f"{edge.admin_url}/readyz") as ready:
            report = await ready.json()
    assert [a.status for a in answers] == [status] * 3
    # Reported, but the pod stays in its Service: every replica shares that Redis.
    assert (ready.status, report["status"], report["degraded"]) == (
        200,
        "ready",
        ["rate_limit_store"],
    )
    assert len(upstream.seen.requests) == seen + (3 if status == 200 else 0)
    registry = edge.edge.metrics.registry
    assert registry.get_sample_value("iap_rate_limit_store_errors_total") == 3
    if status == 429:
        assert edge.audit_lines()[-1]["reason"] == "rate_limit_store_error"
