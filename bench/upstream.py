"""A fast HTTP/1.1 keep-alive upstream for the benchmark: it must never be the bottleneck.

Every request gets the same 200 response with a ~100-byte body. Parsing is the bare minimum:
requests are split on the end of their headers (``\\r\\n\\r\\n``); benchmark requests carry no
body. ``Connection: close`` from the client is honoured.

Usage: ``python bench/upstream.py --port PORT``; prints ``ready`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import uvloop

BODY = (
    b'{"service":"bench-upstream","status":"ok",'
    b'"detail":"a fixed response for reverse proxy benchmarks"}\n'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
END_OF_HEADERS = b"\r\n\r\n"


class FixedResponse(asyncio.Protocol):
    """Answers each complete request head in the buffer with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        answers = 0
        close = False
        start = 0
        while True:
            end = self.buffer.find(END_OF_HEADERS, start)
            if end < 0:
                break
            if b"connection: close" in self.buffer[start:end].lower():
                close = True
            answers += 1
            start = end + len(END_OF_HEADERS)
            if close:
                break
        self.buffer = self.buffer[start:]
        if answers:
            self.transport.write(RESPONSE * answers)
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedResponse, host, port, backlog=1024)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
