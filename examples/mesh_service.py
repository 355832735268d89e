"""Two Python services in the mesh that trust iap's tokens (docs/mesh.md).

Service A verifies the caller's iap token, then calls service B with the same token,
correlation id and trace context (``iap.mesh.call``); B verifies the token again and says who
called. In a cluster they are two Deployments; here they share one process for brevity.

    python examples/mesh_service.py --jwks-url http://127.0.0.1:8080/.iap/jwks.json \\
        --issuer http://127.0.0.1:8080/.iap --audience demo
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8081/whoami
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from iap.mesh import IDENTITY, Verifier, call, middleware

SESSION = web.AppKey("session", aiohttp.ClientSession)


def service_b(verifier: Verifier) -> web.Application:
    """Service B: answers with the caller's identity and the correlation id it received."""

    async def whoami(request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        return web.json_response(
            {
                "service": "b",
                "subject": identity.subject,
                "roles": list(identity.roles),
                "correlation_id": request.headers.get("X-Correlation-ID"),
            }
        )

    app = web.Application(middlewares=[middleware(verifier)])
    app.router.add_get("/whoami", whoami)
    return app


def service_a(verifier: Verifier, downstream: str) -> web.Application:
    """Service A: verifies the caller, then asks service B at ``downstream`` on its behalf."""

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        # One pooled session per app, without a cookie jar: east-west calls carry no cookies.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            app[SESSION] = session
            yield

    async def whoami(request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        url = f"{downstream}/whoami"
        async with await call(request.app[SESSION], "GET", url, request=request) as answer:
            if answer.status != 200:
                raise web.HTTPBadGateway()
            from_b = await answer.json()
        return web.json_response(
            {"service": "a", "subject": identity.subject, "email": identity.email, "b": from_b}
        )

    app = web.Application(middlewares=[middleware(verifier)])
    app.cleanup_ctx.append(client_session)
    app.router.add_get("/whoami", whoami)
    return app


async def serve(args: argparse.Namespace) -> None:
    """Run B, then A in front of it, until interrupted."""
    async with Verifier(args.jwks_url, issuer=args.issuer, audience=args.audience) as verifier:
        runners = []
        for app, port in (
            (service_b(verifier), args.port_b),
            (service_a(verifier, f"http://{args.host}:{args.port_b}"), args.port),
        ):
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, args.host, port).start()
            runners.append(runner)
        print(f"service A: http://{args.host}:{args.port}/whoami (calls B on {args.port_b})")
        try:
            await asyncio.Event().wait()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Two mesh services that trust iap's tokens.")
    parser.add_argument("--jwks-url", required=True, help="iap's JWKS (admin /jwks.json)")
    parser.add_argument("--issuer", required=True, help="tokens.issuer of iap")
    parser.add_argument("--audience", required=True, help="the route's audience")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="service A")
    parser.add_argument("--port-b", type=int, default=8082, help="service B")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
