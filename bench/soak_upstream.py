"""The soak's upstream: ``python bench/soak_upstream.py --port P``; an aiohttp app.

- any path: a small JSON answer (``GET /public/ping``, ``GET /app/ping``);
- ``GET .../big?n=N``: N bytes, streamed in 64 KiB pieces;
- ``POST .../upload``: reads the body as it comes, answers its size;
- ``GET /ws/...``: a WebSocket that echoes text messages.
"""

from __future__ import annotations

import argparse

from aiohttp import web

CHUNK = 64 * 1024


async def anything(request: web.Request) -> web.StreamResponse:
    if request.path.endswith("/big"):
        return await big(request)
    if request.path.endswith("/upload"):
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"bytes": total})
    if request.path.startswith("/ws/"):
        return await websocket(request)
    return web.json_response({"service": "soak-upstream", "path": request.path})


async def big(request: web.Request) -> web.StreamResponse:
    size = int(request.query["n"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    block, sent = b"x" * CHUNK, 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_route("*", "/{tail:.*}", anything)
    web.run_app(app, host="127.0.0.1", port=parser.parse_args().port, access_log=None,
                print=lambda *_: print("ready", flush=True))  # fmt: skip


if __name__ == "__main__":
    main()
