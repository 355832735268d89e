"""The demo upstream: a page showing what reached it through iap (identity, headers, path)."""

from __future__ import annotations

import html
import json

from aiohttp import web

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iap demo upstream</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em}}
td{{padding:.2em .8em;font-family:monospace}}
</style></head><body><h1>Hello from the demo upstream</h1>
<p>This page is served behind iap. <b>{method}</b> <code>{path}</code></p>
<h2>Identity</h2><p id="subject">{subject}</p>
<h2>Mutual TLS</h2><p>iap's client certificate, as this upstream saw it:
<code id="client-certificate">{client_certificate}</code></p>
<h2>Headers received</h2><table>{rows}</table></body></html>
"""


def client_certificate_uris(request: web.Request) -> list[str]:
    """URI SANs (the SPIFFE ID) of the client certificate verified on this connection."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    entries = (peer or {}).get("subjectAltName", ())
    return [str(value) for kind, value in entries if kind == "URI"]


async def echo(request: web.Request) -> web.Response:
    """Echo the request as JSON, or as an HTML page for browsers."""
    headers = [[name, value] for name, value in request.headers.items()]
    subject = request.headers.get("X-IAP-Subject", "anonymous (public route)")
    client_uris = client_certificate_uris(request)
    if "text/html" in request.headers.get("Accept", ""):
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td></tr>"
            for name, value in headers
        )
        return web.Response(
            text=_PAGE.format(
                method=html.escape(request.method),
                path=html.escape(request.path_qs),
                subject=html.escape(subject),
                client_certificate=html.escape(", ".join(client_uris) or "none (no TLS)"),
                rows=rows,
            ),
            content_type="text/html",
        )
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "subject": subject,
            "client_certificate_uris": client_uris,
            "headers": headers,
            "body_bytes": len(body),
        },
        dumps=json.dumps,
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
