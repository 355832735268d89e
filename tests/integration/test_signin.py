"""Sign-in end to end over real sockets: dev IdP, iap and the test upstream (issue 3).

Every test runs twice, with the cookie store and with the Redis store (a real redis-server
on a free port): one suite for both implementations of ``session.store``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import trustme

from iap import config
from iap.dev.idp import STAFF_GROUP_ID, TENANT_A, USERS, Directory, start_dev_idp
from iap.domain.sealing import COOKIE_LIMIT
from iap.errors import ConfigError
from tests.conftest import RunningReceiver, StartEdge, Upstream, free_port
from tests.support.signin import (
    CLIENT_SECRET,
    SignInStack,
    Visitor,
    http,
    running_stack,
    signin_config,
)
from tests.support.signin_stores import redis_session_store, stack, visitor

__all__ = ["http", "stack", "visitor"]

HTML = {"Accept": "text/html"}
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
CALLBACK = "/.iap/callback"


def alice_subject() -> str:
    alice = USERS["alice"]
    return f"{alice.tid}:{alice.oid}"


async def test_anonymous_browser_is_sent_to_login_with_rd(
    visitor: Visitor, stack: SignInStack
) -> None:
    answer = await visitor.get("/app/page?x=1", headers=HTML)
    assert answer.status == 302
    assert answer.location == "/.iap/login?rd=%2Fapp%2Fpage%3Fx%3D1"
    assert answer.header("Cache-Control") == "no-store"
    assert not stack.upstream.seen.requests
    [line] = await stack.edge.wait_audit_lines(1)
    assert (line["status"], line["decision"], line["reason"]) == (302, "deny", "unauthenticated")


async def test_anonymous_api_caller_gets_401_json(visitor: Visitor, stack: SignInStack) -> None:
    answer = await visitor.get("/app/data", headers={"Accept": "application/json"})
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Bearer realm="iap"'
    assert json.loads(answer.body)["error"] == "unauthenticated"
    assert not stack.upstream.seen.requests
    [line] = await stack.edge.wait_audit_lines(1)
    assert (line["status"], line["decision"], line["reason"]) == (401, "deny", "unauthenticated")


async def test_login_redirects_to_the_idp_with_pkce(visitor: Visitor, stack: SignInStack) -> None:
    answer = await visitor.get("/.iap/login?rd=/app/x", headers=HTML)
    assert answer.status == 302
    target = urlsplit(answer.location)
    assert f"{target.scheme}://{target.netloc}" == stack.idp.url
    assert target.path == "/organizations/oauth2/v2.0/authorize"
    query = parse_qs(target.query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [f"{stack.edge.url}/.iap/callback"]
    assert len(query["state"][0]) == 43
    assert len(query["nonce"][0]) == 43
    [cookie] = answer.set_cookies
    assert cookie.startswith("__Host-iap-login=")
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


async def test_alice_signs_in_and_reaches_the_upstream(
    visitor: Visitor, stack: SignInStack
) -> None:
    answer = await visitor.sign_in("alice", rd="/app/page?x=1")
    assert answer.status == 302
    assert answer.location == "/app/page?x=1"
    assert "__Host-iap" in visitor.cookies
    assert "__Host-iap-login" not in visitor.cookies  # the only pending login was spent
    for cookie in answer.set_cookies:
        if cookie.startswith("__Host-iap="):
            assert "; Path=/; Secure; HttpOnly; SameSite=Lax" in cookie
            assert "Domain" not in cookie

    visitor.cookies["theme"] = "dark"
    page = await visitor.get("/app/page?x=1")
    assert page.status == 200
    seen = stack.upstream.seen.last
    assert seen.headers["X-IAP-Subject"] == alice_subject()
    assert seen.headers["X-IAP-Roles"] == "admin"
    assert seen.headers["Cookie"] == "theme=dark"  # iap's own cookies never go upstream

    lines = await stack.edge.wait_audit_lines(len(stack.edge.audit_lines()))
    last = lines[-1]
    assert last["authn_method"] == "session"
    assert last["subject"] == alice_subject()
    assert last["tenant"] == TENANT_A
    assert last["decision"] == "allow"


async def test_userinfo_shows_the_identity_and_never_a_token(visitor: Visitor) -> None:
    assert (await visitor.get("/.iap/userinfo")).status == 401
    await visitor.sign_in("alice")
    answer = await visitor.get("/.iap/userinfo")
    assert answer.status == 200
    assert answer.header("Cache-Control") == "no-store"
    body = json.loads(answer.body)
    alice = USERS["alice"]
    assert body["sub"] == alice_subject()
    assert (body["tid"], body["oid"], body["email"]) == (alice.tid, alice.oid, alice.email)
    assert body["roles"] == ["admin"]
    text = answer.body.decode()
    assert "eyJ" not in text  # no JWT of any kind
    assert "token" not in text


async def test_policy_denies_with_403_and_never_forwards(
    visitor: Visitor, stack: SignInStack
) -> None:
    await visitor.sign_in("bob")
    answer = await visitor.get("/admin/panel", headers=HTML)
    assert answer.status == 403
    assert b"Your account does not have access to this page." in answer.body
    assert not stack.upstream.seen.requests
    assert (await visitor.get("/app/ok")).status == 200


@pytest.mark.parametrize("method", ["OPTIONS", "HEAD", "POST", "DELETE"])
async def test_no_method_is_forwarded_before_the_policy_decided(
    visitor: Visitor, stack: SignInStack, method: str
) -> None:
    """A CORS preflight (OPTIONS) or a HEAD is judged like a GET: an anonymous caller gets
    401 and a signed-in one without the role 403, and neither reaches the upstream."""
    anonymous = await visitor.request(method, "/app/data", headers={"Accept": "application/json"})
    assert anonymous.status == 401
    await visitor.sign_in("bob")
    assert (await visitor.request(method, "/admin/panel")).status == 403
    assert not stack.upstream.seen.requests
    assert (await visitor.request(method, "/app/data")).status == 200
    assert [r.method for r in stack.upstream.seen.requests] == [method]


async def test_logout_ends_the_session_here_and_at_the_idp(
    visitor: Visitor, stack: SignInStack
) -> None:
    await visitor.sign_in("alice")
    stolen = dict(visitor.cookies)
    answer = await visitor.get("/.iap/logout")
    assert answer.status == 302
    target = urlsplit(answer.location)
    assert target.path == "/organizations/oauth2/v2.0/logout"
    query = parse_qs(target.query)
    assert query["post_logout_redirect_uri"] == [f"{stack.edge.url}/.iap/signed-out"]
    assert query["id_token_hint"][0].startswith("eyJ")
    assert "__Host-iap" not in visitor.cookies  # cleared by Max-Age=0

    at_idp = await visitor.get(answer.location)
    assert at_idp.status == 302
    assert at_idp.location == f"{stack.edge.url}/.iap/signed-out"
    assert stack.idp.idp.logouts  # the IdP saw the hint's sid

    assert (await visitor.get("/app/x", headers=HTML)).location.startswith("/.iap/login")
    visitor.cookies = stolen  # a copy of the cookie taken before logout no longer works
    assert (await visitor.get("/app/x", headers=HTML)).status == 302


async def test_frontchannel_logout_ends_every_session_of_the_sid(
    visitor: Visitor, stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    await visitor.sign_in("alice")
    [grant] = stack.idp.idp.refresh_tokens.values()
    answer = await stack.visitor(http).get(f"/.iap/frontchannel-logout?sid={grant.sid}")
    assert answer.status == 200
    assert (await visitor.get("/app/x", headers=HTML)).status == 302


async def test_frontchannel_logout_needs_a_sid(visitor: Visitor) -> None:
    assert (await visitor.get("/.iap/frontchannel-logout")).status == 400
    assert (await visitor.get("/.iap/frontchannel-logout?sid=a%0db")).status == 400


async def test_150_groups_sign_in_with_every_cookie_under_4096_bytes(
    visitor: Visitor, stack: SignInStack
) -> None:
    answer = await visitor.sign_in("olivia")
    assert answer.status == 302
    assert stack.idp.idp.graph_calls == 1
    assert all(len(cookie) < COOKIE_LIMIT for cookie in answer.set_cookies)
    body = json.loads((await visitor.get("/.iap/userinfo")).body)
    assert len(body["groups"]) == len(USERS["olivia"].groups) == 150
    assert (await visitor.get("/app/x")).status == 200


async def test_two_concurrent_requests_refresh_once(
    visitor: Visitor, stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    idp = stack.idp.idp
    idp.access_token_ttl = 60  # under the refresh margin: the session is due at once
    idp.refresh_delay = 0.2  # the IdP answers slowly, so both requests overlap
    await visitor.sign_in("alice")
    twin = stack.visitor(http)
    twin.cookies = dict(visitor.cookies)
    first, second = await asyncio.gather(visitor.get("/app/a"), twin.get("/app/b"))
    assert (first.status, second.status) == (200, 200)
    assert idp.refresh_grants == 1
    assert any(c.startswith("__Host-iap=") for c in first.set_cookies)


async def test_replicas_sharing_redis_refresh_a_session_once(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SPEC §9: the refresh lock lives in Redis, so two replicas refresh a session once."""
    async with (
        redis_session_store() as shared,
        running_stack(upstream, start_edge, tmp_path, **shared) as running,
    ):
        idp, first = running.idp, running.edge
        # Same directory, so the same session keys; another port.
        second = await start_edge(signin_config(upstream.url, idp, free_port(), tmp_path, **shared))
        idp.idp.access_token_ttl = 60
        idp.idp.refresh_delay = 0.2
        alice = Visitor(http, first.url)
        await alice.sign_in("alice")
        # The session is due at once; its refresh brings an hour's tokens, which the replica
        # that lost the lock may share (an outcome already due again is never shared).
        idp.idp.access_token_ttl = 3600
        twin = Visitor(http, second.url, dict(alice.cookies))
        answers = await asyncio.gather(alice.get("/app/a"), twin.get("/app/b"))
        assert [a.status for a in answers] == [200, 200]
        assert idp.idp.refresh_grants == 1


async def test_client_certificate_authenticates_iap_at_the_token_endpoint(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """``oidc.client_certificate``: private_key_jwt (PS256, x5t#S256), no secret sent."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("iap-client.example", key_type=trustme.KeyType.RSA)
    cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
    cert_file.write_bytes(leaf.cert_chain_pems[0].bytes())
    key_file.write_bytes(leaf.private_key_pem.bytes())
    oidc = {
        "client_secret_file": None,
        "client_certificate": {"cert_file": str(cert_file), "key_file": str(key_file)},
    }
    certificate_pem = leaf.cert_chain_pems[0].bytes()
    async with running_stack(
        upstream, start_edge, tmp_path, client_certificate_pem=certificate_pem, oidc=oidc
    ) as running:
        idp, visitor = running.idp, running.visitor(http)
        assert (await visitor.sign_in("alice")).status == 302
        assert idp.idp.client_assertions == 1
        assert (await visitor.get("/app/x")).status == 200


async def test_idp_calls_are_client_spans_and_carry_no_trace_context(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    otlp_receiver: RunningReceiver,
) -> None:
    """SPEC §8: a CLIENT span per IdP call under the request that made it; no trace headers
    to the IdP or Graph; no token, cookie or email in any exported attribute."""
    telemetry = {"otlp_endpoint": otlp_receiver.url}
    async with running_stack(upstream, start_edge, tmp_path, telemetry=telemetry) as running:
        idp, edge, visitor = running.idp, running.edge, running.visitor(http)
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        start = await visitor.get("/.iap/login?rd=/app/", headers={**HTML, **headers})
        answer = await visitor.callback(await visitor.authorize(start.location, "olivia"))
        assert answer.status == 302
        assert (await visitor.get("/app/x")).status == 200
        await asyncio.get_running_loop().run_in_executor(None, edge.edge.tracing.flush)
    assert idp.idp.trace_headers_seen == 0
    spans = otlp_receiver.received.spans
    [callback] = [s for s in spans if s.kind == SERVER and s.attributes["url.path"] == CALLBACK]
    idp_calls = {
        s.name: s for s in spans if s.kind == CLIENT and s.parent_span_id == callback.span_id
    }
    assert {"POST idp token", "POST idp graph"} <= set(idp_calls)
    assert all(s.trace_id == callback.trace_id for s in idp_calls.values())
    [app] = [s for s in spans if s.kind == SERVER and s.attributes.get("iap.route") == "app"]
    assert app.attributes["iap.authn.method"] == "session"
    assert app.attributes["iap.authz.decision"] == "allow"
    # the keys the mesh's Telemetry resource tags its spans with (iap mesh render)
    [line] = [line for line in edge.audit_lines() if line["route"] == "app"]
    assert (
        app.attributes["iap.subject"]
        == line["subject"]
        == f"{line['tenant']}:{USERS['olivia'].oid}"
    )
    assert app.attributes["iap.correlation_id"]
    exported = json.dumps([(s.name, s.attributes, s.events) for s in spans])
    for secret in ("eyJ", "__Host-iap", USERS["olivia"].email, CLIENT_SECRET):
        assert secret not in exported
    metrics = await (await http.get(f"{edge.admin_url}/metrics")).text()
    assert 'iap_idp_requests_total{endpoint="token",result="ok"} 1.0' in metrics
    assert 'iap_idp_requests_total{endpoint="graph",result="ok"} 1.0' in metrics


async def test_a_user_in_450_groups_keeps_the_groups_that_decide(
    visitor: Visitor, stack: SignInStack
) -> None:
    """Past 200 groups the session keeps those named in tokens.roles or a policy, so that it
    fits its cookie (8 chunks at most); the user still signs in and keeps the staff role."""
    olivia = USERS["olivia"]
    many = (STAFF_GROUP_ID, *(str(uuid.uuid5(uuid.NAMESPACE_URL, f"g{n}")) for n in range(449)))
    crowded = dataclasses.replace(olivia, groups=many)
    stack.idp.idp.directory = Directory(users=(crowded,))  # what sign-in and Graph answer
    answer = await visitor.sign_in("olivia")
    assert answer.status == 302
    assert all(len(cookie) < COOKIE_LIMIT for cookie in answer.set_cookies)
    body = json.loads((await visitor.get("/.iap/userinfo")).body)
    assert body["groups"] == [STAFF_GROUP_ID]
    assert body["roles"] == ["staff"]


async def test_iap_answers_carry_the_correlation_id_and_no_library_banner(
    visitor: Visitor,
) -> None:
    for path in ("/.iap/login?rd=/app/", "/app/x", "/.iap/frontchannel-logout?sid=x"):
        answer = await visitor.get(path, headers=HTML)
        assert answer.header("X-Correlation-ID"), path
        assert answer.header("Server") == "iap", path


async def test_sign_in_settings_change_only_with_a_restart(
    stack: SignInStack, upstream: Upstream, tmp_path: Path
) -> None:
    """SIGHUP reloads routes and policies; sign-in (keys, IdP client, store) needs a restart."""
    edge = stack.edge.edge
    document = signin_config(upstream.url, stack.idp, stack.edge.port, tmp_path)
    document["oidc"]["allowed_tenants"] = [TENANT_A, "another-tenant"]
    with pytest.raises(ConfigError) as refused:
        edge.reload(config.parse(document))
    assert refused.value.problems[0] == "oidc: changes need a restart, not a reload"


async def test_readiness_waits_for_the_idp_and_recovers_without_a_restart(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    idp_port = free_port()
    port = free_port()
    down = SimpleNamespace(url=f"http://127.0.0.1:{idp_port}")  # nothing listens there yet
    document = signin_config(upstream.url, down, port, tmp_path)  # type: ignore[arg-type]
    edge = await start_edge(document)
    async with http.get(f"{edge.admin_url}/readyz") as answer:
        assert answer.status == 503
        assert (await answer.json())["checks"]["idp"] is False
    idp = await start_dev_idp(
        client_id="c", client_secret="s", redirect_uris=["http://x/cb"], port=idp_port
    )
    try:
        async with asyncio.timeout(30):  # a hang guard, not a performance bound
            while True:
                async with http.get(f"{edge.admin_url}/readyz") as answer:
                    if answer.status == 200:
                        break
                await asyncio.sleep(0.05)
    finally:
        await idp.stop()
