"""The aiohttp client side: east-west calls made on behalf of an incoming request carry its
token, correlation and trace context, and nothing else (SPEC §6 headers to the upstream).

Invariants:
- :func:`forward_headers` copies an allow-list (the token, correlation and request ids, W3C
  trace context and baggage, B3 multi headers) and nothing else: never cookies, never iap's
  identity headers. A header sent more than once is dropped as ambiguous, except the list
  headers ``tracestate`` and ``baggage``, whose lines are joined.
- :func:`call` follows no redirect unless asked, so the token goes only where it was sent.
"""

from __future__ import annotations

from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

FORWARDED_HEADERS: Final = (
    "X-Correlation-ID",
    "X-Request-ID",
    "traceparent",
    "tracestate",
    "baggage",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
"""What an east-west call carries besides the token (SPEC §6 headers to the upstream)."""
#: List-valued headers whose repeated lines are one value (W3C Trace Context §3.3, Baggage).
_LIST_HEADERS = frozenset({"tracestate", "baggage"})


def forward_headers(request: web.BaseRequest, *, header: str = "authorization") -> dict[str, str]:
    """The headers an east-west call made on behalf of ``request`` carries: the incoming
    token unchanged (``Authorization``, or ``header``) and :data:`FORWARDED_HEADERS`, when
    present; nothing else. A header sent more than once is dropped as ambiguous, except
    ``tracestate`` and ``baggage``, whose lines are joined (RFC 9110 §5.3)."""
    token_header = "Authorization" if header.lower() == "authorization" else header
    forwarded: dict[str, str] = {}
    for name in (token_header, *FORWARDED_HEADERS):
        values = request.headers.getall(name, [])
        if name.lower() in _LIST_HEADERS and values:
            forwarded[name] = ",".join(values)
        elif len(values) == 1:
            forwarded[name] = values[0]
    return forwarded


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    request: web.BaseRequest,
    header: str = "authorization",
    **kwargs: Any,
) -> aiohttp.ClientResponse:
    """``session.request(method, url, **kwargs)`` carrying :func:`forward_headers` of
    ``request``; headers given in ``kwargs`` win over forwarded ones of the same name.
    Redirects are not followed unless ``allow_redirects=True`` is passed, so the token goes
    only where it was sent. Use as ``async with await call(...) as response``."""
    headers: CIMultiDict[str] = CIMultiDict(forward_headers(request, header=header))
    given = kwargs.pop("headers", None)
    if given:
        headers.update(given)
    kwargs.setdefault("allow_redirects", False)
    return await session.request(method, url, headers=headers, **kwargs)
