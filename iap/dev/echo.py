"""The demo upstream: a page showing what reached it through iap (identity, the minted token
and its claims, headers, path).

It accepts the header sizes iap accepts (``limits`` defaults: ``max_header_bytes`` per field,
and iap's request-line bound), so a large header that iap forwards never meets a library
error here. The token's claims are decoded *without* verifying its signature: this is a
demo page, and it says so; a real upstream verifies the token (docs/tokens.md).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from iap.config import Limits

_LIMITS = Limits()
MAX_FIELD_SIZE = _LIMITS.max_header_bytes
"""iap's ``limits.max_header_bytes``: the largest header field iap lets through."""
MAX_LINE_SIZE = max(8 * _LIMITS.max_url_bytes, 65536, _LIMITS.max_header_bytes + 1)
"""iap's bound on a request line (as ``iap.web.server`` gives its parser)."""
CLAIMS_SHOWN = ("name", "email", "roles", "aud", "exp")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iap demo upstream</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px system-ui,sans-serif;margin:2em;overflow-wrap:anywhere}}
td{{padding:.2em .8em;font-family:monospace;vertical-align:top}}
td:first-child{{white-space:nowrap}}td+td{{word-break:break-all}}
code,pre{{white-space:pre-wrap;word-break:break-all}}
</style></head><body><p><a id="sign-out" href="/.iap/logout">Sign out</a></p>
<h1>Hello from the demo upstream</h1>
<p>This page is served behind iap. <b>{method}</b> <code>{path}</code></p>
<h2>Identity</h2><p id="subject">{subject}</p>
<h2>Token iap minted</h2>
<p>Decoded here <b>without verifying its signature</b> (a demo; a real upstream verifies it).</p>
<table id="claims">{claims}</table>
<p>Raw token:</p><pre id="raw-token">{token}</pre>
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


def bearer(request: web.Request) -> str | None:
    """The token iap sent (``Authorization: Bearer``), if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, decoded but NOT verified: for display only."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cell(name: str, value: Any) -> str:
    shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if name == "exp" and isinstance(value, int) and 0 < value < 2**40:
        shown += datetime.fromtimestamp(value, UTC).strftime(" (%Y-%m-%d %H:%M:%S UTC)")
    return html.escape(shown)


def _claims_rows(token: str | None) -> str:
    if token is None:
        return "<tr><td>no token (public route)</td></tr>"
    claims = unverified_claims(token)
    return "".join(
        f"<tr><td>{name}</td><td id='claim-{name}'>{_cell(name, claims.get(name, ''))}</td></tr>"
        for name in CLAIMS_SHOWN
    )


def _page(request: web.Request, subject: str, client_uris: list[str]) -> str:
    token = bearer(request)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td></tr>"
        for name, value in request.headers.items()
    )
    return _PAGE.format(
        method=html.escape(request.method),
        path=html.escape(request.path_qs),
        subject=html.escape(subject),
        claims=_claims_rows(token),
        token=html.escape(token or "none"),
        client_certificate=html.escape(", ".join(client_uris) or "none (no TLS)"),
        rows=rows,
    )


async def echo(request: web.Request) -> web.Response:
    """Echo the request as JSON, or as an HTML page for browsers."""
    headers = [[name, value] for name, value in request.headers.items()]
    subject = request.headers.get("X-IAP-Subject", "anonymous (public route)")
    client_uris = client_certificate_uris(request)
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(text=_page(request, subject, client_uris), content_type="text/html")
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
    """The demo upstream, parsing requests with iap's own header bounds."""
    app = web.Application(
        handler_args={"max_field_size": MAX_FIELD_SIZE, "max_line_size": MAX_LINE_SIZE}
    )
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
