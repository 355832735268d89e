"""The reverse proxy a user would write in ~40 lines of aiohttp: the benchmark's baseline.

One catch-all route, one shared :class:`aiohttp.ClientSession`; method, path, query and headers
(minus Host) go upstream, the whole upstream body comes back with the upstream's status and
headers minus hop-by-hop and framing headers. No auth, no limits, no audit, no streaming.

Usage: ``python bench/naive_proxy.py --port PORT --upstream URL [--loop asyncio|uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        session = request.app[SESSION]
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with session.request(
            request.method,
            upstream + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream_response:
            body = await upstream_response.read()
            out = {
                k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP
            }
            return web.Response(status=upstream_response.status, body=body, headers=out)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    web.run_app(
        make_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        loop=loop,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
