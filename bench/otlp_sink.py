"""A fast OTLP/HTTP trace receiver for the benchmark: it must never be the bottleneck.

``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` body (``Content-Length``,
optionally gzip-encoded) is decoded, its spans are counted, and the answer is 200 with an empty
``ExportTraceServiceResponse``. ``GET /healthz`` answers 200 (readiness). Connections are
HTTP/1.1 keep-alive; ``Connection: close`` is honoured. Anything else gets a 4xx and closes.

On exit (SIGTERM, SIGINT) it prints one line to stderr that bench/run.py reads::

    otlp_sink: spans=N exports=N rejected=N bytes=N

Usage: ``python bench/otlp_sink.py --port PORT``; prints ``ready`` on stdout once listening.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
from dataclasses import dataclass
from typing import cast

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from protocol_server import serve_from_command_line

END_OF_HEADERS = b"\r\n\r\n"
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 2**20
EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()
OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/x-protobuf\r\n"
    b"Content-Length: " + str(len(EMPTY_RESPONSE)).encode() + b"\r\n"
    b"\r\n" + EMPTY_RESPONSE
)
HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def _error(status: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


@dataclass
class Counts:
    spans: int = 0
    exports: int = 0
    rejected: int = 0
    bytes: int = 0

    def line(self) -> str:
        return (
            f"otlp_sink: spans={self.spans} exports={self.exports} "
            f"rejected={self.rejected} bytes={self.bytes}"
        )


COUNTS = Counts()


def count_spans(body: bytes) -> int:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


class Receiver(asyncio.Protocol):
    """One connection: parse request heads, wait for ``Content-Length`` bytes, answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._one():
            pass

    def _one(self) -> bool:
        """Answer the first complete request in the buffer; False when more bytes are needed."""
        assert self.transport is not None
        end = self.buffer.find(END_OF_HEADERS)
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail("431 Request Header Fields Too Large")
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, _, rest = head[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail("411 Length Required")
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._fail("400 Bad Request")
            return False
        if length > MAX_BODY:
            self._fail("413 Content Too Large")
            return False
        start = end + len(END_OF_HEADERS)
        if len(self.buffer) < start + length:
            return False
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        if method == "GET" and path == "/healthz":
            self.transport.write(HEALTHY)
        elif method != "POST" or not path.endswith("/v1/traces"):
            self._fail("404 Not Found")
            return False
        else:
            try:
                if headers.get("content-encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                spans = count_spans(body)
            except (DecodeError, OSError, EOFError):
                self._fail("400 Bad Request")
                return False
            COUNTS.spans += spans
            COUNTS.exports += 1
            COUNTS.bytes += length
            self.transport.write(OK)
        if headers.get("connection", "").lower() == "close":
            self.transport.close()
            self.transport = None
            return False
        return True

    def _fail(self, status: str) -> None:
        assert self.transport is not None
        COUNTS.rejected += 1
        self.transport.write(_error(status))
        self.transport.close()
        self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def main() -> None:
    try:
        serve_from_command_line(Receiver, __doc__.splitlines()[0])
    finally:
        print(COUNTS.line(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
