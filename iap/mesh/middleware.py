"""The aiohttp server side: a middleware that lets only requests with a valid iap token reach
the service's handlers (SPEC §6; RFC 6750 §3).

Invariants:
- The token is read from exactly one header: ``Authorization: Bearer <token>`` (the scheme
  compared case-insensitively, RFC 7235 §2.1), or bare from the configured header. A
  repeated header is refused as ambiguous.
- A refused token answers 401 with ``WWW-Authenticate: Bearer error="invalid_token"``; a
  missing one (when required) 401 with a bare ``Bearer`` challenge (RFC 6750 §3.1); no
  usable JWKS 503 with ``Retry-After``. None of them calls the handler, all are JSON with
  ``Cache-Control: no-store``, and none echoes the token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from iap.mesh.errors import InvalidToken, KeysUnavailable
from iap.mesh.verify import MeshIdentity, Verifier

IDENTITY: Final = web.RequestKey("iap.mesh.identity", MeshIdentity)
"""Where :func:`middleware` stores the caller's :class:`MeshIdentity` on the request."""

log = logging.getLogger("iap.mesh")  # the logger docs/mesh.md names


def middleware(
    verifier: Verifier, *, header: str = "authorization", required: bool = True
) -> Middleware:
    """An aiohttp middleware that verifies the iap token of every request and stores the
    caller at ``request[IDENTITY]``.

    The token is read from ``Authorization: Bearer <token>``, or bare from ``header`` when
    iap is configured with another ``tokens.header``. Missing (when ``required``) or invalid:
    401 JSON with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3) and no handler
    call. With ``required=False`` a request without a token reaches the handler with no
    identity (``request.get(IDENTITY)`` is None); an invalid token is still a 401. No JWKS:
    503.
    """
    name = header.lower()

    @web.middleware
    async def iap_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            token = _token_from(request, name)
            if token is not None:
                request[IDENTITY] = await verifier.verify(token)
        except InvalidToken as exc:
            log.info("iap token refused (%s): %s %s", exc.reason, request.method, request.path)
            return _unauthorized(request, invalid=True)
        except KeysUnavailable:
            return _error(request, 503, "temporarily_unavailable", {"Retry-After": "10"})
        if token is None and required:
            return _unauthorized(request, invalid=False)
        return await handler(request)

    return iap_token


def _token_from(request: web.BaseRequest, name: str) -> str | None:
    """The token in header ``name``; None when absent. A repeated header is refused."""
    values = request.headers.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("header")
    value = values[0]
    if name == "authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":  # RFC 7235 §2.1: schemes are case-insensitive
            raise InvalidToken("scheme")
    token = value.strip(" ")
    if not token:
        raise InvalidToken("missing")
    return token


def _unauthorized(request: web.BaseRequest, *, invalid: bool) -> web.Response:
    # RFC 6750 §3.1: no error code when the request carried no token at all.
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    error = "invalid_token" if invalid else "unauthorized"
    return _error(request, 401, error, {"WWW-Authenticate": challenge})


def _error(
    request: web.BaseRequest, status: int, error: str, headers: Mapping[str, str]
) -> web.Response:
    body = {"error": error}
    correlation_id = request.headers.get("X-Correlation-ID", "")
    if 0 < len(correlation_id) <= 128:
        body["correlation_id"] = correlation_id
    return web.json_response(body, status=status, headers={**headers, "Cache-Control": "no-store"})
