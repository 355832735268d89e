"""A test upstream with the behaviours the proxy must cope with; a real aiohttp app on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field

from aiohttp import web

CHUNK = 64 * 1024


@dataclass
class Seen:
    """What reached the upstream, for assertions."""

    requests: list[web.Request] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last(self) -> web.Request:
        return self.requests[-1]


def upstream_app(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> None:
        seen.requests.append(request)

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": list(request.headers.items()),
                "body_bytes": len(body),
            }
        )

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        size = int(request.query["n"])
        response = web.StreamResponse()
        if request.query.get("chunked") != "1":
            response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        block = b"x" * CHUNK
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        await record(request)
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        return web.json_response(
            {
                "bytes": total,
                "sha256": digest.hexdigest(),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
                "content_length": request.headers.get("Content-Length"),
            }
        )

    async def hold(request: web.Request) -> web.Response:
        """Answers only when the test sets ``seen.release``."""
        await record(request)
        seen.arrived.set()
        await seen.release.wait()
        return web.Response(text="released")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == web.WSMsgType.TEXT:
                await ws.send_str(json.dumps({"echo": message.data}))
            elif message.type == web.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    app = web.Application(client_max_size=2**20)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/hold", hold)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
