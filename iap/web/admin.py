"""The admin listener's application: health, readiness, metrics, the minted tokens' keys,
and ``/``, which lists them (HTML for a browser, text otherwise).

Invariants:
- It is never exposed publicly (docs/operations.md): nothing here checks a caller.
- ``/`` lists exactly the endpoints this listener serves.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from aiohttp import web

from iap.adapters.metrics import Metrics
from iap.adapters.tls import Material
from iap.domain.negotiation import prefers_html
from iap.web.minting import Minter

ENDPOINTS = (
    ("/metrics", "Prometheus metrics (docs/operations.md, Metrics)"),
    ("/healthz", "liveness: 200 while the process serves"),
    ("/readyz", "readiness: 200 when every check passes, else 503 naming the failing ones"),
    ("/jwks.json", "the public keys of the tokens iap mints (istiod's jwksUri)"),
)


def _paths(app: web.Application) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


def _index(endpoints: list[tuple[str, str]], accept: str | None) -> web.Response:
    if not prefers_html(accept):
        lines = ["iap admin endpoints:", *(f"  {path}  {text}" for path, text in endpoints)]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
    items = "".join(
        f'<li><a href="{path}"><code>{path}</code></a> {html.escape(text)}</li>'
        for path, text in endpoints
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>iap admin</title></head><body><h1>iap admin</h1><ul>{items}</ul></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def admin_app(
    readiness: Callable[[], Awaitable[dict[str, bool]]],
    metrics: Metrics,
    materials: Callable[[], list[Material]],
    minter: Minter | None = None,
    degraded: Callable[[], Awaitable[list[str]]] | None = None,
    stores: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    """``/healthz``, ``/readyz``, ``/metrics``, with minted tokens ``/jwks.json`` (for
    istiod's ``jwksUri`` inside the cluster), and ``/``, the list of them; never exposed
    publicly."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        for material in materials():
            checks[f"tls:{material.name}"] = material.usable()
        ready = all(checks.values())
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        if degraded is not None:
            body["degraded"] = await degraded()
        if stores is not None:  # after readiness(): its pings are what the states report
            body["stores"] = stores()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_text(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def index(request: web.Request) -> web.Response:
        return _index(endpoints, request.headers.get("Accept"))

    async def server_header(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "iap"

    app = web.Application()
    app.on_response_prepare.append(server_header)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    if minter is not None:
        app.router.add_get("/jwks.json", minter.jwks)
    endpoints = [(path, text) for path, text in ENDPOINTS if path in _paths(app)]
    return app
