"""iap.domain.login: PKCE authorization request, pending logins, identity (SPEC §6, §7)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import sealing
from iap.domain.login import (
    LOGIN_STATE_PURPOSE,
    Identity,
    LoginRefused,
    PendingLogin,
    add_pending,
    decode_pending,
    encode_pending,
    identity_from_claims,
    new_login,
    s256_challenge,
    state_key,
    take_pending,
)

NOW = 1_700_000_000
AUTHORIZE = "https://login.microsoftonline.com/tenant/oauth2/v2.0/authorize"
BASE64URL_43 = re.compile(r"[A-Za-z0-9_-]{43}")
TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "00000000-0000-0000-66f3-3332eca7ea81"


def _login(**overrides: object) -> tuple[str, PendingLogin]:
    args: dict[str, object] = {
        "authorize_endpoint": AUTHORIZE,
        "client_id": "client-1",
        "redirect_uri": "https://iap.example.com/.iap/callback",
        "scopes": ["openid", "profile", "email", "offline_access"],
        "rd": "/app?x=1",
        "now": NOW,
        "random": os.urandom,
    }
    args.update(overrides)
    return new_login(**args)  # type: ignore[arg-type]


def _pending(state: str, issued: int = NOW) -> PendingLogin:
    return PendingLogin(
        state=state, nonce="n-" + state, verifier="v-" + state, rd="/", issued=issued
    )


def _challenge(verifier: str) -> str:
    """RFC 7636 §4.2, computed independently of the module."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


# --- Authorization request ---------------------------------------------------------------


def test_url_carries_every_parameter_and_the_s256_challenge() -> None:
    url, pending = _login()
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE
    query = parse_qs(parts.query, strict_parsing=True)
    assert all(len(values) == 1 for values in query.values())
    params = {name: values[0] for name, values in query.items()}
    assert params == {
        "response_type": "code",
        "client_id": "client-1",
        "redirect_uri": "https://iap.example.com/.iap/callback",
        "scope": "openid profile email offline_access",
        "state": pending.state,
        "nonce": pending.nonce,
        "code_challenge": _challenge(pending.verifier),
        "code_challenge_method": "S256",
        "response_mode": "query",
    }
    assert pending.rd == "/app?x=1"
    assert pending.issued == NOW


def test_scope_is_one_space_separated_parameter() -> None:
    url, _ = _login()
    assert parse_qs(urlsplit(url).query)["scope"] == ["openid profile email offline_access"]
    assert " " not in url


def test_form_post_response_mode() -> None:
    url, _ = _login(response_mode="form_post")
    assert parse_qs(urlsplit(url).query)["response_mode"] == ["form_post"]


def test_existing_query_on_the_endpoint_is_kept() -> None:
    url, _ = _login(authorize_endpoint=AUTHORIZE + "?p=b2c_1_signin")
    query = parse_qs(urlsplit(url).query)
    assert query["p"] == ["b2c_1_signin"]
    assert query["response_type"] == ["code"]


def test_s256_challenge_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@given(st.text(alphabet="ABCXYZabcxyz0189-._~", min_size=43, max_size=128))
def test_s256_challenge_agrees_with_authlib(verifier: str) -> None:
    from authlib.oauth2.rfc7636 import (  # type: ignore[import-untyped]
        create_s256_code_challenge,
    )

    assert s256_challenge(verifier) == create_s256_code_challenge(verifier)


def test_state_nonce_verifier_are_fresh_and_high_entropy() -> None:
    logins = [_login()[1] for _ in range(20)]
    values = [v for p in logins for v in (p.state, p.nonce, p.verifier)]
    assert len(set(values)) == len(values)
    for value in values:
        assert BASE64URL_43.fullmatch(value)  # 32 bytes; RFC 7636 §4.1 needs 43..128 chars
        assert len(base64.urlsafe_b64decode(value + "=")) == 32


def test_values_come_from_the_random_source() -> None:
    counter = itertools.count()

    def fake(n: int) -> bytes:
        return bytes([next(counter)]) * n

    _, pending = _login(random=fake)
    assert base64.urlsafe_b64decode(pending.state + "=") == b"\x00" * 32
    assert base64.urlsafe_b64decode(pending.nonce + "=") == b"\x01" * 32
    assert base64.urlsafe_b64decode(pending.verifier + "=") == b"\x02" * 32


def test_a_short_random_source_is_refused() -> None:
    with pytest.raises(ValueError, match="random source"):
        _login(random=lambda n: b"\x00" * (n - 1))


# --- Pending logins ------------------------------------------------------------------------


def test_parallel_logins_take_the_middle_and_keep_the_others() -> None:
    a, b, c = _pending("a"), _pending("b"), _pending("c")
    pending = add_pending(add_pending(add_pending([], a), b), c)
    found, rest = take_pending(pending, state="b", now=NOW + 10)
    assert found == b
    assert rest == [a, c]


def test_a_replayed_state_is_refused() -> None:
    pending = [_pending("a"), _pending("b")]
    _, rest = take_pending(pending, state="a", now=NOW)
    with pytest.raises(LoginRefused) as info:
        take_pending(rest, state="a", now=NOW)
    assert info.value.reason == "state"


@pytest.mark.parametrize("state", ["x", "", "A", "a ", "é", "\ud800"])
def test_a_wrong_state_is_refused_with_a_generic_message(state: str) -> None:
    with pytest.raises(LoginRefused) as info:
        take_pending([_pending("a")], state=state, now=NOW)
    assert info.value.reason == "state"
    assert str(info.value) == "login refused"


def test_no_pending_logins_refuses() -> None:
    with pytest.raises(LoginRefused) as info:
        take_pending([], state="a", now=NOW)
    assert info.value.reason == "state"


def test_an_expired_login_is_refused() -> None:
    pending = [_pending("a", issued=NOW - 601)]
    with pytest.raises(LoginRefused) as info:
        take_pending(pending, state="a", now=NOW)
    assert info.value.reason == "expired"
    assert str(info.value) == "login refused"


def test_a_login_at_exactly_max_age_is_accepted() -> None:
    found, rest = take_pending([_pending("a", issued=NOW - 60)], state="a", now=NOW, max_age=60)
    assert found.state == "a"
    assert rest == []


def test_the_cap_drops_the_oldest() -> None:
    pending: list[PendingLogin] = []
    for index in range(7):
        pending = add_pending(pending, _pending(str(index)))
    assert [p.state for p in pending] == ["2", "3", "4", "5", "6"]
    assert [p.state for p in add_pending(pending, _pending("7"), max_pending=2)] == ["6", "7"]
    with pytest.raises(ValueError):
        add_pending(pending, _pending("8"), max_pending=0)


def test_add_pending_does_not_mutate_its_input() -> None:
    existing = [_pending("a")]
    add_pending(existing, _pending("b"))
    assert existing == [_pending("a")]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"{}",
        b"[1]",
        b"[[]]",
        b'[{"state":"a"}]',
        b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":"1"}]',
        b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":true}]',
        b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":-1}]',
        b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":1.5}]',
        b'[{"state":"","nonce":"n","verifier":"v","rd":"/","issued":1}]',
        b'[{"state":1,"nonce":"n","verifier":"v","rd":"/","issued":1}]',
        b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":1,"extra":0}]',
        b"[" * 100_000,
    ],
)
def test_decoding_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed login state"):
        decode_pending(data)


def test_decoding_the_well_formed_shape_works() -> None:
    data = b'[{"state":"a","nonce":"n","verifier":"v","rd":"/","issued":1}]'
    assert decode_pending(data) == [PendingLogin("a", "n", "v", "/", 1)]


_text = st.text(min_size=1, max_size=40)
_pending_logins = st.builds(
    PendingLogin,
    state=_text,
    nonce=_text,
    verifier=_text,
    rd=_text,
    issued=st.integers(min_value=0, max_value=2**63),
)


@given(st.lists(_pending_logins, max_size=8))
def test_encode_decode_round_trip(pending: list[PendingLogin]) -> None:
    data = encode_pending(pending)
    assert isinstance(json.loads(data), list)
    assert decode_pending(data) == pending


def test_sealed_cookie_round_trip_and_purpose_binding() -> None:
    ring = sealing.Keyring([bytes(range(32))])
    pending = add_pending([], _login()[1])
    token = sealing.seal(
        ring, encode_pending(pending), purpose=LOGIN_STATE_PURPOSE, now=NOW, random=os.urandom
    )
    opened = sealing.open(ring, token, purpose=LOGIN_STATE_PURPOSE, now=NOW, max_age=600)
    assert decode_pending(opened) == pending
    with pytest.raises(sealing.SealError):
        sealing.open(ring, token, purpose=b"session", now=NOW, max_age=600)


# --- Identity ------------------------------------------------------------------------------


def _claims(**extra: object) -> dict[str, object]:
    return {"tid": TID, "oid": OID, "sub": "pairwise-sub", **extra}


def test_identity_is_keyed_by_tid_and_oid() -> None:
    identity = identity_from_claims(
        _claims(name="Ada", email="ada@example.com", preferred_username="ada@example.com"),
        roles_map={},
    )
    assert identity == Identity(
        subject=f"{TID}:{OID}",
        tid=TID,
        oid=OID,
        name="Ada",
        email="ada@example.com",
        preferred_username="ada@example.com",
        roles=(),
        groups=(),
    )


def test_roles_and_groups_are_mapped_deduplicated_and_sorted() -> None:
    roles_map = {
        "App.Admin": "admin",
        "App.Reader": "staff",
        "g-1111": "staff",
        "g-2222": "billing",
        "g-unused": "nobody",
    }
    identity = identity_from_claims(
        _claims(
            roles=["App.Reader", "App.Admin", "App.Unknown"], groups=["g-2222", "g-1111", "g-9"]
        ),
        roles_map=roles_map,
    )
    assert identity.roles == ("admin", "billing", "staff")
    assert identity.groups == ("g-2222", "g-1111", "g-9")


def test_unmapped_roles_grant_nothing() -> None:
    identity = identity_from_claims(_claims(roles=["admin"], groups=["admin"]), roles_map={})
    assert identity.roles == ()


def test_email_is_never_the_key() -> None:
    one = identity_from_claims(_claims(email="same@example.com"), roles_map={})
    other = identity_from_claims(
        {**_claims(email="same@example.com"), "oid": "another-oid"}, roles_map={}
    )
    assert one.subject != other.subject


@pytest.mark.parametrize(
    "claims",
    [
        {"tid": TID},
        {"oid": OID},
        {"tid": TID, "oid": ""},
        {"tid": "", "oid": OID},
        {"tid": TID, "oid": 5},
        {"tid": "a:b", "oid": OID},
        {"tid": TID, "oid": OID, "email": ["x"]},
        {"tid": TID, "oid": OID, "roles": "admin"},
        {"tid": TID, "oid": OID, "groups": [1]},
        {"email": "ada@example.com", "sub": "x"},
    ],
)
def test_incomplete_or_malformed_claims_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(LoginRefused) as info:
        identity_from_claims(claims, roles_map={"admin": "admin"})
    assert info.value.reason == "claims"
    assert str(info.value) == "login refused"


def test_the_state_key_is_a_digest_never_the_state() -> None:
    state = "s" * 43
    key = state_key(state)
    assert key == state_key(state)
    assert key.startswith("login-state:")
    assert state not in key
    assert key != state_key(state + "x")
