"""Sign-in under attack, end to end: one test per rule of the login (issue acceptance list).

Each test tampers with one step of the code flow between the dev IdP and iap and checks
both halves of "fail closed": the attack is refused by the check it targets (the audit
``reason`` of the refused callback names it), and no session results (generic 403, no
session cookie set, the next protected request is sent to login, the upstream saw nothing).
The forged ID tokens come from the dev IdP's ``id_token_hook``, shaped like those in
tests/unit/test_idtoken.py. Every test runs with the cookie and the Redis session store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from iap.dev.idp import TENANT_B, USERS
from iap.errors import SignInFailed
from iap.web.errorpage import SIGN_IN_FAILED, SIGN_IN_FAILURES
from tests.support.signin import Response, SignInStack, Visitor, http
from tests.support.signin_stores import stack, visitor

__all__ = ["http", "stack", "visitor"]

HTML = {"Accept": "text/html"}
CALLBACK = "/.iap/callback"
SESSION_COOKIE = "__Host-iap"
LOGIN_COOKIE = "__Host-iap-login"
#: words that would tell an attacker which check refused the callback
TELLTALES = ("nonce", "aud", "iss", "kid", "alg", "state", "tenant", "exp", "grant", "verifier")

# --- the flow, one observable step at a time -------------------------------------------


async def start(visitor: Visitor, rd: str = "/app/") -> Response:
    """``/.iap/login`` with ``rd`` URL-encoded; iap's 302 to the IdP."""
    answer = await visitor.get(f"/.iap/login?rd={quote(rd, safe='')}", headers=HTML)
    assert answer.status == 302, answer
    return answer


async def at_idp(visitor: Visitor, user: str = "alice", rd: str = "/app/") -> Response:
    """Start a login and pick ``user`` at the IdP; the IdP's 302 to iap's callback."""
    answer = await visitor.authorize((await start(visitor, rd)).location, user)
    assert answer.status == 302, answer
    return answer


def params(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def with_params(url: str, **changes: str) -> str:
    """``url`` with some query parameters replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


# --- what "refused, and no session" means ---------------------------------------------


def session_cookies_set(answer: Response) -> list[str]:
    """Set-Cookie values that would give the client a session (``__Host-iap[-N]``)."""
    found = []
    for cookie in answer.set_cookies:
        name, _, value = cookie.partition(";")[0].partition("=")
        chunk = name.removeprefix(SESSION_COOKIE + "-")
        if (name == SESSION_COOKIE or chunk.isdigit()) and value:
            found.append(cookie)
    return found


async def audit_line(stack: SignInStack, **fields: Any) -> dict[str, Any]:
    """The last audit line with these ``fields``, once it is written."""
    count = 1
    while True:
        lines = await stack.edge.wait_audit_lines(count)
        found = [line for line in lines if fields.items() <= line.items()]
        if found:
            return found[-1]
        count = len(lines) + 1


async def assert_refused(
    stack: SignInStack, answer: Response, reason: str, subject: str | None = None
) -> None:
    """A generic 403 for the callback, no session cookie, and ``reason`` in the audit line
    (with the subject of a validly signed token refused anyway, else none)."""
    assert answer.status == 403, answer
    correlation_id = answer.header("X-Correlation-ID")
    assert correlation_id
    if (answer.header("Content-Type") or "").startswith("text/html"):
        page = answer.body.decode()
        title, text, _ = SIGN_IN_FAILURES.get(reason, SIGN_IN_FAILED)
        assert f"<h1>{title}</h1>" in page
        assert text.partition("{")[0] in page
    else:
        assert json.loads(answer.body) == {
            "error": "sign_in_failed",
            "message": SignInFailed.public,
            "correlation_id": correlation_id,
        }
    text = answer.body.decode().replace(correlation_id, "").lower()
    assert not [word for word in TELLTALES if word in text]
    assert not session_cookies_set(answer)
    line = await audit_line(stack, correlation_id=correlation_id)
    assert (line["path"], line["status"], line["reason"]) == (CALLBACK, 403, reason)
    assert line["subject"] == subject
    assert line["tenant"] == (subject.partition(":")[0] if subject else None)


async def assert_anonymous(stack: SignInStack, visitor: Visitor) -> None:
    """The visitor holds no session: a protected page sends it to login, unforwarded."""
    follow = await visitor.get("/app/x", headers=HTML)
    assert follow.status == 302
    assert follow.location.startswith("/.iap/login?")
    assert not stack.upstream.seen.requests


async def assert_no_session(
    stack: SignInStack, visitor: Visitor, answer: Response, reason: str, subject: str | None = None
) -> None:
    await assert_refused(stack, answer, reason, subject)
    await assert_anonymous(stack, visitor)


async def authn_total(stack: SignInStack, http: aiohttp.ClientSession, result: str) -> float:
    """``iap_authn_total{method="session",result=...}`` from the admin listener."""
    async with http.get(stack.edge.admin_url + "/metrics") as answer:
        text = await answer.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "iap_authn_total" and sample.labels == {
                "method": "session",
                "result": result,
            }:
                return float(sample.value)
    return 0.0


@pytest.fixture
def store(request: pytest.FixtureRequest, stack: SignInStack) -> str:
    """``cookie`` or ``redis``: the ``session.store`` this run of the test uses."""
    return str(request.node.callspec.params["stack"])


# --- 1, 2, 14: state -------------------------------------------------------------------


async def test_unknown_state_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    idp_answer = await at_idp(visitor)
    forged = with_params(idp_answer.location, state=b64(secrets.token_bytes(32)))
    answer = await visitor.get(forged, headers=HTML)  # a browser navigation: the HTML page
    await assert_no_session(stack, visitor, answer, "login_refused:state")
    assert stack.idp.idp.code_grants == 0  # refused before the code was redeemed
    assert params(idp_answer.location)["code"] in stack.idp.idp.codes


async def test_reloading_the_callback_while_signed_in_goes_where_the_login_went(
    stack: SignInStack, visitor: Visitor
) -> None:
    # A reload of /.iap/callback (or Back to it) after the sign-in: the state is spent, so
    # nothing is redeemed again, but the browser that holds the session is not shown a 403.
    idp_answer = await at_idp(visitor, rd="/app/reports?q=1")
    first = await visitor.callback(idp_answer)
    assert (first.status, first.location) == (302, "/app/reports?q=1")
    assert session_cookies_set(first)
    for _ in range(2):
        reload = await visitor.get(idp_answer.location, headers=HTML)
        assert (reload.status, reload.location) == (302, "/app/reports?q=1")
        assert not session_cookies_set(reload)
    assert stack.idp.idp.code_grants == 1  # exactly one code exchange at the token endpoint
    line = await audit_line(stack, path=CALLBACK, status=302, reason="callback_spent:state")
    assert line["subject"].endswith(":a11ce000-0000-4000-8000-00000000000a")
    await visitor.get("/.iap/logout")
    # Signed out, the same reload is what it always was: a refused, spent state.
    refused = await visitor.get(idp_answer.location)
    await assert_refused(stack, refused, "login_refused:state")
    assert stack.idp.idp.code_grants == 1


async def test_replayed_callback_with_the_old_login_cookie_is_refused(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    # Who captured the callback URL and the login-state cookie before it was rewritten still
    # meets the spent state: iap records it in the store, before the code reaches the IdP.
    idp_answer = await at_idp(visitor)
    captured = visitor.cookies[LOGIN_COOKIE]
    assert (await visitor.callback(idp_answer)).status == 302
    attacker = stack.visitor(http)
    attacker.cookies[LOGIN_COOKIE] = captured
    answer = await attacker.get(idp_answer.location)
    await assert_no_session(stack, attacker, answer, "login_refused:replayed")
    assert stack.idp.idp.code_grants == 1  # the replayed code never reached the IdP
    assert (await visitor.get("/app/x")).status == 200


async def test_callback_without_the_login_state_cookie_is_refused(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    idp_answer = await at_idp(visitor)
    other_browser = stack.visitor(http)
    answer = await other_browser.get(idp_answer.location)
    await assert_no_session(stack, other_browser, answer, "login_refused:state")
    assert stack.idp.idp.code_grants == 0


# --- 3 to 8: forged ID tokens ----------------------------------------------------------


def public_key_bytes(stack: SignInStack, form: str) -> bytes:
    """The IdP's current RSA public key, as PEM or as its JWK JSON."""
    idp = stack.idp.idp
    [key] = [k for k in idp.keys if k.kid == idp.signing_kid]
    if form == "pem":
        return key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return json.dumps(key.as_dict(private=False)).encode()


async def sign_in_with_forged_token(
    stack: SignInStack, visitor: Visitor, forge: Any, reason: str
) -> None:
    stack.idp.idp.id_token_hook = forge
    answer = await visitor.callback(await at_idp(visitor))
    await assert_no_session(stack, visitor, answer, reason)
    assert stack.idp.idp.code_grants == 1  # the code was good; the token was not


async def test_wrong_nonce_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    idp = stack.idp.idp
    await sign_in_with_forged_token(
        stack,
        visitor,
        lambda header, claims: idp.sign(header, {**claims, "nonce": b64(secrets.token_bytes(32))}),
        "login_refused:nonce",
    )


async def test_expired_id_token_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    idp = stack.idp.idp

    def expired(header: dict[str, Any], claims: dict[str, Any]) -> str:
        issued = claims["iat"] - 7200  # an hour past expiry: far beyond any clock skew
        return idp.sign(header, {**claims, "iat": issued, "nbf": issued, "exp": issued + 3600})

    await sign_in_with_forged_token(stack, visitor, expired, "login_refused:exp")


async def test_wrong_audience_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    idp = stack.idp.idp
    other_app = "00000000-0000-4000-8000-0000000000ff"
    await sign_in_with_forged_token(
        stack,
        visitor,
        lambda header, claims: idp.sign(header, {**claims, "aud": other_app}),
        "login_refused:aud",
    )


async def test_wrong_issuer_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    idp = stack.idp.idp

    def other_tenant_issuer(header: dict[str, Any], claims: dict[str, Any]) -> str:
        # tenant A's claims under tenant B's issuer: the template must match the ``tid``
        return idp.sign(header, {**claims, "iss": f"{idp.base_url}/{TENANT_B}/v2.0"})

    await sign_in_with_forged_token(stack, visitor, other_tenant_issuer, "login_refused:iss")


async def test_alg_none_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
        return f"{b64json({**header, 'alg': 'none'})}.{b64json(claims)}."

    await sign_in_with_forged_token(stack, visitor, unsigned, "login_refused:alg")


@pytest.mark.parametrize("key_form", ["pem", "jwk"])
async def test_hs256_keyed_with_the_idp_public_key_is_refused(
    stack: SignInStack, visitor: Visitor, key_form: str
) -> None:
    # the key confusion of CVE-2015-9235: the HMAC secret is the RSA public key
    secret = public_key_bytes(stack, key_form)

    def hmac_signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
        signing_input = f"{b64json({**header, 'alg': 'HS256'})}.{b64json(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    await sign_in_with_forged_token(stack, visitor, hmac_signed, "login_refused:alg")


# --- 9, 10: tenant and keys ------------------------------------------------------------


async def test_tenant_not_allowed_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    answer = await visitor.callback(await at_idp(visitor, "eve"))
    eve = USERS["eve"]
    # The token is genuine, so the audit line names who was refused, and from which tenant.
    await assert_no_session(stack, visitor, answer, "login_refused:tenant", f"{eve.tid}:{eve.oid}")
    assert stack.idp.idp.code_grants == 1  # a genuine token, from the wrong tenant


async def test_unknown_kid_refetches_the_jwks_once_per_five_minutes(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    idp = stack.idp.idp
    assert (await stack.visitor(http).sign_in("alice")).status == 302  # JWKS loaded
    assert idp.jwks_fetches == 1
    idp.rotate(publish=False)  # from now on tokens name a kid the JWKS does not hold

    answer = await visitor.callback(await at_idp(visitor))
    await assert_no_session(stack, visitor, answer, "login_refused:kid")
    assert idp.jwks_fetches == 2  # exactly one refetch for the unknown kid

    again = await visitor.callback(await at_idp(visitor))
    await assert_refused(stack, again, "login_refused:kid")
    assert idp.jwks_fetches == 2  # within five minutes: no further fetch
    await assert_anonymous(stack, visitor)


# --- 11: the session cookie ------------------------------------------------------------


def flipped(value: str) -> str:
    """``value`` with its middle character changed (still base64url)."""
    middle = len(value) // 2
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]


def cleared(answer: Response) -> set[str]:
    """Names of the cookies that ``answer`` deletes (empty value, ``Max-Age=0``)."""
    names = set()
    for cookie in answer.set_cookies:
        name, _, value = cookie.partition(";")[0].partition("=")
        if not value and cookie.endswith("; Max-Age=0"):
            names.add(name)
    return names


async def test_tampered_session_cookie_is_cleared_and_sent_to_login(
    stack: SignInStack,
    visitor: Visitor,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="iap")
    assert (await visitor.sign_in("alice")).status == 302
    genuine = dict(visitor.cookies)
    visitor.cookies[SESSION_COOKIE] = flipped(genuine[SESSION_COOKIE])

    answer = await visitor.get("/app/x", headers=HTML)
    assert answer.status == 302
    assert answer.location == "/.iap/login?rd=%2Fapp%2Fx"
    assert SESSION_COOKIE in cleared(answer)
    assert not session_cookies_set(answer)
    assert not stack.upstream.seen.requests
    line = await audit_line(stack, path="/app/x", status=302)
    assert (line["status"], line["decision"], line["subject"]) == (302, "deny", None)
    assert line["reason"] == "session_invalid"  # why the cookie did not count
    assert await authn_total(stack, http, "session_invalid") == 1
    assert "session cookie rejected (invalid); cleared" in caplog.messages

    visitor.cookies = genuine  # the untampered cookie still works: the flip was refused
    assert (await visitor.get("/app/x")).status == 200


CHUNKED = pytest.mark.parametrize("stack", ["cookie"], indirect=True)
"""Chunks exist only in the cookie store: with Redis the cookie is one small handle."""


@CHUNKED
async def test_session_cookie_missing_a_chunk_is_cleared_and_sent_to_login(
    stack: SignInStack, visitor: Visitor, http: aiohttp.ClientSession
) -> None:
    assert (await visitor.sign_in("olivia")).status == 302
    chunks = {n for n in visitor.cookies if n.removeprefix(SESSION_COOKIE + "-").isdigit()}
    assert f"{SESSION_COOKIE}-1" in chunks
    del visitor.cookies[f"{SESSION_COOKIE}-1"]

    answer = await visitor.get("/app/x", headers=HTML)
    assert answer.status == 302
    assert answer.location == "/.iap/login?rd=%2Fapp%2Fx"
    assert cleared(answer) >= {SESSION_COOKIE} | chunks - {f"{SESSION_COOKIE}-1"}
    assert not session_cookies_set(answer)
    assert not stack.upstream.seen.requests
    assert await authn_total(stack, http, "session_malformed") == 1


@CHUNKED
async def test_session_cookie_missing_a_chunk_is_logged_as_rejected(
    stack: SignInStack, visitor: Visitor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iap")
    assert (await visitor.sign_in("olivia")).status == 302
    del visitor.cookies[f"{SESSION_COOKIE}-1"]
    assert (await visitor.get("/app/x", headers=HTML)).status == 302
    assert any("session cookie rejected" in message for message in caplog.messages)


# --- 12: redirect targets --------------------------------------------------------------

OFF_SITE = [
    "//evil.com",
    "/\\evil.com",
    "https://evil.com",
    "https://good.com.evil.com",
    "https://evil.com\\@good.com",
    "/%09/evil.com",
    "/\t/evil.com",
]


@pytest.mark.parametrize("rd", OFF_SITE)
async def test_sign_in_never_redirects_off_site(
    stack: SignInStack, visitor: Visitor, rd: str
) -> None:
    answer = await visitor.callback(await at_idp(visitor, rd=rd))
    assert answer.status == 302
    assert session_cookies_set(answer)  # the sign-in itself completes
    assert answer.location == "/"


@pytest.mark.parametrize("target", OFF_SITE)
async def test_logout_never_sends_the_idp_off_site(
    stack: SignInStack, visitor: Visitor, target: str
) -> None:
    answer = await visitor.get(f"/.iap/logout?post_logout_redirect_uri={quote(target, safe='')}")
    assert answer.status == 302
    assert answer.location.startswith(f"{stack.idp.url}/")
    assert params(answer.location)["post_logout_redirect_uri"] == f"{stack.edge.url}/"


# --- 13, 15, 16: the IdP's answer and the code ------------------------------------------


async def test_idp_error_callback_is_refused(stack: SignInStack, visitor: Visitor) -> None:
    login = await start(visitor)
    state = params(login.location)["state"]
    cancelled = urlencode(
        {"error": "access_denied", "error_description": "AADSTS65004", "state": state}
    )
    answer = await visitor.get(f"{CALLBACK}?{cancelled}")
    await assert_no_session(stack, visitor, answer, "login_refused:idp_error")
    assert stack.idp.idp.code_grants == 0


async def test_code_refused_by_the_token_endpoint_is_refused(
    stack: SignInStack, visitor: Visitor
) -> None:
    idp_answer = await at_idp(visitor)
    code = params(idp_answer.location)["code"]
    tampered = with_params(idp_answer.location, code=flipped(code))
    answer = await visitor.get(tampered)
    await assert_no_session(stack, visitor, answer, "login_refused:invalid_grant")
    assert stack.idp.idp.code_grants == 0
    assert code in stack.idp.idp.codes  # the IdP was asked about another code


async def test_code_delivered_with_another_logins_state_fails_pkce(
    stack: SignInStack, visitor: Visitor
) -> None:
    # Two logins in one browser: A's code arrives with B's state, so iap redeems it with
    # B's PKCE verifier (an intercepted code replayed into a login of the attacker's).
    login_a = await start(visitor)
    login_b = await start(visitor)
    idp_answer = await visitor.authorize(login_a.location)
    code_a = params(idp_answer.location)["code"]
    state_b = params(login_b.location)["state"]
    answer = await visitor.get(with_params(idp_answer.location, state=state_b))
    await assert_no_session(stack, visitor, answer, "login_refused:invalid_grant")
    idp = stack.idp.idp
    # The IdP knew the code, so client, redirect URI and expiry passed: PKCE refused it.
    assert code_a in idp.redeemed_codes
    assert idp.code_grants == 0
