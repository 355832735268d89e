"""The original request behind a forward-auth call (SPEC §3 ``/.iap/auth``, §5.1 ``forward_auth``).

A front proxy (nginx ``auth_request``, Traefik ForwardAuth, Envoy ext_authz HTTP) asks iap
whether a request it holds may pass, and serves that request on any 2xx. So everything here
decides what iap judges, and must never judge a request the client chose in place of the one
the proxy holds.

Invariants:
- One source per fact. In header mode only the configured headers are read
  (``forward_auth.uri_header``, ``method_header``, ``host_header``). nginx passes the client's
  own headers along with the subrequest, so no fallback to another header exists: a client
  could set that one.
- Missing, empty or repeated is a refusal (400), never a default: judging ``/`` for a missing
  URI would answer 2xx for any path behind a public root route.
- Contradiction is a refusal: another original-URI (or method, or host) header whose value
  differs from the configured one means the proxy and the client disagree about the request.
- In prefix mode (``/.iap/auth/<original path>``, Envoy's ``path_prefix``) the path comes from
  the request line, which the proxy writes; the method and host are the request's own.
- The URI is normalised with the gateway's rules (``iap.domain.paths``): what is decided here
  is what the gateway would decide for the same request, and what fails there fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from iap.domain.paths import Target, normalise
from iap.errors import BadRequest

PATH = "/.iap/auth"
"""Header mode answers here; prefix mode below ``PATH + "/"``."""
RESERVED = "/.iap/"

URI_HEADERS = ("x-original-uri", "x-forwarded-uri", "x-original-url", "x-envoy-original-path")
METHOD_HEADERS = ("x-original-method", "x-forwarded-method")
HOST_HEADERS = ("x-forwarded-host", "x-original-host")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 §9.1: a token
HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
"""A ``Host`` value iap routes on: a name or bracketed IPv6 literal, and an optional port."""


@dataclass(frozen=True, slots=True)
class Sources:
    """The headers that carry the original request in header mode (lower-case names)."""

    uri: str = "x-original-uri"
    method: str = "x-original-method"
    host: str = "x-forwarded-host"


@dataclass(frozen=True, slots=True)
class Original:
    """The request the front proxy holds, as iap will judge it."""

    method: str
    host: str
    target: Target


def from_headers(headers: Iterable[tuple[str, str]], sources: Sources) -> Original:
    """Header mode: the original request from exactly the configured headers.

    Raises :class:`BadRequest` whose ``reason`` names the fact and the fault, e.g.
    ``forward_auth_uri_repeated``.
    """
    seen = _collect(headers, (sources.uri, sources.method, sources.host))
    uri = _one(seen, "uri", sources.uri, URI_HEADERS)
    method = _one(seen, "method", sources.method, METHOD_HEADERS)
    host = _one(seen, "host", sources.host, HOST_HEADERS)
    return _original(method, host, uri)


def from_path(
    suffix: str, *, method: str, host: str, headers: Iterable[tuple[str, str]]
) -> Original:
    """Prefix mode: ``suffix`` is the raw request target after ``/.iap/auth``.

    The original-URI headers are not read; one that is present with another value
    contradicts the path and is refused like a contradiction in header mode.
    """
    if not suffix.startswith("/"):
        raise BadRequest("forward-auth path without a leading /", reason="forward_auth_uri_invalid")
    seen = _collect(headers, ())
    for name in URI_HEADERS:
        if any(value and value != suffix for value in seen.get(name, ())):
            raise BadRequest(
                f"forward-auth: {name} contradicts the path", reason="forward_auth_uri_conflict"
            )
    return _original(method, host, suffix)


def _collect(headers: Iterable[tuple[str, str]], configured: Iterable[str]) -> dict[str, list[str]]:
    """Every value of every header that can name a fact of the original request."""
    wanted = frozenset((*URI_HEADERS, *METHOD_HEADERS, *HOST_HEADERS, *configured))
    seen: dict[str, list[str]] = {}
    for name, value in headers:
        folded = name.lower().replace("_", "-")
        if folded in wanted:
            seen.setdefault(folded, []).append(value.strip())
    return seen


def _one(seen: dict[str, list[str]], fact: str, name: str, family: tuple[str, ...]) -> str:
    values = seen.get(name, [])
    if len(values) > 1:
        raise BadRequest(f"forward-auth: {name} repeated", reason=f"forward_auth_{fact}_repeated")
    if not values or not values[0]:
        raise BadRequest(f"forward-auth: {name} missing", reason=f"forward_auth_{fact}_missing")
    value = values[0]
    for other in family:
        if other != name and any(v and v != value for v in seen.get(other, ())):
            raise BadRequest(
                f"forward-auth: {other} contradicts {name}", reason=f"forward_auth_{fact}_conflict"
            )
    return value


def _original(method: str, host: str, uri: str) -> Original:
    if not _METHOD.fullmatch(method):
        raise BadRequest("forward-auth: malformed method", reason="forward_auth_method_invalid")
    if not HOST.fullmatch(host):
        raise BadRequest("forward-auth: malformed host", reason="forward_auth_host_invalid")
    try:
        target = normalise(uri)
    except BadRequest as exc:
        raise BadRequest(f"forward-auth: {exc.detail}", reason="forward_auth_uri_invalid") from None
    if target.path.startswith(RESERVED):  # the gateway never routes these; nor is it asked
        raise BadRequest("forward-auth: a reserved path", reason="forward_auth_uri_reserved")
    return Original(method.upper(), host, target)
