"""A fast HTTP/1.1 keep-alive upstream for the benchmark: it must never be the bottleneck.

Every request gets the same 200 response with a ~100-byte body. Parsing is the bare minimum:
requests are split on the end of their headers (``\\r\\n\\r\\n``); benchmark requests carry no
body. ``Connection: close`` from the client is honoured.

Usage: ``python bench/upstream.py --port PORT``; prints ``ready`` on stdout once listening.
"""

from __future__ import annotations

import asyncio
from typing import cast

from protocol_server import serve_from_command_line

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


def main() -> None:
    serve_from_command_line(FixedResponse, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
