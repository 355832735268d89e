"""Load shedding and bounded waits (issue 15 point 5) over real loopback sockets:
``limits.max_in_flight``, a route's ``pool`` limits, ``timeouts.total`` and the WebSocket
handshake's ``timeouts.connect``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from iap import config
from iap.errors import ConfigError
from tests.conftest import RunningEdge, StartEdge, Upstream, edge_config
from tests.support.scripted import Script, ScriptedConnection, ScriptedUpstream

HANG_GUARD = 30.0  # seconds; a guard against a hang, never a performance bound
Scripted = Callable[..., Awaitable[tuple[ScriptedUpstream, RunningEdge]]]


def sample(edge: RunningEdge, name: str) -> float | None:
    return edge.edge.metrics.registry.get_sample_value(name)


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with client.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def scripted(start_edge: StartEdge) -> AsyncIterator[Scripted]:
    upstreams: list[ScriptedUpstream] = []

    async def start(script: Script, **route: Any) -> tuple[ScriptedUpstream, RunningEdge]:
        upstream = ScriptedUpstream(script)
        await upstream.start()
        upstreams.append(upstream)
        return upstream, await start_edge(edge_config(upstream.url, route=route))

    yield start
    for upstream in upstreams:
        await upstream.stop()


# -- limits.max_in_flight ---------------------------------------------------------------------


async def test_past_max_in_flight_a_request_is_shed_at_once_and_health_still_answers(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url, limits={"max_in_flight": 1}))
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(get(client, f"{edge.url}/hold"))
        await upstream.seen.arrived.wait()  # one request in flight: the limit
        status, headers, body = await get(client, f"{edge.url}/shed")
        too_long = await get(client, f"{edge.url}/{'x' * 9000}")
        health = await get(client, f"{edge.admin_url}/healthz")
        ready = await get(client, f"{edge.admin_url}/readyz")
        upstream.seen.release.set()
        assert (await held)[0] == 200
        after = await get(client, f"{edge.url}/after")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert json.loads(body)["error"] == "overloaded"
    assert too_long[0] == 414  # the request bounds come first
    assert (health[0], ready[0]) == (200, 200)  # the admin listener is never shed
    assert after[0] == 200  # the slot is given back
    assert [r.path for r in upstream.seen.requests] == ["/hold", "/after"]
    shed = [line for line in edge.audit_lines() if line["status"] == 503]
    assert [(line["path"], line["reason"]) for line in shed] == [("/shed", "overloaded")]
    assert sample(edge, "iap_requests_shed_total") == 1


async def test_shedding_counts_requests_in_flight_across_a_reload(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(upstream.url, limits={"max_in_flight": 1})
    edge = await start_edge(document)
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(get(client, f"{edge.url}/hold"))
        await upstream.seen.arrived.wait()
        old = edge.edge.reload(config.parse(edge_config(upstream.url, limits={"max_in_flight": 1})))
        status = (await get(client, f"{edge.url}/shed"))[0]
        upstream.seen.release.set()
        assert (await held)[0] == 200
    await old.close()
    assert status == 503


@pytest.mark.parametrize(
    "limits",
    [{"max_in_flight": 5}, {"header_timeout": "1s"}, {"keepalive_timeout": "5s"}],
)
async def test_a_reload_changing_a_load_limit_is_refused_by_name(
    upstream: Upstream, start_edge: StartEdge, limits: dict[str, object]
) -> None:
    document = edge_config(upstream.url)
    edge = await start_edge(document)
    with pytest.raises(ConfigError) as refused:
        edge.edge.reload(config.parse({**document, "limits": limits}))
    assert refused.value.problems == ["limits: changes need a restart, not a reload"]


# -- routes[].pool ------------------------------------------------------------------------------


async def test_with_every_pooled_connection_busy_a_request_waits_connect_then_gets_503(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    route = {
        "pool": {"max_connections": 1},
        "timeouts": {"connect": "300ms"},
        "circuit": {"failures": 1},  # a full pool is no verdict on the upstream: stays closed
    }
    edge = await start_edge(edge_config(upstream.url, route=route))
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(get(client, f"{edge.url}/hold"))
        await upstream.seen.arrived.wait()
        status, headers, body = await get(client, f"{edge.url}/waits")
        upstream.seen.release.set()
        assert (await held)[0] == 200
        after = await get(client, f"{edge.url}/after")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert json.loads(body)["error"] == "upstream_pool_full"
    assert after[0] == 200
    assert [r.path for r in upstream.seen.requests] == ["/hold", "/after"]


async def test_routes_sharing_an_upstream_with_different_pools_are_refused(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(upstream.url)
    second = {**document["routes"][0], "name": "other", "pool": {"max_connections": 5}}
    document["routes"].append(second)
    with pytest.raises(ConfigError) as refused:
        await start_edge(document)
    assert refused.value.problems == [
        "routes[1].pool: differs from routes[0].pool, which shares its upstream and "
        "upstream_tls (one pool per upstream)"
    ]


# -- timeouts.total -----------------------------------------------------------------------------


def stalling(second_event: asyncio.Event | None = None) -> Script:
    """/silent: never answers; /stream: a chunked 200 with one chunk, then silence;
    /events: an event stream, its second event once ``second_event`` is set."""

    async def script(connection: ScriptedConnection) -> None:
        await _stall(connection, second_event or asyncio.Event())

    return script


async def _stall(connection: ScriptedConnection, second_event: asyncio.Event) -> None:
    request = await connection.read_request()
    if request is None or request.startswith(b"GET /silent "):
        await connection.reader.read()
        return
    if request.startswith(b"GET /stream "):
        await connection.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        await connection.reader.read()
        return
    await connection.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n" + _chunk(b"data: one\n\n")
    )
    await second_event.wait()
    await connection.send(_chunk(b"data: two\n\n") + b"0\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_total_answers_504_when_no_answer_came_in_time(scripted: Scripted) -> None:
    _, edge = await scripted(stalling(), timeouts={"read": "30s", "total": "300ms"})
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        status, _, body = await get(client, f"{edge.url}/silent")
    assert status == 504
    assert json.loads(body)["error"] == "upstream_timeout"


async def test_total_cuts_a_streaming_answer_off(scripted: Scripted) -> None:
    _, edge = await scripted(stalling(), timeouts={"read": "30s", "total": "300ms"})
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        async with client.get(f"{edge.url}/stream") as resp:
            assert resp.status == 200
            assert await resp.content.readexactly(5) == b"first"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        [line] = await edge.wait_audit_lines(1)
    assert (line["status"], line["reason"]) == (200, "deadline_exceeded")


async def test_total_leaves_an_event_stream_alone(scripted: Scripted) -> None:
    """The stream outlives a 504 on a request that started after it, with the same total."""
    second_event = asyncio.Event()
    _, edge = await scripted(stalling(second_event), timeouts={"read": "30s", "total": "300ms"})
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        async with client.get(f"{edge.url}/events") as events:
            assert await events.content.readuntil(b"\n\n") == b"data: one\n\n"
            assert (await get(client, f"{edge.url}/silent"))[0] == 504
            second_event.set()
            assert await events.read() == b"data: two\n\n"


async def test_a_reload_applies_a_new_total(upstream: Upstream, start_edge: StartEdge) -> None:
    edge = await start_edge(edge_config(upstream.url))
    limited = edge_config(upstream.url, route={"timeouts": {"total": "200ms"}})
    await edge.edge.reload(config.parse(limited)).close()
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        status = (await get(client, f"{edge.url}/hold"))[0]
    assert status == 504


# -- the WebSocket handshake ----------------------------------------------------------------


async def _never_upgrades(connection: ScriptedConnection) -> None:
    await connection.read_request()
    await connection.reader.read()  # accepts the connection, never answers the upgrade


async def test_a_websocket_handshake_the_upstream_never_answers_ends_in_504(
    scripted: Scripted,
) -> None:
    upstream, edge = await scripted(_never_upgrades, timeouts={"connect": "300ms", "read": "30s"})
    async with aiohttp.ClientSession() as client, asyncio.timeout(HANG_GUARD):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"{edge.url}/ws")
    assert refused.value.status == 504
    assert upstream.connections == 1
    [line] = await edge.wait_audit_lines(1)
    assert line["reason"] == "upstream_timeout"
