"""The pages iap shows a person (iap.web.pages, errorpage, userpage): one layout, every value
escaped, titles not repeated as body text (issue 13)."""

from __future__ import annotations

import re

import pytest

from iap import config
from iap.domain.session import Session, new_session
from iap.errors import Forbidden, RequestError, SignInFailed, Unauthenticated
from iap.model import Identity
from iap.web import errorpage, pages
from iap.web.userpage import reachable, signed_out_page, user_page

HOSTILE = Identity(
    subject="t:<img src=x onerror=alert(1)>",
    tid="t",
    oid="<img src=x onerror=alert(1)>",
    name="<script>alert('name')</script>",
    email='"><script>alert(2)</script>@x',
    preferred_username=None,
    roles=("<b>admin</b>",),
    groups=("</td><script>alert(3)</script>",),
)


def _route(name: str, prefix: str, policy: dict[str, object]) -> config.Route:
    return config.Route.model_validate(
        {"name": name, "upstream": "http://127.0.0.1:9", "match": {"path_prefix": prefix},
         "policy": policy}
    )  # fmt: skip


ROUTES = [
    _route("admin", "/admin/", {"allow": {"roles": ["admin"]}}),
    _route("app", "/app/", {"allow": {"authenticated": True}}),
    _route("public", "/", {"public": True}),
]


def _session(identity: Identity) -> Session:
    return new_session(
        identity, sid=None, id_token="x", refresh_token=None, expires_in=3600, now=1_000_000,
        random=lambda n: b"\x01" * n,
    )  # fmt: skip


def _body(page: str) -> str:
    return page.partition("</style>")[2]


def test_hostile_names_render_inert_on_every_page() -> None:
    session = _session(HOSTILE)
    shown = [
        user_page(HOSTILE, session, ROUTES, lifetime=28800, now=1_000_060, correlation_id="c"),
        errorpage.error_response(403, "forbidden", "x", "c", "text/html", viewer=HOSTILE).text,
    ]
    for page in shown:
        assert page is not None
        body = _body(page)
        assert "<script" not in body
        assert "<img" not in body
        assert "<b>admin" not in body
        assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in body


@pytest.mark.parametrize("status", sorted(errorpage._TITLES))
def test_a_page_title_is_never_repeated_as_its_text(status: int) -> None:
    page = errorpage.error_response(status, "code", "ignored", "cid", "text/html").text
    assert page is not None
    title = re.search(r"<h1>(.*?)</h1>", page)
    text = re.search(r"<p id='message'>(.*?)</p>", page)
    assert title is not None
    assert text is not None
    assert title[1].rstrip(".").lower() != text[1].rstrip(".").lower()
    assert title[1].lower() not in text[1].lower()
    assert f"<title>{status} {title[1]}</title>" in page


def test_every_page_shares_one_stylesheet_and_no_external_asset() -> None:
    pages_shown = [
        errorpage.error_response(404, "no_route", "Not found.", "c", "text/html").text or "",
        signed_out_page("c"),
        user_page(HOSTILE, _session(HOSTILE), [], lifetime=60, now=1_000_000, correlation_id="c"),
    ]
    for page in pages_shown:
        assert f"<style>{pages.STYLE}</style>" in page
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
        assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
        assert "<link" not in page
        assert "<script" not in page


def test_the_links_each_refusal_offers() -> None:
    def shown(exc: RequestError, status: int) -> list[tuple[str, str]]:
        _, _, links = errorpage.html_page(status, exc)
        return [(link.id, link.href) for link in links]

    assert shown(Unauthenticated(return_to="/a?b=1"), 401) == [
        ("sign-in", "/.iap/login?rd=%2Fa%3Fb%3D1")
    ]
    assert shown(Forbidden(return_to="/adm"), 403) == [
        ("switch-account", "/.iap/login?rd=%2Fadm&prompt=select_account")
    ]
    for reason, retry in [
        ("login_refused:tenant", False),
        ("login_refused:groups_overage", False),
        ("login_refused:expired", True),
        ("login_refused:state", True),
        ("login_refused:replayed", True),
        ("login_refused:idp_error", True),
        ("login_refused:signature", True),
    ]:
        expected = [("retry", "/.iap/login?rd=%2F")] if retry else []
        assert shown(SignInFailed(reason=reason), 403) == expected, reason


def test_the_json_answer_is_unchanged_by_the_page() -> None:
    answer = errorpage.error_response(
        403, "sign_in_failed", SignInFailed.public, "c", "application/json",
        refusal=SignInFailed(reason="login_refused:tenant"), viewer=HOSTILE,
    )  # fmt: skip
    assert answer.text == (
        '{"error": "sign_in_failed", "message": "Sign-in failed. Please try again.", '
        '"correlation_id": "c"}'
    )


def test_routes_listed_are_those_the_decision_allows() -> None:
    user = Identity("t:o", "t", "o", "U", None, None, roles=(), groups=())
    admin = Identity("t:a", "t", "a", "A", None, None, roles=("admin",), groups=())
    assert [r.name for r in reachable(ROUTES, user, "127.0.0.1", {})] == ["app", "public"]
    assert [r.name for r in reachable(ROUTES, admin, "127.0.0.1", {})] == [
        "admin",
        "app",
        "public",
    ]
