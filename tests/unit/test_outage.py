"""iap.domain.outage: whether a session whose refresh failed goes on (the IdP outage grace).

The clock is an argument: each case names the second it decides at.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import outage
from iap.domain.outage import OnGrace, RefreshEnded, after_failed_refresh
from iap.domain.session import Session, new_session
from tests.support.identities import ALICE

NOW = 1_700_000_000
GRACE = 300


def due_session(refresh_at: int = NOW) -> Session:
    session = new_session(
        ALICE,
        sid=None,
        id_token="eyJ.id.sig",
        refresh_token="refresh-SECRET",
        expires_in=3600,
        now=refresh_at - 3300,
        random=lambda size: bytes(size),
    )
    return replace(session, refresh_at=refresh_at)


def test_an_unreachable_idp_lets_the_session_go_on_until_due_plus_grace() -> None:
    session = due_session()
    for now in (NOW, NOW + 1, NOW + GRACE - 1):
        assert after_failed_refresh(session, "unreachable", grace=GRACE, now=now) == OnGrace(
            NOW + GRACE
        )


def test_past_the_grace_the_session_ends() -> None:
    session = due_session()
    for now in (NOW + GRACE, NOW + GRACE + 1, NOW + 10 * GRACE):
        step = after_failed_refresh(session, "unreachable", grace=GRACE, now=now)
        assert step == RefreshEnded("session_refresh_unavailable")


def test_grace_zero_turns_it_off() -> None:
    step = after_failed_refresh(due_session(), "unreachable", grace=0, now=NOW)
    assert step == RefreshEnded(outage.GRACE_OVER_REASON)


@pytest.mark.parametrize("failure", ["refused", "invalid"])
def test_a_refused_or_bad_refresh_ends_at_once_whatever_the_grace(failure: str) -> None:
    step = after_failed_refresh(due_session(), failure, grace=3600, now=NOW)  # type: ignore[arg-type]
    assert step == RefreshEnded("session_refresh_failed")


def test_the_grace_counts_from_when_the_session_became_due_not_from_the_failure() -> None:
    session = due_session(refresh_at=NOW - GRACE)  # due five minutes ago, first failure now
    step = after_failed_refresh(session, "unreachable", grace=GRACE, now=NOW)
    assert step == RefreshEnded(outage.GRACE_OVER_REASON)


failures = st.sampled_from(["unreachable", "refused", "invalid"])


@given(
    refresh_at=st.integers(0, 2**40),
    late=st.integers(0, 10**6),
    grace=st.floats(0, 3600, allow_nan=False),
    failure=failures,
)
def test_never_beyond_due_plus_grace(
    refresh_at: int, late: int, grace: float, failure: outage.RefreshFailure
) -> None:
    now = refresh_at + late
    step = after_failed_refresh(due_session(refresh_at), failure, grace=grace, now=now)
    if isinstance(step, OnGrace):
        assert failure == "unreachable"
        assert now < step.until <= refresh_at + grace
    else:
        assert late >= int(grace) or failure != "unreachable"


@given(
    refresh_at=st.integers(0, 2**40),
    late=st.integers(0, 10**6),
    grace=st.floats(0, 3600, allow_nan=False),
)
def test_a_refused_grant_always_ends(refresh_at: int, late: int, grace: float) -> None:
    step = after_failed_refresh(
        due_session(refresh_at), "refused", grace=grace, now=refresh_at + late
    )
    assert step == RefreshEnded(outage.REFUSED_REASON)


@given(late=st.integers(0, 3599), grace=st.integers(1, 3600))
def test_within_the_grace_an_unreachable_idp_never_ends_it(late: int, grace: int) -> None:
    step = after_failed_refresh(due_session(), "unreachable", grace=grace, now=NOW + late)
    assert isinstance(step, OnGrace) == (late < grace)
