"""iap behind a real nginx ``auth_request``, with the block that docs/forward-auth.md documents.

The nginx block is read from the doc (the fenced block after its ``tested:`` marker), so the
documented configuration is the tested one. nginx serves the test upstream itself and asks the
in-process iap's ``/.iap/auth`` about each request; each test checks what the client got and
what reached, or did not reach, the upstream. Needs Debian's ``nginx`` (skips without it, fails
under ``CI=true``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from iap.dev.idp import USERS
from tests.conftest import StartEdge, Upstream
from tests.support.nginx import Nginx, doc_block, nginx_binary, start_nginx
from tests.support.signin import SignInStack, Visitor, http, start_signin_stack

__all__ = ["http"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "forward-auth.md"
MARKER = "tests/integration/test_nginx_forward_auth.py"

# What most auth_request guides show: the three headers iap reads by default are set, nothing
# else is cleared, so a client's own X-Forwarded-Uri reaches iap. iap must not be steered by
# it even then (this is the set-up of the outside review's bypass).
MINIMAL_BLOCK = """\
location /.iap/auth {
    internal;
    proxy_pass http://IAP_ADDRESS/.iap/auth;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Forwarded-Host $host;
}

location / {
    auth_request /.iap/auth;
    proxy_pass http://UPSTREAM_ADDRESS;
}
"""


@dataclass
class Front:
    """nginx in front of the upstream, asking iap."""

    stack: SignInStack
    nginx: Nginx

    def visitor(
        self, http: aiohttp.ClientSession, cookies: dict[str, str] | None = None
    ) -> Visitor:
        """A client of nginx, holding ``cookies`` (e.g. a session got from iap directly)."""
        return Visitor(http, self.nginx.url, dict(cookies or {}))

    def last_audit(self) -> dict[str, Any]:
        return self.stack.edge.audit_lines()[-1]


def documented_block() -> str:
    block = doc_block(DOC, MARKER, "nginx")
    assert "IAP_ADDRESS" in block
    assert "UPSTREAM_ADDRESS" in block
    return block


def _address(url: str) -> str:
    return urlsplit(url).netloc


async def run_front(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, block: str
) -> AsyncIterator[Front]:
    nginx_binary()  # skip before starting anything when nginx is missing
    idp, edge = await start_signin_stack(
        upstream, start_edge, tmp_path, trusted_proxies=["127.0.0.0/8"]
    )
    try:
        server = block.replace("IAP_ADDRESS", _address(edge.url))
        server = server.replace("UPSTREAM_ADDRESS", _address(upstream.url))
        nginx = await start_nginx(tmp_path / "nginx", server)
        try:
            yield Front(SignInStack(idp, edge, upstream), nginx)
        finally:
            await nginx.stop()
    finally:
        await idp.stop()


@pytest.fixture
async def front(upstream: Upstream, start_edge: StartEdge, tmp_path: Path) -> AsyncIterator[Front]:
    async for running in run_front(upstream, start_edge, tmp_path, documented_block()):
        yield running


async def signed_in(front: Front, http: aiohttp.ClientSession, user: str) -> Visitor:
    """Sign in at iap directly, then come back through nginx with the session cookie."""
    direct = front.stack.visitor(http)
    answer = await direct.sign_in(user)
    assert answer.status == 302, answer
    return front.visitor(http, direct.cookies)


def alice_subject() -> str:
    return f"{USERS['alice'].tid}:{USERS['alice'].oid}"


async def test_anonymous_gets_401_and_a_browser_is_sent_to_sign_in(
    front: Front, http: aiohttp.ClientSession
) -> None:
    anonymous = front.visitor(http)
    answer = await anonymous.get("/app/secret", headers={"Accept": "application/json"})
    assert answer.status == 401
    challenges = [v for k, v in answer.headers if k.lower() == "www-authenticate"]
    assert challenges == ['Bearer realm="iap"']
    audit = front.last_audit()
    assert (audit["path"], audit["status"], audit["reason"]) == (
        "/app/secret",
        401,
        "unauthenticated",
    )

    browser = await anonymous.get("/app/secret?id=1", headers={"Accept": "text/html"})
    assert browser.status == 302
    assert browser.location == "/.iap/login?rd=/app/secret?id=1"
    # /.iap/ goes to iap: its login answer sends the browser on to the IdP
    login = await anonymous.get(browser.location, headers={"Accept": "text/html"})
    assert login.status == 302
    assert login.location.startswith(front.stack.idp.url + "/")
    assert not front.stack.upstream.seen.requests


@pytest.mark.parametrize(
    "added",
    [
        [("X-Forwarded-Uri", "/public/x")],
        [("X-Original-URI", "/public/x")],
        [("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/public/x")],
        [("X-Original-URI", "/public/x"), ("X-Original-URI", "/public/y")],
        [("X-Forwarded-Uri", "/"), ("X-Forwarded-Uri", "/public/x")],
        [("X-Original-URL", "/public/x"), ("X-Envoy-Original-Path", "/public/x")],
        [("X_Forwarded_Uri", "/public/x"), ("x_original_uri", "/public/x")],
        [("X-Forwarded-Method", "OPTIONS"), ("X-Original-Method", "OPTIONS")],
        [("X-Forwarded-Host", "evil.test"), ("X-Original-Host", "evil.test")],
    ],
)
async def test_original_request_headers_from_the_client_change_nothing(
    front: Front, http: aiohttp.ClientSession, added: list[tuple[str, str]]
) -> None:
    """nginx overwrites or clears every header iap could read the original request from, so
    iap judges ``/app/secret`` as nginx holds it: 401, never the client's public path."""
    headers: CIMultiDict[str] = CIMultiDict([("Accept", "application/json"), *added])
    answer = await front.visitor(http).get("/app/secret", headers=headers)
    assert answer.status == 401
    audit = front.last_audit()
    assert (audit["path"], audit["method"], audit["status"]) == ("/app/secret", "GET", 401)
    assert audit["reason"] == "unauthenticated"
    assert not front.stack.upstream.seen.requests


async def test_a_signed_in_user_reaches_the_upstream_with_iaps_identity_and_token_only(
    front: Front, http: aiohttp.ClientSession
) -> None:
    alice = await signed_in(front, http, "alice")
    forged = {
        "X-IAP-Subject": "attacker",
        "X-IAP-Email": "mallory@evil.test",
        "Authorization": "Bearer forged.by.client",
    }
    answer = await alice.get("/app/orders?id=1", headers=forged)
    assert answer.status == 200
    [seen] = front.stack.upstream.seen.requests
    assert seen.raw_path == "/app/orders?id=1"
    assert seen.headers.getall("X-IAP-Subject") == [alice_subject()]
    assert seen.headers.getall("X-IAP-Email") == [USERS["alice"].email]
    [authorization] = seen.headers.getall("Authorization")
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    assert token != "forged.by.client"
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    # the keys through nginx's /.iap/ location, i.e. what the application can fetch
    async with http.get(f"{front.nginx.url}/.iap/jwks.json") as keys_answer:
        assert keys_answer.status == 200
        keys = jwt.PyJWKSet.from_dict(await keys_answer.json())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience="app",
        issuer=f"{front.stack.edge.url}/.iap",
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
    )
    assert claims["sub"] == alice_subject()


async def test_a_denied_user_gets_403_and_a_public_path_passes_without_identity(
    front: Front, http: aiohttp.ClientSession
) -> None:
    bob = await signed_in(front, http, "bob")
    answer = await bob.get("/admin/panel")
    assert answer.status == 403
    assert (front.last_audit()["path"], front.last_audit()["reason"]) == (
        "/admin/panel",
        "no_rule_matched",
    )
    assert not front.stack.upstream.seen.requests

    forged = {"X-IAP-Subject": "attacker", "Authorization": "Bearer forged.by.client"}
    answer = await front.visitor(http).get("/public/page", headers=forged)
    assert answer.status == 200
    [seen] = front.stack.upstream.seen.requests
    assert seen.raw_path == "/public/page"
    assert "X-IAP-Subject" not in seen.headers
    assert "Authorization" not in seen.headers


async def test_clients_cannot_call_forward_auth_through_nginx(
    front: Front, http: aiohttp.ClientSession
) -> None:
    """The auth location is ``internal``: nginx, a trusted proxy, would otherwise relay a
    client's own checks, and the prefix form would hand the client a minted token."""
    alice = await signed_in(front, http, "alice")
    before = len(front.stack.edge.audit_lines())
    for path in ("/.iap/auth", "/.iap/auth/app/orders", "/.iap/%61uth/app/orders"):
        answer = await alice.get(path, headers={"X-Original-URI": "/app/orders"})
        assert answer.status == 404, path
        assert answer.header("Authorization") is None
    assert len(front.stack.edge.audit_lines()) == before  # iap was not asked
    assert not front.stack.upstream.seen.requests


async def test_a_request_body_reaches_the_upstream_and_not_iap(
    front: Front, http: aiohttp.ClientSession
) -> None:
    body = "x" * 200_000
    async with http.post(f"{front.nginx.url}/public/form", data=body) as answer:
        assert answer.status == 200
        echoed = await answer.json()
    assert (echoed["method"], echoed["body_bytes"]) == ("POST", len(body))
    await front.nginx.stop()  # every request finished and logged
    sent = {uri: (address, int(count)) for _, uri, _, address, count in front.nginx.access_log()}
    assert sent["/public/form"] == (_address(front.stack.upstream.url), sent["/public/form"][1])
    assert sent["/public/form"][1] > len(body)
    assert sent["/.iap/auth"][0] == _address(front.stack.edge.url)
    assert sent["/.iap/auth"][1] < 4096  # the subrequest's head only


async def test_behind_a_minimal_block_a_client_added_original_uri_is_refused(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The outside review's bypass: nginx passes the client's ``X-Forwarded-Uri`` along, and
    iap read it before nginx's ``X-Original-URI``, judged ``/`` (public) and answered 200, so
    nginx served ``/app/secret`` to an anonymous client. iap itself must refuse the
    contradiction (400, which nginx turns into 500); nothing reaches the upstream."""
    async for front in run_front(upstream, start_edge, tmp_path, MINIMAL_BLOCK):
        anonymous = front.visitor(http)
        answer = await anonymous.get("/app/secret", headers={"X-Forwarded-Uri": "/"})
        # 500: nginx's answer to any auth status but 2xx, 401 and 403
        assert (answer.status, len(upstream.seen.requests)) == (500, 0)
        audit = front.last_audit()
        assert (audit["status"], audit["reason"]) == (400, "forward_auth_uri_conflict")
        # without the client's header the same block works
        assert (await anonymous.get("/app/secret")).status == 401
        assert (await anonymous.get("/public/x")).status == 200
        assert [seen.raw_path for seen in upstream.seen.requests] == ["/public/x"]
