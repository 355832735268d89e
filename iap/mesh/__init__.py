"""For Python services inside the mesh: verify the tokens iap mints and carry identity and
trace context on east-west calls (SPEC §6, issue 4). See docs/mesh.md.

    verifier = Verifier(jwks_url, issuer="https://edge.contoso.com/.iap", audience="orders")
    app = web.Application(middlewares=[middleware(verifier)])
    # in a handler: request[IDENTITY].subject; await call(session, "GET", url, request=request)

Modules, each with its own invariants:

- :mod:`iap.mesh.verify`: :class:`Verifier` and :class:`MeshIdentity`, the token checks.
- :mod:`iap.mesh.keys`: iap's JWKS over HTTP in the shared key cache
  (``iap.adapters.jwks``): single-flight, refresh after an hour, last-known-good for a day,
  a failure backoff and a budget for unknown-``kid`` refetches.
- :mod:`iap.mesh.middleware`: the aiohttp middleware and :data:`IDENTITY`.
- :mod:`iap.mesh.client`: :func:`forward_headers` and :func:`call` for east-west calls.
- :mod:`iap.mesh.errors`: :class:`MeshError`, :class:`InvalidToken`, :class:`KeysUnavailable`.

Invariant: importing this package loads none of the proxy's server dependencies (redis,
pydantic, uvloop, prometheus_client, ``iap.config``, ``iap.web``; a test holds this). It
needs aiohttp, the pure ``iap.domain.tokens`` and ``iap.domain.claims`` (which bring
joserfc and cryptography) and the stdlib-only ``iap.adapters.jwks``; joserfc itself is
imported only by ``iap.domain``.
Log lines go to the ``iap.mesh`` logger.
"""

from __future__ import annotations

from iap.mesh.client import FORWARDED_HEADERS, call, forward_headers
from iap.mesh.errors import InvalidToken, KeysUnavailable, MeshError
from iap.mesh.keys import FAILURE_BACKOFF, MAX_JWKS_BYTES, MAX_STALE, REFRESH_AFTER
from iap.mesh.middleware import IDENTITY, middleware
from iap.mesh.verify import MAX_TOKEN_LENGTH, MeshIdentity, Verifier

__all__ = [
    "FAILURE_BACKOFF",
    "FORWARDED_HEADERS",
    "IDENTITY",
    "MAX_JWKS_BYTES",
    "MAX_STALE",
    "MAX_TOKEN_LENGTH",
    "REFRESH_AFTER",
    "InvalidToken",
    "KeysUnavailable",
    "MeshError",
    "MeshIdentity",
    "Verifier",
    "call",
    "forward_headers",
    "middleware",
]
