"""SIGHUP never keeps an old value quietly (issue 11): what a reload can change it applies, and
a change to a key that needs a restart refuses the whole reload, naming each key."""

from __future__ import annotations

import aiohttp
import pytest

from iap import config
from iap.errors import ConfigError
from tests.conftest import StartEdge, Upstream, edge_config
from tests.support.redis_server import start_redis_server


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("limits", {"max_headers": 50}),
        ("telemetry", {"service_name": "other"}),
        ("drain_timeout", "5s"),
        ("tls_watch_interval", "1s"),
        ("public_url", "http://other.test"),
        ("admin", {"address": "127.0.0.1:1"}),
    ],
)
async def test_a_restart_only_key_refuses_the_reload_by_name_and_is_counted(
    upstream: Upstream, start_edge: StartEdge, key: str, value: object
) -> None:
    document = edge_config(upstream.url)
    edge = await start_edge(document)
    with pytest.raises(ConfigError) as refused:
        edge.edge.reload(config.parse({**document, key: value}))
    assert refused.value.problems == [f"{key}: changes need a restart, not a reload"]
    registry = edge.edge.metrics.registry
    assert registry.get_sample_value("iap_reload_refusals_total") == 1


async def test_routes_and_rate_limits_change_on_reload(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(upstream.url)
    edge = await start_edge(document)
    limited = edge_config(upstream.url, route={"rate_limit": {"requests": 1, "per": "1m"}})
    await edge.edge.reload(config.parse(limited)).close()
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(2):
            async with http.get(f"{edge.url}/x") as answer:
                statuses.append(answer.status)
    assert statuses == [200, 429]
    assert edge.edge.metrics.registry.get_sample_value("iap_reload_refusals_total") == 0


async def test_readyz_degraded_follows_the_reloaded_routes(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    """Redis down reports ``rate_limit_store`` only once something counts in it: a route's
    limit added by a reload, not the limits of the config the process started with."""
    server = await start_redis_server()
    redis = {"redis": {"url": server.url}, "auth_failures": None}
    edge = await start_edge(edge_config(upstream.url) | redis)
    await server.stop()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.admin_url}/readyz") as ready:
            before = (await ready.json())["degraded"]
        limited = edge_config(upstream.url, route={"rate_limit": {"requests": 1, "per": "1m"}})
        await edge.edge.reload(config.parse(limited | redis)).close()
        async with http.get(f"{edge.admin_url}/readyz") as ready:
            after = (ready.status, (await ready.json())["degraded"])
    assert (before, after) == ([], (200, ["rate_limit_store"]))
