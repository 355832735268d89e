"""``/.iap/auth``: forward-auth for nginx ``auth_request``, Traefik and Envoy ext_authz
(SPEC §3, §5.1), over real sockets against the dev IdP.

Each refusal is checked for its status and its audit reason, and each pass for the identity
it hands the front proxy. The front proxies themselves run in test_nginx_forward_auth.py and
test_envoy_ext_authz.py; here the proxy's request is written by hand, hostile ones included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from iap import config
from iap.dev.idp import USERS
from iap.domain.paths import normalise
from iap.errors import BadRequest
from tests.conftest import StartEdge, Upstream
from tests.support.http import raw_request, request_head
from tests.support.signin import (
    SignInStack,
    Visitor,
    http,
    running_stack,
    signin_config,
)

__all__ = ["http"]

NGINX = {"X-Original-Method": "GET", "X-Forwarded-Host": "127.0.0.1"}


@pytest.fixture
async def stack(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    async with running_stack(
        upstream, start_edge, tmp_path, trusted_proxies=["127.0.0.0/8"]
    ) as running:
        yield running


@pytest.fixture
def visitor(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)


async def auth(
    visitor: Visitor, uri: str | None, *extra: tuple[str, str], **headers: str
) -> tuple[int, CIMultiDict[str]]:
    """``GET /.iap/auth`` as nginx sends it: ``X-Original-URI`` and friends."""
    sent: CIMultiDict[str] = CIMultiDict({**NGINX, **headers})
    if uri is not None:
        sent["X-Original-URI"] = uri
    for name, value in extra:
        sent.add(name, value)
    answer = await visitor.get("/.iap/auth", headers=sent)
    return answer.status, CIMultiDict(answer.headers)


def last_reason(stack: SignInStack) -> str:
    return str(stack.edge.audit_lines()[-1]["reason"])


async def test_a_signed_in_user_gets_200_with_identity_and_token(
    stack: SignInStack, visitor: Visitor
) -> None:
    await visitor.sign_in("alice")
    status, headers = await auth(visitor, "/app/orders?id=1")
    assert status == 200
    alice = USERS["alice"]
    assert headers["X-IAP-Subject"] == f"{alice.tid}:{alice.oid}"
    token = headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "app"
    assert not stack.upstream.seen.requests  # forward-auth never forwards


async def test_anonymous_gets_401_even_as_a_browser_and_a_denied_user_403(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    """A front proxy treats anything but 2xx, 401 and 403 as an error: no redirect here."""
    anonymous = stack.visitor(http)
    assert (await auth(anonymous, "/app/x", Accept="text/html"))[0] == 401
    assert last_reason(stack) == "unauthenticated"
    await visitor.sign_in("bob")
    assert (await auth(visitor, "/admin/panel"))[0] == 403
    assert last_reason(stack) == "no_rule_matched"
    assert (await auth(anonymous, "/public/page"))[0] == 200
    assert not stack.upstream.seen.requests


async def test_an_untrusted_peer_is_refused_whatever_it_asks(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """From a peer outside ``trusted_proxies`` even a signed-in user's allowed request, and
    a public one, get 403: only a trusted proxy may say what the original request was."""
    async with running_stack(upstream, start_edge, tmp_path, trusted_proxies=[]) as stack:
        visitor = stack.visitor(http)
        await visitor.sign_in("alice")
        for uri in ("/app/orders", "/public/page"):
            assert (await auth(visitor, uri))[0] == 403
            assert last_reason(stack) == "untrusted_peer"
        answer = await visitor.get("/.iap/auth/app/orders")
        assert (answer.status, last_reason(stack)) == (403, "untrusted_peer")


async def test_the_original_uri_is_read_from_the_configured_header_only(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    """The bypass of the outside review: nginx passes the client's own ``X-Forwarded-Uri``
    along; iap read it first and judged ``/public`` for a request to ``/app/secret``."""
    anonymous = stack.visitor(http)
    status, _ = await auth(anonymous, "/app/secret", ("X-Forwarded-Uri", "/public/x"))
    assert (status, last_reason(stack)) == (400, "forward_auth_uri_conflict")
    for name in ("X-Original-URL", "X-Envoy-Original-Path"):
        status, _ = await auth(anonymous, "/app/secret", (name, "/public/x"))
        assert (status, last_reason(stack)) == (400, "forward_auth_uri_conflict")
    # The same value twice is no contradiction, and decides as the configured header says.
    assert (await auth(anonymous, "/app/secret", ("X-Forwarded-Uri", "/app/secret")))[0] == 401


@pytest.mark.parametrize(
    ("uri", "extra", "reason"),
    [
        (None, (), "forward_auth_uri_missing"),
        ("", (), "forward_auth_uri_missing"),
        ("/public/x", (("X-Original-URI", "/app/secret"),), "forward_auth_uri_repeated"),
        ("/public/x", (("X-Original-URI", "/public/x"),), "forward_auth_uri_repeated"),
        ("public/x", (), "forward_auth_uri_invalid"),
        ("/app/..%2fpublic", (), "forward_auth_uri_invalid"),
        ("/public/\\x", (), "forward_auth_uri_invalid"),
        ("/public/x", (("X-Forwarded-Method", "POST"),), "forward_auth_method_conflict"),
        ("/.iap/auth", (), "forward_auth_uri_reserved"),  # never routed: not judged either
        ("/.iap/%61uth", (), "forward_auth_uri_reserved"),
        ("/public/x", (("X-Original-Method", "GET"),), "forward_auth_method_repeated"),
        ("/public/x", (("X-Original-Host", "evil.test"),), "forward_auth_host_conflict"),
    ],
)
async def test_missing_empty_repeated_or_contradicted_input_is_400(
    stack: SignInStack,
    http: aiohttp.ClientSession,
    uri: str | None,
    extra: tuple[tuple[str, str], ...],
    reason: str,
) -> None:
    """Never a default: judging ``/`` for a missing URI passes any path behind a public root
    route, which is the catch-all here."""
    assert (await auth(stack.visitor(http), uri, *extra))[0] == 400
    assert last_reason(stack) == reason
    assert not stack.upstream.seen.requests


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("X-Original-Method", "", "forward_auth_method_missing"),
        ("X-Original-Method", "GET POST", "forward_auth_method_invalid"),
        ("X-Forwarded-Host", "", "forward_auth_host_missing"),
        ("X-Forwarded-Host", "evil.test/x", "forward_auth_host_invalid"),
    ],
)
async def test_the_method_and_host_follow_the_same_rules(
    stack: SignInStack, http: aiohttp.ClientSession, header: str, value: str, reason: str
) -> None:
    assert (await auth(stack.visitor(http), "/public/x", **{header: value}))[0] == 400
    assert last_reason(stack) == reason


async def test_the_decision_is_on_the_forwarded_uri_not_the_request_path(
    stack: SignInStack, visitor: Visitor
) -> None:
    """A public route must not be inferred from ``/.iap/auth`` itself, and an ambiguous
    forwarded URI is refused rather than guessed."""
    assert (await auth(visitor, "/public/%2e%2e/app/x"))[0] == 401  # decided as /app/x
    assert (await auth(visitor, "/app/%2e%2e/public"))[0] == 200  # decided as /public


async def test_the_original_method_decides_method_bound_routes(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    reports = {
        "name": "reports",
        "upstream": upstream.url,
        "match": {"path_prefix": "/reports/", "methods": ["GET"]},
        "policy": {"public": True},
    }
    async with running_stack(
        upstream, start_edge, tmp_path, trusted_proxies=["127.0.0.0/8"], extra_routes=[reports]
    ) as stack:
        anonymous = stack.visitor(http)
        assert (await auth(anonymous, "/reports/q"))[0] == 200
        # POST falls through to the catch-all public route, the same as the gateway routes it
        assert (await auth(anonymous, "/reports/q", **{"X-Original-Method": "POST"}))[0] == 200
        assert stack.edge.audit_lines()[-1]["route"] == "public"


async def test_traefik_headers_when_configured(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """``forward_auth`` names Traefik's headers: those are read, nginx's contradict them."""
    traefik = {
        "uri_header": "X-Forwarded-Uri",
        "method_header": "X-Forwarded-Method",
        "host_header": "X-Forwarded-Host",
    }
    async with running_stack(
        upstream, start_edge, tmp_path, trusted_proxies=["127.0.0.0/8"], forward_auth=traefik
    ) as stack:
        anonymous = stack.visitor(http)
        sent = {"X-Forwarded-Method": "GET", "X-Forwarded-Host": "127.0.0.1"}
        answer = await anonymous.get("/.iap/auth", headers={**sent, "X-Forwarded-Uri": "/app/x"})
        assert answer.status == 401
        answer = await anonymous.get(
            "/.iap/auth", headers={**sent, "X-Forwarded-Uri": "/app/x", "X-Original-URI": "/"}
        )
        assert (answer.status, last_reason(stack)) == (400, "forward_auth_uri_conflict")
        answer = await anonymous.get("/.iap/auth", headers={**sent, "X-Original-URI": "/app/x"})
        assert (answer.status, last_reason(stack)) == (400, "forward_auth_uri_missing")


async def test_envoy_prefix_mode_takes_the_path_from_the_request_line(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    anonymous = stack.visitor(http)
    assert (await anonymous.get("/.iap/auth/app/x?y=1")).status == 401
    assert (await anonymous.request("POST", "/.iap/auth/public/form")).status == 200
    assert (await anonymous.get("/.iap/auth/app/%2e%2e/public")).status == 200
    # a dot segment cannot climb out of the prefix into a proxied path (sent raw: an HTTP
    # client library would resolve it first)
    answer = await raw_request(stack.edge.port, request_head("/.iap/auth/../../app/x"))
    assert (answer.status, stack.edge.audit_lines()[-1]["path"]) == (401, "/app/x")
    assert not stack.upstream.seen.requests
    answer = await anonymous.get("/.iap/auth/app/..%2fpublic")
    assert (answer.status, last_reason(stack)) == (400, "forward_auth_uri_invalid")
    answer = await anonymous.get("/.iap/auth/app/x", headers={"X-Original-URI": "/public/x"})
    assert (answer.status, last_reason(stack)) == (400, "forward_auth_uri_conflict")
    await visitor.sign_in("alice")
    answer = await visitor.request("DELETE", "/.iap/auth/app/orders/1")
    assert answer.status == 200
    assert answer.header("X-IAP-Subject") == f"{USERS['alice'].tid}:{USERS['alice'].oid}"
    assert stack.edge.audit_lines()[-1]["method"] == "DELETE"
    # header mode audits the method it judged too, not the subrequest's GET
    assert (await auth(visitor, "/app/x", **{"X-Original-Method": "PUT"}))[0] == 200
    assert stack.edge.audit_lines()[-1]["method"] == "PUT"


# --- property: a 2xx only for a well-formed request the policy lets pass ------------------

FAMILY = ["X-Original-URI", "X-Forwarded-Uri", "X-Original-URL", "X-Envoy-Original-Path",
          "X-Original-Method", "X-Forwarded-Method", "X-Forwarded-Host", "X-Original-Host",
          "x_original_uri", "X-Other"]  # fmt: skip
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
VALUES = st.sampled_from(
    ["", "/", "/public/x", "/app/secret", "/admin/", "/public/../app/x", "/app/%2e%2e/public",
     "/app/..%2fpublic", "public", "GET", "POST", "127.0.0.1", "evil.test", " /public/x"]
) | st.text(alphabet=PRINTABLE, max_size=12)  # fmt: skip


def mostly(value: str, *others: str) -> st.SearchStrategy[str]:
    return st.sampled_from([value] * 4 + list(others))


def present(name: str, *others: str) -> st.SearchStrategy[str | None]:
    return st.sampled_from([name] * 4 + [*others, None])  # type: ignore[list-item]


NGINX_SET = st.tuples(
    present("X-Original-URI", "x_original_uri"),
    VALUES,
    present("X-Original-Method"),
    mostly("GET", "POST", "get", "G ET", ""),
    present("X-Forwarded-Host"),
    mostly("127.0.0.1", "evil.test", "", "a/b"),
).map(lambda t: [(name, value) for name, value in zip(t[::2], t[1::2], strict=True) if name])
NGINX_METHOD_HOST = [("X-Original-Method", "GET"), ("X-Forwarded-Host", "127.0.0.1")]
# What nginx sets, each part perhaps missing, and whatever else the client added around it
HEADERS = st.tuples(NGINX_SET, st.lists(st.tuples(st.sampled_from(FAMILY), VALUES), max_size=4))


def passes(headers: list[tuple[str, str]]) -> bool:
    """What may pass, read independently of iap's header code: the three nginx headers once
    each, not empty, nothing else of their kind saying otherwise, and a URI that the
    gateway's path rules place outside the protected routes."""
    folded = [(name.lower().replace("_", "-"), value.strip()) for name, value in headers]
    kinds = {
        "x-original-uri": ("x-forwarded-uri", "x-original-url", "x-envoy-original-path"),
        "x-original-method": ("x-forwarded-method",),
        "x-forwarded-host": ("x-original-host",),
    }
    chosen = {}
    for name, others in kinds.items():
        values = [value for key, value in folded if key == name]
        if len(values) != 1 or not values[0]:
            return False
        if any(value and value != values[0] for key, value in folded if key in others):
            return False
        chosen[name] = values[0]
    try:
        path = normalise(chosen["x-original-uri"]).path
    except BadRequest:
        return False
    return not path.startswith(("/app/", "/admin/"))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one stack, many examples
)
@example(parts=(NGINX_METHOD_HOST, [("X-Forwarded-Uri", "/public/x")]))  # the bypass
@example(parts=([("X-Original-URI", "/app/s"), *NGINX_METHOD_HOST], [("X-Forwarded-Uri", "/")]))
@example(parts=(NGINX_METHOD_HOST, []))  # missing: once judged as "/"
@example(parts=([("X-Original-URI", ""), *NGINX_METHOD_HOST], []))
@given(parts=HEADERS)
async def test_random_forward_auth_headers_never_pass_what_they_should_not(
    stack: SignInStack,
    http: aiohttp.ClientSession,
    parts: tuple[list[tuple[str, str]], list[tuple[str, str]]],
) -> None:
    """An anonymous caller: only the public route can answer 2xx, and only when the request
    was stated once and consistently. Never a 5xx."""
    headers = [*parts[0], *parts[1]]
    sent: CIMultiDict[str] = CIMultiDict(headers)
    answer = await stack.visitor(http).get("/.iap/auth", headers=sent)
    assert answer.status in (200, 400, 401, 403), (headers, answer.status)
    if answer.status == 200:
        assert passes(headers), headers


async def test_an_unexpected_error_while_authenticating_is_refused_and_counted(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Fault injection: the session check itself fails. The caller is treated as one
    without credentials (302 or 401; 401 with a bearer token), never 500, never forwarded,
    and ``iap_authn_internal_errors_total`` counts it."""
    await visitor.sign_in("alice")
    signin = stack.edge.edge.signin
    assert signin is not None

    async def broken(request: object) -> None:
        raise RuntimeError("a bug in the session check")

    monkeypatch.setattr(signin, "authenticate", broken)
    registry = stack.edge.edge.metrics.registry
    browser = await visitor.get("/app/x", headers={"Accept": "text/html"})
    assert browser.status == 302
    assert browser.location.startswith("/.iap/login?rd=")
    api = await visitor.get("/app/x")
    assert (api.status, stack.edge.audit_lines()[-1]["reason"]) == (401, "authn_internal_error")
    bearer = await visitor.get("/app/x", headers={"Authorization": "Bearer x.y.z"})
    assert bearer.status == 401
    assert 'error="invalid_token"' in (bearer.header("WWW-Authenticate") or "")
    status, _ = await auth(visitor, "/app/x")
    assert status == 401
    assert not stack.upstream.seen.requests
    assert registry.get_sample_value("iap_authn_internal_errors_total") == 4


async def test_a_reload_applies_new_forward_auth_headers(
    stack: SignInStack, http: aiohttp.ClientSession, upstream: Upstream, tmp_path: Path
) -> None:
    """SIGHUP builds a new gateway: the new headers are read at once, the old ones no more."""
    document = signin_config(
        upstream.url, stack.idp, stack.edge.port, tmp_path, trusted_proxies=["127.0.0.0/8"]
    )
    document["forward_auth"] = {
        "uri_header": "X-Forwarded-Uri",
        "method_header": "X-Forwarded-Method",
        "host_header": "X-Forwarded-Host",
    }
    old = stack.edge.edge.reload(config.parse(document))
    await old.close()
    anonymous = stack.visitor(http)
    assert (await auth(anonymous, "/public/x"))[0] == 400  # X-Original-URI is no longer read
    assert last_reason(stack) == "forward_auth_uri_missing"
    sent = {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"}
    nginx = {**NGINX, "X-Original-Method": "POST"}
    assert (await anonymous.get("/.iap/auth", headers={**nginx, **sent})).status == 400
    assert last_reason(stack) == "forward_auth_method_conflict"  # nginx's name, another value
    sent["X-Forwarded-Host"] = "127.0.0.1"
    assert (await anonymous.get("/.iap/auth", headers=sent)).status == 200
