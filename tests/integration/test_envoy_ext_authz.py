"""iap as Envoy's ext_authz HTTP service, with ``http_service.path_prefix: /.iap/auth``.

Envoy cannot run here, so its check request is written out byte for byte and sent over a raw
socket to the in-process iap. The shape follows Envoy's documentation and source:

- ``HttpService.path_prefix`` "sets a prefix to the value of authorization request header
  Path", and ``ExtAuthz.allowed_headers`` / ``AuthorizationRequest.allowed_headers``: besides
  the configured matchers, ``Host``, ``Method``, ``Path``, ``Content-Length`` and
  ``Authorization`` are always included; ``Content-Length`` is 0 and there is no body unless
  ``with_request_body`` is set (api/envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto,
  https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_authz/v3/ext_authz.proto).
- ``RawHttpClientImpl::check`` builds the headers: ``content-length: 0`` first, then the
  original request's headers that match (``:method`` kept, ``:path`` = prefix + original path
  and query, ``:authority`` kept)
  (source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc).
- Envoy's async client marks the request ``x-envoy-internal: true`` and appends its own address
  to ``x-forwarded-for`` (``AsyncStreamImpl::sendHeaders``,
  source/common/http/async_client_impl.cc), and its router adds
  ``x-envoy-expected-rq-timeout-ms`` (the service timeout, 200 ms by default).
- The HTTP/1.1 codec writes ``:authority`` as ``host`` and every name in lower case.

The Envoy configuration this stands for is the one in docs/forward-auth.md (``allowed_headers``:
``cookie`` and ``x-forwarded-for``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from iap.dev.idp import USERS
from tests.conftest import StartEdge, Upstream
from tests.support.signin import SignInStack, http, start_signin_stack

__all__ = ["http"]

PREFIX = "/.iap/auth"
ORIGINAL_HOST = "edge.test"  # the original :authority, kept by Envoy
CLIENT = "203.0.113.7"  # the client, in the original request's x-forwarded-for
ENVOY = "10.0.0.2"  # Envoy's own address, which its async client appends
# Envoy is a trusted proxy; the client's address comes from x-forwarded-for
TRUSTED = ["127.0.0.0/8", "10.0.0.0/8"]
FORMS = {  # POST-only and admin-only; any other method falls through to the public route
    "name": "forms",
    "match": {"path_prefix": "/forms/", "methods": ["POST"]},
    "policy": {"allow": {"roles": ["admin"]}},
}


def check_request(
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    authorization: str | None = None,
    allowed: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Envoy's check request for the original ``method path``; ``allowed`` are further
    original headers that ``allowed_headers`` lets through."""
    lines = [f"{method} {PREFIX}{path} HTTP/1.1", f"host: {ORIGINAL_HOST}", "content-length: 0"]
    if authorization is not None:
        lines.append(f"authorization: {authorization}")
    if cookie is not None:
        lines.append(f"cookie: {cookie}")
    lines += [f"{name}: {value}" for name, value in allowed]
    lines += [
        f"x-forwarded-for: {CLIENT},{ENVOY}",
        "x-envoy-internal: true",
        "x-envoy-expected-rq-timeout-ms: 200",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


async def send(port: int, request: bytes) -> Answer:
    """One check over a keep-alive connection, as Envoy's HTTP/1.1 client sends it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(30):  # a hang guard, not a performance bound
            writer.write(request)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = head.removesuffix("\r\n\r\n").split("\r\n")
            headers = [
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)
            ]
            answer = Answer(int(status_line.split(" ")[1]), headers, b"")
            [length] = answer.all("Content-Length") or ["0"]
            answer.body = await reader.readexactly(int(length))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answer


@pytest.fixture
async def stack(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    forms = {**FORMS, "upstream": upstream.url}
    idp, edge = await start_signin_stack(
        upstream, start_edge, tmp_path, trusted_proxies=TRUSTED, extra_routes=[forms]
    )
    yield SignInStack(idp, edge, upstream)
    await idp.stop()


async def check(stack: SignInStack, *args: Any, **kwargs: Any) -> tuple[Answer, dict[str, Any]]:
    """Send a check; return iap's answer and its audit line."""
    answer = await send(stack.edge.port, check_request(*args, **kwargs))
    return answer, stack.edge.audit_lines()[-1]


async def alice_cookie(stack: SignInStack, http: aiohttp.ClientSession) -> str:
    visitor = stack.visitor(http)
    assert (await visitor.sign_in("alice")).status == 302
    return "; ".join(f"{name}={value}" for name, value in visitor.cookies.items())


async def verified_claims(
    stack: SignInStack, http: aiohttp.ClientSession, answer: Answer, audience: str
) -> dict[str, Any]:
    [authorization] = answer.all("Authorization")
    token = authorization.removeprefix("Bearer ")
    async with http.get(f"{stack.edge.url}/.iap/jwks.json") as keys_answer:
        keys = jwt.PyJWKSet.from_dict(await keys_answer.json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience,
        issuer=f"{stack.edge.url}/.iap",
    )  # fmt: skip
    return claims


def alice_subject() -> str:
    return f"{USERS['alice'].tid}:{USERS['alice'].oid}"


async def test_an_anonymous_check_is_401(stack: SignInStack) -> None:
    answer, audit = await check(stack, "GET", "/app/secret?id=1")
    assert answer.status == 401
    assert answer.all("WWW-Authenticate") == ['Bearer realm="iap"']
    assert (audit["method"], audit["path"], audit["reason"]) == (
        "GET",
        "/app/secret",
        "unauthenticated",
    )
    assert audit["client_ip"] == CLIENT
    assert not stack.upstream.seen.requests


async def test_a_session_cookie_is_200_with_identity_and_token(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    cookie = await alice_cookie(stack, http)
    answer, audit = await check(stack, "GET", "/app/orders?id=1", cookie=cookie)
    assert answer.status == 200
    assert answer.all("X-IAP-Subject") == [alice_subject()]
    assert answer.all("X-IAP-Email") == [USERS["alice"].email]
    assert answer.all("X-IAP-Roles") == ["admin"]
    claims = await verified_claims(stack, http, answer, "app")
    assert claims["sub"] == alice_subject()
    assert (audit["path"], audit["route"], audit["authn_method"]) == (
        "/app/orders",
        "app",
        "session",
    )
    assert not stack.upstream.seen.requests


async def test_the_original_method_is_decided_on(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """``/forms/`` is a POST-only admin route: a POST check is judged by it, a GET check
    falls through to the public route, as the gateway would route the same requests."""
    answer, audit = await check(stack, "POST", "/forms/submit")
    assert (answer.status, audit["method"], audit["route"]) == (401, "POST", "forms")
    answer, audit = await check(stack, "GET", "/forms/submit")
    assert (answer.status, audit["method"], audit["route"]) == (200, "GET", "public")
    cookie = await alice_cookie(stack, http)
    answer, audit = await check(stack, "POST", "/forms/submit", cookie=cookie)
    assert (answer.status, audit["method"], audit["route"]) == (200, "POST", "forms")
    assert (await verified_claims(stack, http, answer, "forms"))["sub"] == alice_subject()
    assert not stack.upstream.seen.requests


async def test_a_client_original_uri_header_does_not_make_a_check_pass(
    stack: SignInStack,
) -> None:
    """With a wider ``allowed_headers`` (say ``prefix: x-``) the client's own headers reach
    iap; one naming another URI than the path Envoy asks about is a contradiction."""
    for name in ("x-original-uri", "x-forwarded-uri", "x-envoy-original-path"):
        answer, audit = await check(stack, "GET", "/app/secret", allowed=((name, "/public/x"),))
        assert (answer.status, audit["reason"]) == (400, "forward_auth_uri_conflict"), name
    assert not stack.upstream.seen.requests


async def test_the_path_after_the_prefix_is_normalised_and_ambiguity_refused(
    stack: SignInStack,
) -> None:
    answer, audit = await check(stack, "GET", "/app/%2e%2e/public")
    assert (answer.status, audit["path"], audit["route"]) == (200, "/public", "public")
    answer, audit = await check(stack, "GET", "/app/..%2fpublic")
    assert (answer.status, audit["reason"]) == (400, "forward_auth_uri_invalid")
    answer, audit = await check(stack, "GET", "/public/%2e%2e/app/x")
    assert (answer.status, audit["path"]) == (401, "/app/x")
    assert not stack.upstream.seen.requests
