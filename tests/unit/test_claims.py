"""The typed claims reader (iap.domain.claims): each reader returns its type or refuses with
:class:`InvalidClaim` naming the claim, for any JSON value."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import claims as read
from iap.domain.claims import InvalidClaim

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def refused(claim: str, reader: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(InvalidClaim) as caught:
        reader(*args, **kwargs)
    assert caught.value.claim == claim


def test_aud_is_a_string_or_a_non_empty_list_of_strings() -> None:
    assert read.audiences({"aud": "a"}) == ("a",)
    assert read.audiences({"aud": ["a", "b"]}) == ("a", "b")
    for bad in (None, "", [], ["a", 1], ["a", ""], {"a": "b"}, 7, True, [["a"]]):
        refused("aud", read.audiences, {"aud": bad})


def test_text_claims_are_non_empty_strings_and_wrong_types_are_refused() -> None:
    assert read.text({"tid": "t"}, "tid") == "t"
    for bad in (None, "", 7, ["t"], {"t": 1}, False):
        refused("tid", read.text, {"tid": bad}, "tid")
    assert read.optional_text({}, "email") is None
    assert read.optional_text({"email": ""}, "email") is None
    assert read.optional_text({"email": None}, "email") is None
    for bad in (7, ["a@b"], {"x": "y"}, True):
        refused("email", read.optional_text, {"email": bad}, "email")


def test_lists_of_strings() -> None:
    assert read.texts({}, "roles") == ()
    assert read.texts({"roles": ["a", "b"]}, "roles") == ("a", "b")
    for bad in ("a", None, [1], ["a", None], {"a": 1}):
        refused("roles", read.texts, {"roles": bad}, "roles")


def test_scp_is_a_space_separated_string() -> None:
    assert read.scopes({}) is None
    assert read.scopes({"scp": "a b"}) == ("a", "b")
    refused("scp", read.scopes, {"scp": ["a"]})


@pytest.mark.parametrize("bad", [1.5, True, "1", None, [1]])
def test_times_are_integers(bad: object) -> None:
    valid = {"exp": 200, "iat": 100, "nbf": 100}
    assert read.check_times(valid, now=150, skew=0) == 200
    for name in ("exp", "iat"):
        refused(name, read.check_times, {**valid, name: bad}, now=150, skew=0)
    if bad is not None:  # nbf is optional: null reads as absent
        refused("nbf", read.check_times, {**valid, "nbf": bad}, now=150, skew=0)


def test_times_are_checked_within_the_skew() -> None:
    refused("exp", read.check_times, {"exp": 100, "iat": 0}, now=110, skew=10)
    assert read.check_times({"exp": 100, "iat": 0}, now=109, skew=10) == 100
    refused("nbf", read.check_times, {"exp": 900, "iat": 0, "nbf": 121}, now=110, skew=10)
    refused("iat", read.check_times, {"exp": 900, "iat": 121}, now=110, skew=10)


def test_act_chains_are_objects_with_a_sub_and_bounded() -> None:
    assert read.actor({}) is None
    chain = {"sub": "a", "act": {"sub": "b"}}
    assert read.actor({"act": chain}) == chain
    assert read.actor_depth(chain) == 2
    for bad in ([1], "a", {"client_id": "x"}, {"sub": 1}, {"sub": "a", "act": {"sub": None}}):
        refused("act", read.actor, {"act": bad})
    deep: dict[str, Any] = {"sub": "x"}
    for _ in range(read.MAX_ACT_DEPTH):
        deep = {"sub": "x", "act": deep}
    refused("act", read.actor, {"act": deep})


def test_checked_claims_keep_their_name_as_the_reason() -> None:
    assert InvalidClaim("aud").reason("claims") == "aud"
    assert InvalidClaim("exp").reason("malformed") == "exp"
    assert InvalidClaim("roles").reason("claims") == "claims"


@given(st.dictionaries(st.sampled_from(["aud", "tid", "roles", "scp", "act", "exp"]), JSON))
def test_no_json_value_makes_a_reader_raise_anything_else(claims: dict[str, Any]) -> None:
    readers = [
        lambda: read.audiences(claims),
        lambda: read.text(claims, "tid"),
        lambda: read.optional_text(claims, "tid"),
        lambda: read.texts(claims, "roles"),
        lambda: read.scopes(claims),
        lambda: read.actor(claims),
        lambda: read.check_times(claims, now=0, skew=0),
    ]
    for reader in readers:
        with contextlib.suppress(InvalidClaim):
            reader()


IDENTITY_CLAIMS = st.dictionaries(
    st.sampled_from(
        ["tid", "oid", "sub", "roles", "groups", "azp", "appid", "scp", "idtyp", "act", "name"]
    ),
    JSON,
)


@given(IDENTITY_CLAIMS)
def test_no_json_value_makes_an_identity_reader_raise_anything_else(
    claims: dict[str, Any],
) -> None:
    readers = [
        lambda: read.user(claims, roles_map={"r": "admin"}),
        lambda: read.minted(claims),
        lambda: read.entra_caller(claims, tid="t", roles_map={"r": "admin"}),
    ]
    for reader in readers:
        with contextlib.suppress(InvalidClaim):
            reader()


def test_every_entry_point_keys_a_user_by_tid_and_oid() -> None:
    claims = {"tid": "t", "oid": "o", "sub": "t:o", "roles": ["App.Admin"], "scp": "read"}
    roles = {"App.Admin": "admin"}
    assert read.user(claims, roles_map=roles).subject == "t:o"
    assert read.minted(claims).subject == "t:o"
    delegated, app = read.entra_caller({**claims, "azp": "app-1"}, tid="t", roles_map=roles)
    assert (delegated.subject, delegated.roles, delegated.azp, app) == (
        "t:o",
        ("admin",),
        None,
        "app-1",
    )
    service, app = read.entra_caller({"oid": "sp", "azp": "app-1"}, tid="t", roles_map=roles)
    assert (service.subject, service.azp, app) == ("t:app-1", "app-1", "app-1")
    refused("tid", read.user, {"tid": "a:b", "oid": "o"}, roles_map={})
    refused("azp", read.entra_caller, {"oid": "sp"}, tid="t", roles_map={})
    refused(
        "appid", read.entra_caller, {"oid": "o", "azp": "a", "appid": "b"}, tid="t", roles_map={}
    )


def test_roles_are_mapped_sorted_and_once() -> None:
    roles_map = {"b": "staff", "a": "admin", "c": "staff"}
    assert read.mapped_roles(["c", "b", "a", "x"], roles_map) == ("admin", "staff")


@given(st.text(max_size=200))
def test_reading_a_token_unverified_never_raises(token: str) -> None:
    assert isinstance(read.unverified(token), dict)


def test_reading_a_token_unverified_gives_its_claims() -> None:
    assert read.unverified("eyJhbGciOiJub25lIn0.eyJpc3MiOiJpIn0.") == {"iss": "i"}
    assert read.unverified("a.b") == {}
