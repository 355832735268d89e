"""The floor under iap's CPU per request: aiohttp's low-level server (``web.Server``, no
Application or router) forwarding every request through iap's own upstream client
(iap/adapters/pool.py), with nothing else: no routing, policy, header filtering, audit line,
metrics or correlation id. iap cannot cost less than this while aiohttp serves its listeners.

Usage: ``python bench/floor_proxy.py --port PORT --upstream URL``
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.parse

import uvloop
from aiohttp import web

from iap.adapters.pool import Pool


async def main(port: int, upstream: str) -> None:
    origin = urllib.parse.urlsplit(upstream)
    pool = Pool(
        origin.hostname or "127.0.0.1", origin.port or 80, tls=lambda: None, server_name=None
    )

    async def forward(request: web.BaseRequest) -> web.Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "host"]
        answer = await pool.request(
            request.method, request.path_qs, headers, None, connect_timeout=5, read_timeout=30
        )
        body = await answer.read()
        answer.release()
        response = web.Response(status=answer.status, body=body)
        for name, value in answer.headers:
            if name.lower() not in (
                "content-length",
                "connection",
                "keep-alive",
                "transfer-encoding",
            ):
                response.headers.add(name, value)
        return response

    server = web.Server(forward)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream))
