"""iap.domain.signin_flow: the browser sign-in as pure steps, values in and values out
(SPEC §7 Login, Sessions). No sockets, no loop: the IdP's answers are plain values here."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import idtoken
from iap.domain import signin_flow as flow
from iap.domain.login import MAX_AGE, MAX_PENDING, PendingLogin
from iap.domain.redirects import RedirectPolicy
from iap.domain.session import Session, new_session
from iap.domain.signin_flow import RelyingParty, TokenResponse
from iap.model import Identity

NOW = 1_700_000_000
TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "00000000-0000-0000-66f3-3332eca7ea81"
AUTHORIZE = "https://login.example.test/t/oauth2/v2.0/authorize"
END_SESSION = "https://login.example.test/t/oauth2/v2.0/logout"


def counter_random() -> Callable[[int], bytes]:
    """A deterministic random source: each call returns the next distinct bytes."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def rp(**overrides: Any) -> RelyingParty:
    values: dict[str, Any] = {
        "client_id": "client-1",
        "public_url": "https://iap.example.test",
        "scopes": ("openid", "profile"),
        "response_mode": "query",
        "allowed_tenants": [TID],
        "clock_skew": 120,
        "groups_overage": "graph",
        "roles_map": {"App.Admin": "admin", "g-staff": "staff"},
        "relevant_groups": frozenset({"g-staff", "g-policy"}),
        "redirects": RedirectPolicy("https://iap.example.test", ["app.example.test"]),
    }
    values.update(overrides)
    return RelyingParty(**values)


def started(
    pending: list[PendingLogin] | None = None,
    rd: str = "/app",
    random: Callable[[int], bytes] | None = None,
) -> flow.LoginStarted:
    return flow.start_login(
        rp(),
        authorize_endpoint=AUTHORIZE,
        rd=rd,
        pending=pending or [],
        now=NOW,
        random=random or counter_random(),
    )


def two_logins() -> list[PendingLogin]:
    """Two logins in flight in one browser (parallel tabs)."""
    random = counter_random()
    return started(started(random=random).pending, random=random).pending


def claims(**extra: Any) -> idtoken.Claims:
    raw = {"tid": TID, "oid": OID, "sub": "s", **extra}
    return idtoken.Claims(
        tid=TID,
        oid=OID,
        sub="s",
        name=None,
        email=None,
        preferred_username=None,
        groups=tuple(raw.get("groups", ())),
        roles=tuple(raw.get("roles", ())),
        sid=raw.get("sid"),
        raw=MappingProxyType(raw),
    )


TOKENS = TokenResponse(
    id_token="id.token.x", access_token="at", refresh_token="rt", expires_in=3600
)


# --- login ---------------------------------------------------------------------------------


def test_a_login_redirects_to_the_idp_with_pkce_and_is_remembered() -> None:
    step = started()
    query = parse_qs(urlsplit(step.url).query)
    assert step.url.startswith(AUTHORIZE + "?")
    assert query["redirect_uri"] == ["https://iap.example.test/.iap/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert [login.state for login in step.pending] == query["state"]
    assert step.pending[0].rd == "/app"
    assert step.pending[0].issued == NOW


@pytest.mark.parametrize("rd", ["", "//evil.test", "https://evil.test/x", "/\\evil.test"])
def test_an_unsafe_rd_is_remembered_as_the_root(rd: str) -> None:
    assert started(rd=rd).pending[0].rd == "/"


def test_parallel_logins_keep_the_newest() -> None:
    pending: list[PendingLogin] = []
    random = counter_random()
    for _ in range(MAX_PENDING + 2):
        pending = started(pending, random=random).pending
    assert len({login.state for login in pending}) == MAX_PENDING
    assert len(pending) == MAX_PENDING


def test_long_or_non_text_parameters_read_as_absent() -> None:
    assert flow.param({"rd": "x" * (flow.MAX_PARAM + 1)}, "rd") == ""
    assert flow.param({"rd": ["/a"]}, "rd") == ""
    assert flow.param({}, "rd") == ""
    assert flow.param({"rd": "/a"}, "rd") == "/a"


# --- callback ------------------------------------------------------------------------------


def test_a_matching_callback_redeems_and_spends_its_state() -> None:
    pending = two_logins()
    login = pending[0]
    step = flow.callback({"state": login.state, "code": "c"}, pending, now=NOW + 5)
    assert isinstance(step, flow.RedeemCode)
    assert (step.code, step.login) == ("c", login)
    assert step.remaining == pending[1:]
    assert step.replay_key.startswith("login-state:")
    assert login.state not in step.replay_key  # a digest, not the state itself


def test_a_spent_state_never_redeems_twice() -> None:
    pending = started().pending
    query = {"state": pending[0].state, "code": "c"}
    first = flow.callback(query, pending, now=NOW)
    assert isinstance(first, flow.RedeemCode)
    again = flow.callback(query, first.remaining, now=NOW)
    assert again == flow.Refused("state")


def test_the_replay_key_names_the_state_alone() -> None:
    one, other = started().pending, started().pending  # the same random source: same state
    a = flow.callback({"state": one[0].state, "code": "1"}, one, now=NOW)
    b = flow.callback({"state": other[0].state, "code": "2"}, other, now=NOW)
    assert isinstance(a, flow.RedeemCode)
    assert isinstance(b, flow.RedeemCode)
    assert a.replay_key == b.replay_key


QUERY = st.dictionaries(
    st.sampled_from(["state", "code", "error", "session_state", "iss", "x"]),
    st.text(max_size=20) | st.lists(st.text(max_size=5), max_size=2),
    max_size=6,
)


@given(QUERY)
def test_a_callback_whose_state_matches_no_pending_login_is_refused(
    query: dict[str, Any],
) -> None:
    pending = started().pending
    if query.get("state") == pending[0].state:
        return
    step = flow.callback(query, pending, now=NOW)
    assert not isinstance(step, flow.RedeemCode)
    if isinstance(step, flow.Refused):
        assert step.remaining is None  # nothing was spent: the cookie stays as it is


@given(QUERY)
def test_without_pending_logins_nothing_redeems(query: dict[str, Any]) -> None:
    assert not isinstance(flow.callback(query, [], now=NOW), flow.RedeemCode)


def test_an_idp_error_spends_the_login_it_names() -> None:
    pending = two_logins()
    step = flow.callback({"error": "access_denied", "state": pending[1].state}, pending, now=NOW)
    assert step == flow.Refused("idp_error", pending[:1])
    assert step.audit == "login_refused:idp_error"
    unknown = flow.callback({"error": "access_denied", "state": "nope"}, pending, now=NOW)
    assert unknown == flow.Refused("idp_error")


def test_a_callback_without_state_or_code_is_malformed() -> None:
    pending = started().pending
    assert isinstance(flow.callback({"state": pending[0].state}, pending, now=NOW), flow.Malformed)
    assert isinstance(flow.callback({"code": "c"}, pending, now=NOW), flow.Malformed)


def test_a_login_older_than_its_max_age_is_refused() -> None:
    pending = started().pending
    query = {"state": pending[0].state, "code": "c"}
    assert flow.callback(query, pending, now=NOW + MAX_AGE + 1) == flow.Refused("expired")


# --- tokens to a session -------------------------------------------------------------------


def test_a_code_grant_without_an_id_token_is_refused() -> None:
    tokens = TokenResponse(id_token=None, access_token="a", refresh_token=None, expires_in=60)
    assert flow.id_token_of(tokens) == flow.Refused("no_id_token")
    assert flow.id_token_of(TOKENS) == "id.token.x"


def test_the_identity_maps_roles_and_keeps_groups() -> None:
    found = flow.identity(rp(), TOKENS, claims(roles=["App.Admin"], groups=["g-staff"]))
    assert isinstance(found, Identity)
    assert found.subject == f"{TID}:{OID}"
    assert found.roles == ("admin", "staff")
    assert found.groups == ("g-staff",)


def test_groups_overage_asks_graph_then_uses_its_groups() -> None:
    overage = claims(_claim_names={"groups": "src1"})
    assert flow.identity(rp(), TOKENS, overage) == flow.NeedGroups("at")
    found = flow.identity(rp(), TOKENS, overage, ["g-staff"])
    assert isinstance(found, Identity)
    assert found.groups == ("g-staff",)
    assert found.roles == ("staff",)


def test_groups_overage_is_refused_when_denied_or_without_an_access_token() -> None:
    overage = claims(_claim_names={"groups": "src1"})
    refused = flow.Refused("groups_overage")
    assert flow.identity(rp(groups_overage="deny"), TOKENS, overage) == refused
    no_access = TokenResponse(id_token="t", access_token=None, refresh_token=None, expires_in=1)
    assert flow.identity(rp(), no_access, overage) == refused


def test_past_the_bound_a_session_keeps_only_the_groups_decisions_use() -> None:
    many = [f"g-{n}" for n in range(flow.MAX_SESSION_GROUPS)] + ["g-staff", "g-policy"]
    found = flow.identity(rp(), TOKENS, claims(groups=many))
    assert isinstance(found, Identity)
    assert found.groups == ("g-staff", "g-policy")
    bounded = flow.identity(rp(), TOKENS, claims(groups=many[: flow.MAX_SESSION_GROUPS]))
    assert isinstance(bounded, Identity)
    assert len(bounded.groups) == flow.MAX_SESSION_GROUPS


def test_malformed_claims_are_refused() -> None:
    assert flow.identity(rp(), TOKENS, claims(tid="a:b")) == flow.Refused("claims")


def test_a_sign_in_makes_a_new_session_and_validates_the_target_again() -> None:
    pending = started(rd="/app?x=1").pending
    redeem = flow.callback({"state": pending[0].state, "code": "c"}, pending, now=NOW)
    assert isinstance(redeem, flow.RedeemCode)
    found = flow.identity(rp(), TOKENS, claims(sid="idp-sid"))
    assert isinstance(found, Identity)
    done = flow.signed_in(rp(), redeem, TOKENS, claims(sid="idp-sid"), found, now=NOW,
                          random=counter_random())  # fmt: skip
    assert done.target == "/app?x=1"
    session = done.session
    assert (session.identity, session.sid, session.id_token) == (found, "idp-sid", "id.token.x")
    assert (session.refresh_token, session.created, session.seen) == ("rt", NOW, NOW)
    other = flow.signed_in(
        rp(), redeem, TOKENS, claims(), found, now=NOW, random=lambda n: b"\1" * n
    )
    assert other.session.id != session.id


def test_id_token_check_validates_with_the_relying_partys_settings() -> None:
    check = flow.id_token_check(rp(), "not-a-token", issuer="https://i/v2.0", nonce="n", now=NOW)
    with pytest.raises(idtoken.InvalidIdToken) as caught:
        check({"keys": []})
    assert caught.value.reason == "malformed"


# --- the session on each request -----------------------------------------------------------

POLICY = flow.SessionPolicy(lifetime=8 * 3600, idle_timeout=3600)


def session(**overrides: Any) -> Session:
    identity = Identity(f"{TID}:{OID}", TID, OID, None, None, None, (), ())
    made = new_session(identity, sid=None, id_token="t", refresh_token="rt", expires_in=3600,
                       now=NOW, random=counter_random())  # fmt: skip
    return Session(**{**{name: getattr(made, name) for name in Session.__slots__}, **overrides})


@pytest.mark.parametrize(
    ("moved", "expected"),
    [
        (0, flow.Keep()),
        (8 * 3600, flow.Ended("session_expired")),
        (3600, flow.Ended("session_idle")),
        (3600 - 300, flow.Refresh()),
    ],
)
def test_the_session_check(moved: int, expected: object) -> None:
    assert flow.session_check(POLICY, session(), now=NOW + moved) == expected


def test_a_session_seen_long_enough_ago_is_touched() -> None:
    step = flow.session_check(POLICY, session(), now=NOW + 600)
    assert step == flow.Touch(session(seen=NOW + 600))


@given(st.integers(min_value=0, max_value=10 * 3600))
def test_a_session_past_its_lifetime_always_ends(moved: int) -> None:
    step = flow.session_check(POLICY, session(), now=NOW + moved)
    if moved >= POLICY.lifetime:
        assert step == flow.Ended("session_expired")
    if isinstance(step, flow.Keep | flow.Touch):
        assert moved < POLICY.idle_timeout


def test_a_refresh_needs_a_refresh_token_and_keeps_the_user() -> None:
    with pytest.raises(ValueError, match="no refresh token"):
        flow.refresh_token(session(refresh_token=None))
    assert flow.refresh_token(session()) == "rt"
    old = session()
    fresh = flow.refreshed(old, TOKENS, old.identity, now=NOW + 10)
    assert (fresh.generation, fresh.seen, fresh.created) == (1, NOW + 10, NOW)
    stranger = Identity("t:other", "t", "other", None, None, None, (), ())
    with pytest.raises(ValueError, match="another user"):
        flow.refreshed(old, TOKENS, stranger, now=NOW + 10)


# --- logout, front-channel logout, userinfo ------------------------------------------------


def test_logout_without_an_end_session_endpoint_goes_to_the_validated_target() -> None:
    params = {"rd": "https://evil.test/"}
    assert flow.logout(rp(), params, session=None, end_session_endpoint=None) == "/"
    params = {"post_logout_redirect_uri": "/bye", "rd": "/other"}
    assert flow.logout(rp(), params, session=None, end_session_endpoint=None) == "/bye"


def test_logout_at_the_idp_names_the_session_and_where_to_come_back() -> None:
    location = flow.logout(
        rp(), {"rd": "/bye"}, session=session(), end_session_endpoint=END_SESSION
    )
    assert location.startswith(END_SESSION + "?")
    query = parse_qs(urlsplit(location).query)
    assert query == {
        "post_logout_redirect_uri": ["https://iap.example.test/bye"],
        "id_token_hint": ["t"],
        "client_id": ["client-1"],
    }
    joined = flow.logout(rp(), {}, session=None, end_session_endpoint=END_SESSION + "?p=1")
    assert joined.startswith(END_SESSION + "?p=1&post_logout_redirect_uri=")
    assert "id_token_hint" not in joined


@pytest.mark.parametrize(
    ("sid", "expected"),
    [("abc-1._:", "abc-1._:"), ("", None), ("a b", None), ("x" * 129, None), ("é", None)],
)
def test_frontchannel_sid(sid: str, expected: str | None) -> None:
    assert flow.frontchannel_sid({"sid": sid}) == expected


def test_userinfo_shows_the_identity_and_never_a_token() -> None:
    body = flow.userinfo(session().identity, session(), lifetime=POLICY.lifetime)
    assert body["sub"] == f"{TID}:{OID}"
    assert body["session_expires_at"] == NOW + 8 * 3600
    assert "rt" not in body.values()
    assert "t" not in body.values()
