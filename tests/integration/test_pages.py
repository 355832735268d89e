"""The pages iap shows a person (issue 13), over real sockets: the dev IdP, iap and the test
upstream. What the browser renders is checked in real Chromium (tests/browser/test_pages.py);
here each answer's status, links and audit line.
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from iap.dev.idp import TENANT_A, USERS
from iap.web.session_check import SessionCheck
from tests.support.signin import SignInStack, Visitor, http, stack

__all__ = ["http", "stack"]

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


def subject(user: str) -> str:
    return f"{USERS[user].tid}:{USERS[user].oid}"


def links(page: bytes) -> dict[str, str]:
    """The page's links, by id."""
    found = re.findall(r"<a id='([^']+)' href='([^']+)'>", page.decode())
    return {key: html.unescape(href) for key, href in found}


async def audit(stack: SignInStack, correlation_id: str | None) -> dict[str, object]:
    count = 1
    while True:
        lines = await stack.edge.wait_audit_lines(count)
        found = [line for line in lines if line["correlation_id"] == correlation_id]
        if found:
            return found[-1]
        count = len(lines) + 1


def visitor_of(stack: SignInStack, http: aiohttp.ClientSession) -> Visitor:
    return stack.visitor(http)


async def test_a_callback_and_a_logout_name_the_subject_and_tenant_in_the_audit_line(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    signed_in = await visitor.sign_in("alice")
    assert signed_in.status == 302
    line = await audit(stack, signed_in.header("X-Correlation-ID"))
    assert (line["path"], line["status"]) == ("/.iap/callback", 302)
    assert (line["subject"], line["tenant"]) == (subject("alice"), TENANT_A)

    logout = await visitor.get("/.iap/logout")
    assert logout.status == 302
    line = await audit(stack, logout.header("X-Correlation-ID"))
    assert (line["path"], line["status"]) == ("/.iap/logout", 302)
    assert (line["subject"], line["tenant"]) == (subject("alice"), TENANT_A)

    # Without a session, a logout is about nobody.
    again = await visitor.get("/.iap/logout")
    line = await audit(stack, again.header("X-Correlation-ID"))
    assert (line["subject"], line["tenant"]) == (None, None)


async def test_a_403_names_who_is_signed_in_and_offers_another_account(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    await visitor.sign_in("bob")
    answer = await visitor.get("/admin/panel?x=1", headers=HTML)
    assert answer.status == 403
    page = answer.body.decode()
    assert "Signed in as <b id='viewer'>Bob Staff</b>" in page
    assert "<h1>Access denied</h1>" in page
    found = links(answer.body)
    assert found["sign-out"] == "/.iap/logout"
    assert (
        found["switch-account"] == "/.iap/login?rd=%2Fadmin%2Fpanel%3Fx%3D1&prompt=select_account"
    )
    assert not stack.upstream.seen.requests

    # The link starts a login that makes the IdP ask which account.
    start = await visitor.get(found["switch-account"], headers=HTML)
    assert start.status == 302
    query = parse_qs(urlsplit(start.location).query)
    assert query["prompt"] == ["select_account"]
    assert query["response_type"] == ["code"]
    # ...and comes back where it was going, after the account is picked.
    back = await visitor.callback(await visitor.authorize(start.location, "alice"))
    assert (back.status, back.location) == (302, "/admin/panel?x=1")


async def test_sign_in_as_someone_else_keeps_the_open_redirect_protection(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    query = urlencode({"rd": "https://evil.example/steal", "prompt": "select_account"})
    start = await visitor.get(f"/.iap/login?{query}", headers=HTML)
    assert start.status == 302
    assert parse_qs(urlsplit(start.location).query)["prompt"] == ["select_account"]
    back = await visitor.callback(await visitor.authorize(start.location, "alice"))
    assert (back.status, back.location) == (302, "/")  # the foreign target was dropped
    # Any other prompt is not passed on.
    other = await visitor.get("/.iap/login?rd=/app/&prompt=none", headers=HTML)
    assert "prompt" not in parse_qs(urlsplit(other.location).query)


async def test_a_browser_401_links_to_sign_in_and_back(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    answer = await visitor.request("POST", "/app/form?step=2", headers=HTML, data={"a": "b"})
    assert answer.status == 401
    assert "<h1>Sign-in required</h1>" in answer.body.decode()
    assert links(answer.body) == {"sign-in": "/.iap/login?rd=%2Fapp%2Fform%3Fstep%3D2"}
    assert "viewer" not in answer.body.decode()  # nobody is signed in


async def test_the_user_page_shows_the_identity_and_the_routes_it_may_reach(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    anonymous = await visitor.get("/.iap/", headers=HTML)
    assert (anonymous.status, anonymous.location) == (302, "/.iap/login?rd=%2F.iap%2F")
    api = await visitor.get("/.iap/", headers=JSON)
    assert api.status == 401
    assert json.loads(api.body)["error"] == "unauthenticated"

    await visitor.sign_in("bob")
    answer = await visitor.get("/.iap/", headers=HTML)
    assert answer.status == 200
    assert answer.header("Cache-Control") == "no-store"
    page = answer.body.decode()
    cells = dict(re.findall(r"<td id='([a-z-]+)'>(.*?)</td>", page))
    assert cells["name"] == "Bob Staff"
    assert cells["email"] == "bob@contoso.example"
    assert cells["tenant"] == TENANT_A
    assert cells["subject"] == subject("bob")
    assert cells["roles"] == "staff"
    assert cells["session-age"].endswith("ago")
    assert "(in " in cells["session-expiry"]
    routes = re.findall(r"<li><code>([^<]*)</code> \(([^)]+)\)</li>", page)
    # bob (no admin role) may reach /app/ and the public catch-all, not /admin/
    assert routes == [("/app/", "app"), ("/", "public")]
    assert f"<code id='correlation-id'>{answer.header('X-Correlation-ID')}</code>" in page
    line = await audit(stack, answer.header("X-Correlation-ID"))
    assert (line["route"], line["subject"]) == ("_iap", subject("bob"))
    userinfo = await visitor.get("/.iap/userinfo", headers=HTML)
    assert json.loads(userinfo.body)["email"] == "bob@contoso.example"  # stays JSON


async def test_logout_ends_on_the_signed_out_page(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    await visitor.sign_in("alice")
    at_idp = await visitor.get((await visitor.get("/.iap/logout")).location)
    assert at_idp.location == f"{stack.edge.url}/.iap/signed-out"
    page = await visitor.get(at_idp.location, headers=HTML)
    assert page.status == 200
    assert "<h1>You are signed out</h1>" in page.body.decode()
    assert links(page.body) == {"sign-in-again": "/.iap/login?rd=%2F"}


async def test_an_idp_error_shows_its_code_never_its_description(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    start = await visitor.get("/.iap/login?rd=/app/", headers=HTML)
    state = parse_qs(urlsplit(start.location).query)["state"][0]
    description = "<script>alert(1)</script> AADSTS50105 the admin said no"
    query = urlencode({"error": "access_denied", "error_description": description, "state": state})
    answer = await visitor.get(f"/.iap/callback?{query}", headers=HTML)
    assert answer.status == 403
    page = answer.body.decode()
    assert "<h1>Sign-in refused by the identity provider</h1>" in page
    assert "<code id='idp-error'>access_denied</code>" in page
    assert "AADSTS50105" not in page
    assert "<script>" not in page
    assert "alert" not in page
    assert links(answer.body) == {"retry": "/.iap/login?rd=%2F"}
    line = await audit(stack, answer.header("X-Correlation-ID"))
    assert line["reason"] == "login_refused:idp_error"

    # An error code that is not one (markup, spaces) is not shown at all.
    start = await visitor.get("/.iap/login?rd=/app/", headers=HTML)
    state = parse_qs(urlsplit(start.location).query)["state"][0]
    hostile = urlencode({"error": "<b>bad</b> code", "state": state})
    answer = await visitor.get(f"/.iap/callback?{hostile}", headers=HTML)
    page = answer.body.decode()
    assert "<code id='idp-error'>unknown</code>" in page
    assert "bad" not in page


async def test_a_refused_tenant_has_its_own_page_without_a_retry(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    start = await visitor.get("/.iap/login?rd=/app/", headers=HTML)
    idp_answer = await visitor.authorize(start.location, "eve")
    answer = await visitor.get(idp_answer.location, headers=HTML)
    assert answer.status == 403
    page = answer.body.decode()
    assert "<h1>Organisation not allowed</h1>" in page
    assert "Your organisation is not allowed here; ask the application owner." in page
    assert links(answer.body) == {}  # no retry: signing in again cannot change the answer
    line = await audit(stack, answer.header("X-Correlation-ID"))
    assert (line["reason"], line["subject"], line["tenant"]) == (
        "login_refused:tenant",
        subject("eve"),
        USERS["eve"].tid,
    )


async def test_an_expired_or_unknown_login_state_offers_a_retry(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    start = await visitor.get("/.iap/login?rd=/app/", headers=HTML)
    idp_answer = await visitor.authorize(start.location, "alice")
    visitor.cookies.clear()  # the login-state cookie is gone: the state is unknown here
    answer = await visitor.get(idp_answer.location, headers=HTML)
    assert answer.status == 403
    assert "<h1>Sign-in timed out</h1>" in answer.body.decode()
    assert links(answer.body) == {"retry": "/.iap/login?rd=%2F"}


async def test_a_failed_switch_of_account_still_names_who_is_signed_in(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    await visitor.sign_in("bob")
    start = await visitor.get("/.iap/login?rd=/admin/&prompt=select_account", headers=HTML)
    idp_answer = await visitor.authorize(start.location, "eve")
    answer = await visitor.get(idp_answer.location, headers=HTML)
    assert answer.status == 403
    page = answer.body.decode()
    assert "<h1>Organisation not allowed</h1>" in page
    assert "Signed in as <b id='viewer'>Bob Staff</b>" in page  # bob's session goes on
    line = await audit(stack, answer.header("X-Correlation-ID"))
    assert line["subject"] == subject("eve")  # the audit line is about the refused sign-in
    assert (await visitor.get("/app/x")).status == 200


async def test_pages_refused_before_the_session_is_looked_at_still_name_who_is_signed_in(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    await visitor.sign_in("bob")
    refused = {
        404: await visitor.get("/.iap/nothing-here", headers=HTML),
        405: await visitor.request("DELETE", "/.iap/userinfo", headers=HTML),
        400: await visitor.get("/app/x", headers={**HTML, "Host": "not a host"}),
    }
    for status, answer in refused.items():
        assert answer.status == status
        page = answer.body.decode()
        assert "Signed in as <b id='viewer'>Bob Staff</b>" in page, status
        assert links(answer.body)["sign-out"] == "/.iap/logout"
        assert not answer.set_cookies  # a page about something else writes no session
    # JSON answers name nobody; the session is not even looked at for them.
    json_404 = await visitor.get("/.iap/nothing-here", headers=JSON)
    assert json_404.status == 404
    assert set(json.loads(json_404.body)) == {"error", "message", "correlation_id"}
    assert not stack.upstream.seen.requests


async def test_a_refused_page_names_nobody_for_a_bad_ended_or_absent_session(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    anonymous = await visitor.get("/.iap/nothing-here", headers=HTML)
    assert anonymous.status == 404
    assert "viewer" not in anonymous.body.decode()

    await visitor.sign_in("bob")
    name = next(iter(visitor.cookies))
    saved = dict(visitor.cookies)
    visitor.cookies[name] = saved[name][:-4] + "AAAA"  # tampered: opens to nobody
    tampered = await visitor.get("/.iap/nothing-here", headers=HTML)
    assert tampered.status == 404
    assert "viewer" not in tampered.body.decode()
    assert not tampered.set_cookies  # neither cleared nor rewritten by a 404

    visitor.cookies = saved
    assert (await visitor.get("/.iap/logout")).status == 302
    visitor.cookies = saved  # the old cookie again, after its session was ended
    ended = await visitor.get("/.iap/nothing-here", headers=HTML)
    assert ended.status == 404
    assert "viewer" not in ended.body.decode()


async def test_the_signed_out_and_user_pages_shrug_off_hostile_query_strings(
    stack: SignInStack, http: aiohttp.ClientSession
) -> None:
    visitor = visitor_of(stack, http)
    hostile = ["?", "?rd", "?rd=&rd=", "?rd=%ff%fe", "?%00=%00", "?rd=" + "a" * 4000, "?x=<script>"]
    for query in hostile:
        out = await visitor.get(f"/.iap/signed-out{query}", headers=HTML)
        assert out.status == 200, query
        assert "<script>" not in out.body.decode()
        anonymous = await visitor.get(f"/.iap/{query}", headers=HTML)
        assert anonymous.status == 302, query  # sent to sign in, never a 500
    await visitor.sign_in("alice")
    for query in hostile:
        page = await visitor.get(f"/.iap/{query}", headers=HTML)
        assert page.status == 200, query
        assert "<script>" not in page.body.decode()
    assert not stack.upstream.seen.requests


async def test_a_failing_viewer_lookup_still_gives_the_page_not_a_500(
    stack: SignInStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    visitor = visitor_of(stack, http)
    await visitor.sign_in("bob")

    async def broken(self: object, request: object) -> None:
        raise RuntimeError("the session layer broke")

    monkeypatch.setattr(SessionCheck, "viewer", broken)
    answer = await visitor.get("/.iap/nothing-here", headers=HTML)
    assert answer.status == 404
    assert "<h1>Not found</h1>" in answer.body.decode()
    assert "viewer" not in answer.body.decode()
    assert "the session layer broke" not in answer.body.decode()
