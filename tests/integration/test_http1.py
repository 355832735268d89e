"""The upstream hop's HTTP/1.1 client against a scripted upstream (iap.adapters.http1, .pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import RunningEdge, StartEdge, edge_config
from tests.support.scripted import Script, ScriptedConnection, ScriptedUpstream, response

Scripted = Callable[[Script], Awaitable[tuple[ScriptedUpstream, RunningEdge]]]


@pytest.fixture
async def scripted(start_edge: StartEdge) -> AsyncIterator[Scripted]:
    upstreams: list[ScriptedUpstream] = []

    async def start(script: Script, **route: object) -> tuple[ScriptedUpstream, RunningEdge]:
        upstream = ScriptedUpstream(script)
        await upstream.start()
        upstreams.append(upstream)
        edge = await start_edge(edge_config(upstream.url, route={"timeouts": {"read": "1s"}}))
        return upstream, edge

    yield start
    for upstream in upstreams:
        await upstream.stop()


async def fetch(edge: RunningEdge, path: str = "/", method: str = "GET") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as client, client.request(method, edge.url + path) as r:
        return r.status, await r.read()


async def keep_alive(connection: ScriptedConnection) -> None:
    while await connection.read_request():
        await connection.send(response(b"hello"))


async def test_connections_are_reused(scripted: Scripted) -> None:
    upstream, edge = await scripted(keep_alive)
    for _ in range(5):
        assert await fetch(edge) == (200, b"hello")
    assert upstream.connections == 1


async def test_upstream_connection_close_is_honoured(scripted: Scripted) -> None:
    async def close_each(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(response(b"bye", "Connection: close"))

    upstream, edge = await scripted(close_each)
    for _ in range(3):
        assert await fetch(edge) == (200, b"bye")
    assert upstream.connections == 3


async def test_a_pooled_connection_closed_by_the_upstream_is_retried_once(
    scripted: Scripted,
) -> None:
    async def one_answer_then_drop(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(response(b"first"))
        await connection.read_request()  # the second request on this connection: dropped

    upstream, edge = await scripted(one_answer_then_drop)
    assert await fetch(edge) == (200, b"first")
    assert await fetch(edge) == (200, b"first")  # sent again on a new connection
    assert upstream.connections == 2


async def test_a_non_idempotent_request_is_not_replayed(scripted: Scripted) -> None:
    async def one_answer_then_drop(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(response(b"first"))
        await connection.read_request()

    upstream, edge = await scripted(one_answer_then_drop)
    assert await fetch(edge) == (200, b"first")
    status, _ = await fetch(edge, method="POST")
    assert status == 502
    assert upstream.connections == 1


async def test_interim_responses_are_skipped(scripted: Scripted) -> None:
    async def early_hints(connection: ScriptedConnection) -> None:
        while await connection.read_request():
            await connection.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            await connection.send(response(b"final"))

    _, edge = await scripted(early_hints)
    assert await fetch(edge) == (200, b"final")
    assert await fetch(edge) == (200, b"final")


async def test_a_close_delimited_body_is_delivered_whole(scripted: Scripted) -> None:
    body = b"z" * 300_000

    async def until_close(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)

    _, edge = await scripted(until_close)
    assert await fetch(edge) == (200, body)


async def test_head_answers_do_not_poison_the_pool(scripted: Scripted) -> None:
    async def head_then_get(connection: ScriptedConnection) -> None:
        while request := await connection.read_request():
            if request.startswith(b"HEAD"):
                await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            else:
                await connection.send(response(b"hello"))

    upstream, edge = await scripted(head_then_get)
    assert await fetch(edge, method="HEAD") == (200, b"")
    assert await fetch(edge) == (200, b"hello")
    assert upstream.connections == 2


async def test_a_malformed_response_gives_502(scripted: Scripted) -> None:
    async def garbage(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(b"NOT HTTP AT ALL\r\n\r\n")

    _, edge = await scripted(garbage)
    status, body = await fetch(edge)
    assert status == 502
    assert b"NOT HTTP" not in body
    [line] = edge.audit_lines()
    assert line["reason"] == "upstream_unreachable"


async def test_silence_mid_body_aborts_the_client_connection(scripted: Scripted) -> None:
    async def stall(connection: ScriptedConnection) -> None:
        if await connection.read_request():
            await connection.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 70_000
            )
            await connection.reader.read()  # says nothing more until iap gives up

    _, edge = await scripted(stall)
    async with aiohttp.ClientSession() as client, client.get(edge.url) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    [line] = await edge.wait_audit_lines(1)
    assert line["reason"] == "upstream_aborted"


async def test_empty_chunks_do_not_end_a_chunked_upload() -> None:
    from iap.adapters.pool import Pool

    received: list[bytes] = []

    async def echo_body(connection: ScriptedConnection) -> None:
        head = await connection.read_request()
        assert head is not None
        assert b"transfer-encoding: chunked" in head.lower()
        body = await connection.reader.readuntil(b"0\r\n\r\n")
        received.append(body)
        await connection.send(response(b"ok"))

    upstream = ScriptedUpstream(echo_body)
    await upstream.start()
    try:
        port = int(upstream.url.rsplit(":", 1)[1])
        pool = Pool("127.0.0.1", port, tls=lambda: None, server_name=None)

        async def body() -> AsyncIterator[bytes]:
            for piece in (b"ab", b"", b"cd"):
                yield piece

        answer = await pool.request(
            "POST", "/", [("Host", "x")], body(), connect_timeout=5, read_timeout=5
        )
        assert (answer.status, await answer.read()) == (200, b"ok")
        answer.release()
        await pool.close()
    finally:
        await upstream.stop()
    assert received == [b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"]


async def test_bytes_on_an_idle_connection_retire_it(scripted: Scripted) -> None:
    async def answer_then_chatter(connection: ScriptedConnection) -> None:
        if connection.index == 1 and await connection.read_request():
            await connection.send(response(b"first"))
            await connection.send(response(b"unsolicited", status="408 Request Timeout"))
        while await connection.read_request():
            await connection.send(response(b"later"))

    upstream, edge = await scripted(answer_then_chatter)
    assert await fetch(edge) == (200, b"first")
    # The stray 408 must not be taken as the answer to the next request.
    assert await fetch(edge) == (200, b"later")
    assert upstream.connections == 2
