"""iap.domain.ratelimit: counting keys, quotas and the draft-11 RateLimit headers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain.ratelimit import KeyKind, Quota, headers, key_for

# --- keys ------------------------------------------------------------------------------


def test_default_kind_is_subject_when_known_else_client() -> None:
    known = key_for(None, route="orders", subject="t:o", client="10.0.0.1")
    anonymous = key_for(None, route="orders", subject=None, client="10.0.0.1")
    assert known == key_for("subject", route="orders", subject="t:o", client="10.0.0.9")
    assert anonymous == key_for("client", route="orders", subject="t:o", client="10.0.0.1")
    assert known != anonymous


def test_empty_subject_is_anonymous() -> None:
    assert key_for("subject", route="r", subject="", client="::1") == key_for(
        "client", route="r", subject=None, client="::1"
    )


def test_client_kind_ignores_the_subject() -> None:
    one = key_for("client", route="r", subject="alice", client="10.0.0.1")
    assert one == key_for("client", route="r", subject="bob", client="10.0.0.1")
    assert one != key_for("client", route="r", subject="alice", client="10.0.0.2")


def test_route_kind_is_one_bucket_per_route() -> None:
    one = key_for("route", route="r", subject="alice", client="10.0.0.1")
    assert one == key_for("route", route="r", subject=None, client="10.0.0.2")
    assert one != key_for("route", route="r2", subject="alice", client="10.0.0.1")


def test_a_subject_spelled_like_an_address_is_not_that_address() -> None:
    as_subject = key_for("subject", route="r", subject="10.0.0.1", client="10.0.0.2")
    as_client = key_for("client", route="r", subject=None, client="10.0.0.1")
    assert as_subject != as_client


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # A route name that ends like a tag cannot borrow another route's bucket.
        (("a:s", "x"), ("a", "s:x")),
        (("1:a", "b"), ("1", "a:b")),
        (("a\x00s\x00", "b"), ("a", "\x00s\x00b")),
    ],
)
def test_route_and_subject_boundaries_do_not_shift(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    keys = {
        key_for("subject", route=route, subject=subject, client="c")
        for route, subject in (first, second)
    }
    assert len(keys) == 2


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rate-limit key kind"):
        key_for("tenant", route="r", subject="s", client="c")  # type: ignore[arg-type]


_kinds = st.sampled_from([None, "subject", "client", "route"])
_text = st.text(max_size=12)


def _bucket(kind: KeyKind | None, route: str, subject: str | None, client: str) -> tuple[str, ...]:
    """What a key must identify, written independently of ``key_for``."""
    if kind == "route":
        return (route, "route")
    if kind == "client" or not subject:
        return (route, "client", client)
    return (route, "subject", subject)


@given(
    a=st.tuples(_kinds, _text, st.none() | _text, _text),
    b=st.tuples(_kinds, _text, st.none() | _text, _text),
)
def test_keys_are_equal_exactly_when_buckets_are(
    a: tuple[KeyKind | None, str, str | None, str], b: tuple[KeyKind | None, str, str | None, str]
) -> None:
    def key(args: tuple[KeyKind | None, str, str | None, str]) -> str:
        kind, route, subject, client = args
        return key_for(kind, route=route, subject=subject, client=client)

    assert (key(a) == key(b)) == (_bucket(*a) == _bucket(*b))


# --- quotas ----------------------------------------------------------------------------


def test_burst_adds_capacity_to_the_window() -> None:
    quota = Quota(requests=100, per=60.0, burst=20)
    assert (quota.capacity, quota.window) == (120, 60)


@pytest.mark.parametrize(("per", "window"), [(0.2, 1), (1.0, 1), (1.5, 2), (90.01, 91)])
def test_windows_round_up_to_whole_seconds(per: float, window: int) -> None:
    assert Quota(requests=1, per=per).window == window


@pytest.mark.parametrize(
    ("requests", "per", "burst"), [(0, 1.0, 0), (1, 0.0, 0), (1, -1.0, 0), (1, 1.0, -1)]
)
def test_nonsense_quotas_are_refused(requests: int, per: float, burst: int) -> None:
    with pytest.raises(ValueError, match="quota"):
        Quota(requests=requests, per=per, burst=burst)


# --- headers ---------------------------------------------------------------------------

QUOTA = Quota(requests=100, per=60.0, burst=20)


def test_headers_of_an_allowed_request() -> None:
    assert headers(limit=QUOTA, remaining=57, reset_after=12.3) == [
        ("RateLimit-Policy", '"default";q=120;w=60'),
        ("RateLimit", '"default";r=57;t=13'),
    ]


def test_a_refusal_adds_retry_after_no_earlier_than_the_window() -> None:
    fields = dict(headers(limit=QUOTA, remaining=0, reset_after=4.2, refused=True))
    assert fields["RateLimit"] == '"default";r=0;t=5'
    assert fields["Retry-After"] == "5"


@pytest.mark.parametrize("reset_after", [0.0, 0.001, -3.0])
def test_retry_after_is_at_least_one_second(reset_after: float) -> None:
    fields = dict(headers(limit=QUOTA, remaining=0, reset_after=reset_after, refused=True))
    assert fields["Retry-After"] == "1"
    assert re.fullmatch(r'"default";r=0;t=[01]', fields["RateLimit"])


def test_remaining_is_clamped_to_the_quota() -> None:
    low = dict(headers(limit=QUOTA, remaining=-4, reset_after=1.0))
    high = dict(headers(limit=QUOTA, remaining=500, reset_after=1.0))
    assert low["RateLimit"] == '"default";r=0;t=1'
    assert high["RateLimit"] == '"default";r=120;t=1'


_SF_POLICY = re.compile(r'"default";q=\d+;w=[1-9]\d*')
_SF_LIMIT = re.compile(r'"default";r=\d+;t=\d+')


@given(
    requests=st.integers(1, 10**6),
    burst=st.integers(0, 10**6),
    per=st.floats(0.001, 10**7),
    remaining=st.integers(-(10**6), 10**7),
    reset_after=st.floats(-1e3, 1e7),
    refused=st.booleans(),
)
def test_headers_are_always_draft_integers(
    requests: int, burst: int, per: float, remaining: int, reset_after: float, refused: bool
) -> None:
    fields = dict(
        headers(
            limit=Quota(requests, per, burst),
            remaining=remaining,
            reset_after=reset_after,
            refused=refused,
        )
    )
    assert _SF_POLICY.fullmatch(fields["RateLimit-Policy"])
    assert _SF_LIMIT.fullmatch(fields["RateLimit"])
    assert ("Retry-After" in fields) == refused
    if refused:
        t = int(fields["RateLimit"].rsplit("t=", 1)[1])
        assert int(fields["Retry-After"]) >= max(1, t)
