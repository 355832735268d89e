"""The upstream client's interface (iap.adapters.upstream) against real loopback sockets:
what its answers carry and how each of its timeouts ends a silent exchange."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from iap.adapters.upstream import Timeouts, Transfer, Upstream, UpstreamFailure
from iap.domain.circuit import CircuitBreaker
from tests.support.scripted import Script, ScriptedConnection, ScriptedUpstream, response

UpstreamOf = Callable[[Script], Awaitable[Upstream]]


async def _silent(connection: ScriptedConnection) -> None:
    await connection.read_request()
    await connection.reader.read()  # says nothing until iap gives up


async def _hello(connection: ScriptedConnection) -> None:
    while await connection.read_request():
        await connection.send(response(b"hello"))


@pytest.fixture
async def upstream_of() -> AsyncIterator[UpstreamOf]:
    started: list[tuple[ScriptedUpstream, Upstream]] = []

    async def start(script: Script) -> Upstream:
        scripted = ScriptedUpstream(script)
        await scripted.start()
        port = int(scripted.url.rsplit(":", 1)[1])
        circuit = CircuitBreaker(1, 30.0, clock=asyncio.get_running_loop().time)
        upstream = Upstream(scripted.url, "127.0.0.1", port, None, None, circuit)
        started.append((scripted, upstream))
        return upstream

    yield start
    for scripted, upstream in started:
        await upstream.close()
        await scripted.stop()


async def test_a_small_answer_comes_whole_with_its_timing(upstream_of: UpstreamOf) -> None:
    upstream = await upstream_of(_hello)
    transfer = Transfer()
    upstream.admit()
    answer = await upstream.request(
        "GET", "/", [("Host", "app")], None, timeouts=Timeouts(5.0, 5.0), transfer=transfer
    )
    assert (answer.status, answer.body) == (200, b"hello")
    assert transfer.bytes_out == 5
    assert transfer.upstream_seconds is not None


@pytest.mark.parametrize(
    ("timeouts", "detail"),
    [
        (Timeouts(connect=5.0, read=0.05), "upstream timeout (ReadTimeout)"),
        (Timeouts(connect=5.0, read=None, total=0.05), "upstream timeout (TimeoutError)"),
    ],
)
async def test_a_silent_upstream_ends_in_a_timeout_that_keeps_the_circuit_closed(
    upstream_of: UpstreamOf, timeouts: Timeouts, detail: str
) -> None:
    upstream = await upstream_of(_silent)
    upstream.admit()
    with pytest.raises(UpstreamFailure) as info:
        await upstream.request(
            "GET", "/", [("Host", "app")], None, timeouts=timeouts, transfer=Transfer()
        )
    assert (info.value.kind, info.value.detail) == ("timeout", detail)
    upstream.admit()  # a slow answer says nothing about reachability


async def test_total_bounds_a_websocket_handshake(upstream_of: UpstreamOf) -> None:
    upstream = await upstream_of(_silent)
    upstream.admit()
    with pytest.raises(UpstreamFailure) as info:
        await upstream.websocket(
            "/ws",
            [("Host", "app")],
            protocols=(),
            max_message=1024,
            timeouts=Timeouts(read=5.0, total=0.05),
            transfer=Transfer(),
        )
    assert info.value.kind == "timeout"


async def test_an_upstream_that_is_not_listening_opens_the_circuit(upstream_of: UpstreamOf) -> None:
    upstream = await upstream_of(_hello)
    upstream.port = _closed_port()
    upstream.admit()
    with pytest.raises(UpstreamFailure) as info:
        await upstream.request(
            "GET", "/", [("Host", "app")], None, timeouts=Timeouts(5.0, 5.0), transfer=Transfer()
        )
    assert info.value.kind == "unreachable"
    with pytest.raises(UpstreamFailure) as closed:
        upstream.admit()
    assert closed.value.kind == "circuit_open"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
