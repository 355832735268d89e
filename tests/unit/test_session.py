"""iap.domain.session: what a session holds, when it ends, and its encoding (SPEC §7)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import session as sessions
from iap.domain.login import identity_from_claims
from iap.domain.session import REFRESH_MARGIN, Session, decode, encode, new_session, refreshed
from iap.model import Identity
from tests.support.identities import ALICE as BASE_ALICE

NOW = 1_700_000_000
HOUR = 3600
LIFETIME = 8 * HOUR
IDLE = 30 * 60
ID_TOKEN = "eyJ.id-token-SECRET.sig"
REFRESH_TOKEN = "refresh-token-SECRET"

ALICE = dataclasses.replace(BASE_ALICE, groups=("00000000-0000-0000-0000-000000000001",))


def counting_random(size: int) -> bytes:
    return bytes(range(size))


def session_at(
    now: int = NOW, *, expires_in: int = HOUR, refresh_token: str | None = REFRESH_TOKEN
) -> Session:
    return new_session(
        ALICE,
        sid="sid-1",
        id_token=ID_TOKEN,
        refresh_token=refresh_token,
        expires_in=expires_in,
        now=now,
        random=os.urandom,
    )


def state(session: Session, now: int, *, lifetime: float = LIFETIME, idle: float = IDLE) -> str:
    return sessions.state(session, now=now, lifetime=lifetime, idle_timeout=idle)


# --- new_session ----------------------------------------------------------------------------


def test_new_session_starts_now_from_the_login_tokens() -> None:
    session = new_session(
        ALICE,
        sid="sid-1",
        id_token=ID_TOKEN,
        refresh_token=REFRESH_TOKEN,
        expires_in=HOUR,
        now=NOW,
        random=counting_random,
    )
    assert session.id == base64.urlsafe_b64encode(bytes(range(18))).decode()
    assert session.identity == ALICE
    assert session.sid == "sid-1"
    assert session.id_token == ID_TOKEN
    assert session.refresh_token == REFRESH_TOKEN
    assert (session.created, session.seen) == (NOW, NOW)
    assert session.refresh_at == NOW + HOUR - REFRESH_MARGIN
    assert session.generation == 0


def test_new_session_ids_are_random_and_url_safe() -> None:
    ids = {session_at().id for _ in range(64)}
    assert len(ids) == 64
    for session_id in ids:
        assert len(session_id) == 24  # 18 random bytes, base64url without padding
        assert set(session_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_new_session_asks_for_18_random_bytes() -> None:
    asked: list[int] = []

    def random(size: int) -> bytes:
        asked.append(size)
        return b"\x00" * size

    new_session(
        ALICE,
        sid=None,
        id_token=ID_TOKEN,
        refresh_token=None,
        expires_in=HOUR,
        now=NOW,
        random=random,
    )
    assert asked == [18]


@pytest.mark.parametrize(
    ("expires_in", "refresh_at"),
    [
        (HOUR, NOW + HOUR - 300),
        (301, NOW + 1),
        (300, NOW),
        (60, NOW),
        (0, NOW),
        (-5, NOW),
    ],
)
def test_refresh_at_is_five_minutes_early_but_never_before_now(
    expires_in: int, refresh_at: int
) -> None:
    assert session_at(expires_in=expires_in).refresh_at == refresh_at


# --- state ----------------------------------------------------------------------------------


def test_state_valid_until_the_first_deadline() -> None:
    session = session_at()
    assert state(session, NOW) == "valid"
    assert state(session, NOW + IDLE - 1) == "valid"
    assert state(session, session.refresh_at - 1, idle=LIFETIME) == "valid"


def test_state_expired_exactly_at_created_plus_lifetime() -> None:
    # seen and refresh_at kept recent: only the absolute deadline is due
    session = replace(session_at(), seen=NOW + LIFETIME - 1, refresh_at=NOW + 2 * LIFETIME)
    assert state(session, NOW + LIFETIME - 1) == "valid"
    assert state(session, NOW + LIFETIME) == "expired"
    assert state(session, NOW + 10 * LIFETIME) == "expired"


def test_state_idle_exactly_at_seen_plus_idle_timeout() -> None:
    session = replace(session_at(), refresh_at=NOW + LIFETIME)
    assert state(session, NOW + IDLE - 1) == "valid"
    assert state(session, NOW + IDLE) == "idle"


def test_state_stale_exactly_at_refresh_at() -> None:
    session = session_at()  # a long idle timeout: only refresh_at is due
    assert state(session, session.refresh_at - 1, idle=LIFETIME) == "valid"
    assert state(session, session.refresh_at, idle=LIFETIME) == "stale"


def test_state_precedence_expired_over_idle_over_stale() -> None:
    session = session_at(expires_in=0)  # stale from the start
    assert state(session, NOW) == "stale"
    assert state(session, NOW + IDLE) == "idle"  # idle and stale
    assert state(session, NOW + LIFETIME) == "expired"  # all three
    # expired and idle at the same instant: expired wins
    assert state(session, NOW + IDLE, lifetime=IDLE) == "expired"


@given(
    created=st.integers(0, 2**40),
    seen_after=st.integers(0, 10**6),
    refresh_after=st.integers(0, 10**6),
    at=st.integers(0, 2 * 10**6),
    lifetime=st.integers(1, 10**6),
    idle=st.integers(1, 10**6),
)
def test_state_is_the_first_deadline_reached_in_precedence_order(
    created: int, seen_after: int, refresh_after: int, at: int, lifetime: int, idle: int
) -> None:
    session = replace(
        session_at(),
        created=created,
        seen=created + seen_after,
        refresh_at=created + refresh_after,
    )
    now = created + at
    expected = (
        "expired"
        if now >= session.created + lifetime
        else "idle"
        if now >= session.seen + idle
        else "stale"
        if now >= session.refresh_at
        else "valid"
    )
    assert state(session, now, lifetime=lifetime, idle=idle) == expected


def test_expires_at_is_the_absolute_deadline() -> None:
    assert sessions.expires_at(session_at(), lifetime=LIFETIME) == NOW + LIFETIME


# --- touched --------------------------------------------------------------------------------


def test_touched_is_none_within_the_minimum_interval() -> None:
    session = session_at()
    assert sessions.touched(session, now=NOW, idle_timeout=IDLE) is None
    assert sessions.touched(session, now=NOW + 59, idle_timeout=IDLE) is None


def test_touched_writes_back_seen_after_the_interval() -> None:
    session = session_at()
    interval = IDLE // 10  # 180 s: more than the 60 s minimum
    assert sessions.touched(session, now=NOW + interval - 1, idle_timeout=IDLE) is None
    touched = sessions.touched(session, now=NOW + interval, idle_timeout=IDLE)
    assert touched == replace(session, seen=NOW + interval)


def test_touched_interval_is_at_least_sixty_seconds() -> None:
    session = session_at()
    short_idle = 120  # idle/10 = 12 s, below the minimum
    assert sessions.touched(session, now=NOW + 59, idle_timeout=short_idle) is None
    touched = sessions.touched(session, now=NOW + 60, idle_timeout=short_idle)
    assert touched is not None
    assert touched.seen == NOW + 60


def test_touched_changes_only_seen() -> None:
    session = session_at()
    touched = sessions.touched(session, now=NOW + HOUR, idle_timeout=IDLE)
    assert touched is not None
    assert replace(touched, seen=session.seen) == session


# --- refreshed ------------------------------------------------------------------------------


def test_refreshed_keeps_the_session_and_renews_the_tokens() -> None:
    session = session_at()
    later = NOW + HOUR
    new_identity = replace(ALICE, roles=("reader",), name="Alice B.")
    fresh = refreshed(
        session,
        identity=new_identity,
        id_token="new-id-token",
        refresh_token="new-refresh-token",
        expires_in=HOUR,
        now=later,
    )
    assert (fresh.id, fresh.created, fresh.sid) == (session.id, session.created, session.sid)
    assert fresh.identity == new_identity
    assert fresh.id_token == "new-id-token"
    assert fresh.refresh_token == "new-refresh-token"
    assert fresh.seen == later
    assert fresh.refresh_at == later + HOUR - REFRESH_MARGIN
    assert fresh.generation == session.generation + 1


def test_refreshed_bumps_the_generation_each_time() -> None:
    session = session_at()
    for expected in (1, 2, 3):
        session = refreshed(
            session, identity=ALICE, id_token=None, refresh_token=None, expires_in=HOUR, now=NOW
        )
        assert session.generation == expected


def test_refreshed_keeps_the_old_tokens_when_the_idp_returns_none() -> None:
    session = session_at()
    fresh = refreshed(
        session, identity=ALICE, id_token=None, refresh_token=None, expires_in=HOUR, now=NOW + 1
    )
    assert fresh.id_token == ID_TOKEN
    assert fresh.refresh_token == REFRESH_TOKEN


def test_refreshed_does_not_renew_the_absolute_deadline() -> None:
    session = session_at()
    fresh = refreshed(
        session,
        identity=ALICE,
        id_token=None,
        refresh_token=None,
        expires_in=HOUR,
        now=NOW + LIFETIME - 1,
    )
    assert state(fresh, NOW + LIFETIME) == "expired"


def test_refreshed_refuses_another_subject() -> None:
    mallory = replace(ALICE, subject="tid-1:oid-mallory", oid="oid-mallory")
    with pytest.raises(ValueError, match="another user"):
        refreshed(
            session_at(),
            identity=mallory,
            id_token="x",
            refresh_token="y",
            expires_in=HOUR,
            now=NOW + 1,
        )


# --- repr -----------------------------------------------------------------------------------


def test_repr_never_shows_the_tokens() -> None:
    session = session_at()
    for text in (repr(session), str(session), f"{session}", f"{session!r}", repr([session])):
        assert ID_TOKEN not in text
        assert REFRESH_TOKEN not in text
        assert "SECRET" not in text
    assert session.id in repr(session)
    assert ALICE.subject in repr(session)


# --- encode / decode ------------------------------------------------------------------------

# Required strings (ids, tid, oid, the ID token) are never empty; optional claims and the
# items of roles and groups may be, as a login accepts them.
texts = st.text(min_size=1, max_size=40)
optional_texts = st.none() | st.text(max_size=40)
items = st.text(max_size=40)
counters = st.integers(min_value=0, max_value=2**63)

identities = st.builds(
    Identity,
    subject=texts,
    tid=texts,
    oid=texts,
    name=optional_texts,
    email=optional_texts,
    preferred_username=optional_texts,
    roles=st.lists(items, max_size=5).map(tuple),
    groups=st.lists(st.uuids().map(str) | items, max_size=8).map(tuple),
)
session_values = st.builds(
    Session,
    id=texts,
    identity=identities,
    sid=optional_texts,
    id_token=texts,
    refresh_token=optional_texts,
    created=counters,
    seen=counters,
    refresh_at=counters,
    generation=counters,
)


@given(session_values)
def test_decode_inverts_encode(session: Session) -> None:
    assert decode(encode(session)) == session


def test_encode_is_compact_json_of_every_field() -> None:
    session = session_at()
    data = encode(session)
    assert b", " not in data  # no space after separators; ALICE's values have no ", " either
    assert b": " not in data
    value = json.loads(data)
    assert set(value) == set(Session.__slots__)
    assert set(value["identity"]) == set(Identity.__slots__)
    assert value["identity"]["roles"] == ["admin", "reader"]


@pytest.mark.parametrize(
    ("claims", "sid"),
    [
        ({"tid": "t", "oid": "o", "name": ""}, None),
        ({"tid": "t", "oid": "o", "email": ""}, None),
        ({"tid": "t", "oid": "o", "preferred_username": ""}, None),
        ({"tid": "t", "oid": "o", "groups": [""]}, None),
        ({"tid": "t", "oid": "o"}, ""),  # idtoken admits sid: ""
    ],
)
def test_a_session_of_any_identity_login_accepts_decodes(
    claims: dict[str, Any], sid: str | None
) -> None:
    """Login keeps empty optional claims; a session that cannot decode would never load."""
    identity = identity_from_claims(claims, roles_map={})
    session = new_session(
        identity,
        sid=sid,
        id_token=ID_TOKEN,
        refresh_token=None,
        expires_in=HOUR,
        now=NOW,
        random=os.urandom,
    )
    assert decode(encode(session)) == session


def _valid() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(encode(session_at()))
    return value


def _with(path: str, item: Any) -> bytes:
    value = _valid()
    target = value
    *parents, last = path.split(".")
    for parent in parents:
        target = target[parent]
    target[last] = item
    return json.dumps(value).encode()


def _without(path: str) -> bytes:
    value = _valid()
    target = value
    *parents, last = path.split(".")
    for parent in parents:
        target = target[parent]
    del target[last]
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="deeply-nested"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'"session"', id="string"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(_with("extra", 1), id="extra-key"),
        pytest.param(_with("identity.extra", "x"), id="extra-identity-key"),
        pytest.param(_without("generation"), id="missing-generation"),
        pytest.param(_without("sid"), id="missing-sid"),
        pytest.param(_without("identity.groups"), id="missing-groups"),
        pytest.param(_with("identity", None), id="identity-null"),
        pytest.param(_with("identity", []), id="identity-list"),
        pytest.param(_with("created", True), id="bool-for-int"),
        pytest.param(_with("generation", False), id="bool-generation"),
        pytest.param(_with("seen", -1), id="negative-int"),
        pytest.param(_with("refresh_at", 1.5), id="float-for-int"),
        pytest.param(_with("created", "1700000000"), id="string-for-int"),
        pytest.param(_with("created", None), id="null-int"),
        pytest.param(_with("id", ""), id="empty-id"),
        pytest.param(_with("id", 7), id="int-id"),
        pytest.param(_with("id_token", ""), id="empty-id-token"),
        pytest.param(_with("id_token", None), id="null-id-token"),
        pytest.param(_with("sid", ["s"]), id="list-sid"),
        pytest.param(_with("identity.subject", ""), id="empty-subject"),
        pytest.param(_with("identity.tid", ""), id="empty-tid"),
        pytest.param(_with("identity.oid", ""), id="empty-oid"),
        pytest.param(_with("identity.tid", None), id="null-tid"),
        pytest.param(_with("identity.name", 3), id="int-name"),
        pytest.param(_with("identity.roles", "admin"), id="string-roles"),
        pytest.param(_with("identity.roles", None), id="null-roles"),
        pytest.param(_with("identity.roles", {"admin": 1}), id="object-roles"),
        pytest.param(_with("identity.groups", [1]), id="int-group"),
        pytest.param(_with("identity.roles", [None]), id="null-role"),
        pytest.param(_with("identity.email", False), id="bool-email"),
        pytest.param(_with("refresh_token", 0), id="int-refresh-token"),
        pytest.param(_with("identity.groups", [["g"]]), id="nested-group"),
        pytest.param(b'{"created": 1e999}', id="huge-float"),
        pytest.param(_with("created", 7).replace(b": 7", b": " + b"7" * 5000), id="huge-int"),
    ],
)
def test_decode_rejects_anything_encode_does_not_write(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_decode_accepts_the_baseline_the_rejections_mutate() -> None:
    session = session_at()
    value = json.loads(encode(session))
    assert decode(json.dumps(value, indent=2).encode()) == session


def _decodes_or_value_error(data: bytes) -> None:
    try:
        session = decode(data)
    except ValueError:
        return
    # Anything decode admits is a Session that survives its own encoding.
    assert isinstance(session, Session)
    assert decode(encode(session)) == session


@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_is_a_session_or_value_error(data: bytes) -> None:
    _decodes_or_value_error(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD_PATHS = [f"identity.{name}" for name in Identity.__slots__] + [
    name for name in Session.__slots__ if name != "identity"
]


@given(st.sampled_from(FIELD_PATHS), json_values)
def test_decode_of_any_field_value_is_a_session_or_value_error(path: str, item: Any) -> None:
    _decodes_or_value_error(_with(path, item))


@given(session_values, st.data())
def test_decode_of_a_truncated_encoding_is_value_error(
    session: Session, data: st.DataObject
) -> None:
    encoded = encode(session)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ValueError):
        decode(encoded[:cut])
