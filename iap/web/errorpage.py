"""Error answers produced by iap itself (SPEC §2, "Error responses").

Invariants:
- The body holds a fixed public message, a stable error code and the correlation id,
  nothing else: no exception text, stack trace, library name or version.
- :data:`SERVER` is the ``Server`` header of everything iap answers, forwarded answers
  included: it names neither iap's version nor its libraries (SPEC §2).
"""

from __future__ import annotations

import html
import json

from aiohttp import web

from iap.domain.negotiation import prefers_html

SERVER = "iap"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em}}
code{{background:#f3f3f3;padding:.1em .3em}}</style></head>
<body><h1>{title}</h1><p>{message}</p>
<p>Correlation ID: <code>{correlation_id}</code></p></body></html>
"""

_TITLES = {
    302: "Sign-in required",
    400: "Bad request",
    401: "Sign-in required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    414: "URI too long",
    431: "Request header fields too large",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def error_response(
    status: int, code: str, message: str, correlation_id: str, accept: str | None
) -> web.Response:
    """A small JSON or HTML error answer, chosen by ``Accept``."""
    headers = {
        "Server": SERVER,
        "X-Correlation-ID": correlation_id,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if prefers_html(accept):
        body = _PAGE.format(
            status=status,
            title=_TITLES.get(status, "Error"),
            message=html.escape(message),
            correlation_id=html.escape(correlation_id),
        )
        return web.Response(
            status=status, text=body, content_type="text/html", charset="utf-8", headers=headers
        )
    payload = {"error": code, "message": message, "correlation_id": correlation_id}
    return web.Response(
        status=status,
        text=json.dumps(payload),
        content_type="application/json",
        headers=headers,
    )
