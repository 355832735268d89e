"""Slow clients on the public listener (issue 15 point 5): a request head must arrive within
``limits.header_timeout`` (slowloris), an idle keep-alive connection is closed after
``limits.keepalive_timeout``; raw sockets, plain and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path

import aiohttp
import pytest

from iap.certs import issue_dev_material
from tests.conftest import RunningEdge, StartEdge, Upstream, edge_config

HANG_GUARD = 30.0  # seconds; a guard against a hang, never a performance bound
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Listener = tuple[RunningEdge, Callable[[], Awaitable[Streams]]]
LIMITS = {"header_timeout": "200ms", "keepalive_timeout": "400ms"}


@pytest.fixture(params=["plain", "tls"])
async def listener(
    request: pytest.FixtureRequest, upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> Listener:
    """iap with tiny header and keep-alive timeouts, and a way to open a raw connection."""
    document = edge_config(upstream.url, limits=LIMITS)
    trust: ssl.SSLContext | None = None
    if request.param == "tls":
        dev = issue_dev_material(tmp_path / "dev")
        tls = {"cert_file": str(dev.edge_server_cert), "key_file": str(dev.edge_server_key)}
        document["listen"] = {"address": "127.0.0.1:0", "tls": tls}
        trust = ssl.create_default_context(cafile=str(dev.ca_cert))
    edge = await start_edge(document)

    async def connect() -> Streams:
        return await asyncio.open_connection("127.0.0.1", edge.port, ssl=trust)

    return edge, connect


def header_timeouts(edge: RunningEdge) -> float | None:
    return edge.edge.metrics.registry.get_sample_value("iap_header_timeouts_total")


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response with a Content-Length: its head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_a_client_trickling_its_head_byte_by_byte_is_cut_off_with_408(
    listener: Listener,
) -> None:
    """The second request on a keep-alive connection: its head's deadline starts with its
    first byte (the connection's own timer ended with the first head)."""
    edge, connect = listener
    reader, writer = await connect()
    async with aiohttp.ClientSession() as admin, asyncio.timeout(HANG_GUARD):
        writer.write(b"GET /first HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        assert (await read_response(reader))[0].startswith(b"HTTP/1.1 200 ")
        writer.write(b"GET /second HTTP/1.1\r\nHost: edge.test\r\nX-Slow: ")
        closed = asyncio.ensure_future(reader.read())
        with suppress(ConnectionError):
            while not closed.done():
                writer.write(b"a")  # one header byte, then one round trip to the admin
                await writer.drain()  # listener: the trickle is paced by events, not a clock
                async with admin.get(f"{edge.admin_url}/healthz") as health:
                    assert health.status == 200
        try:
            answer: bytes | None = await closed
        except ConnectionResetError:  # a byte written after the close made the kernel send
            answer = None  # RST, which may discard the 408 unread; the audit line still shows it
    writer.close()
    # Each byte arrived well within the timeout of the one before: only a deadline counted
    # from the head's first byte ends this, an idle timer would be reset forever.
    if answer is not None:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"Server: iap\r\n" in answer
    first, line = edge.audit_lines()
    assert first["status"] == 200
    assert (line["status"], line["reason"], line["client_ip"]) == (
        408,
        "header_timeout",
        "127.0.0.1",
    )
    assert header_timeouts(edge) == 1
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{edge.url}/fine", ssl=False) as resp:
            assert resp.status == 200


async def test_a_connection_that_never_sends_a_byte_is_cut_off_with_408(
    listener: Listener, upstream: Upstream
) -> None:
    edge, connect = listener
    reader, writer = await connect()
    async with asyncio.timeout(HANG_GUARD):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert [line["reason"] for line in edge.audit_lines()] == ["header_timeout"]
    assert upstream.seen.requests == []


async def test_an_idle_keep_alive_connection_is_closed_without_408(
    listener: Listener, upstream: Upstream
) -> None:
    """After a response, the wait for the next request is the keep-alive timeout's, not the
    header timeout's: the connection ends with a plain close, no 408 and no audit line."""
    edge, connect = listener
    reader, writer = await connect()
    async with asyncio.timeout(HANG_GUARD):
        writer.write(b"GET /first HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = await reader.read()  # the idle connection, closed by iap
    writer.close()
    assert rest == b""
    assert [line["status"] for line in edge.audit_lines()] == [200]
    assert header_timeouts(edge) == 0


async def test_a_slow_body_is_not_cut_off_by_the_header_timeout(
    listener: Listener, upstream: Upstream
) -> None:
    """The head arrived in time; the body's first half waits until another connection has
    been cut off by the header timeout, so the body took longer than it."""
    edge, connect = listener
    reader, writer = await connect()
    async with asyncio.timeout(HANG_GUARD):
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 50000
        )
        await writer.drain()
        witness_reader, witness = await connect()  # opened after the body's first half
        assert (await witness_reader.read()).startswith(b"HTTP/1.1 408 ")
        witness.close()
        writer.write(b"y" * 50000)
        head, body = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b'"bytes": 100000' in body
    reasons = sorted((line["status"], line["reason"] or "") for line in edge.audit_lines())
    assert reasons == [(200, "public"), (408, "header_timeout")]  # only the witness was cut
