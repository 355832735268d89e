"""Raw HTTP/1.1 over a socket, for requests an HTTP client library would refuse or rewrite."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, head: bytes, body: bytes = b"") -> RawResponse:
    """Send ``head`` (request line and headers, CRLF-terminated) verbatim; read to close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, rest)


def request_head(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: edge.test", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
