"""What a signed-in session gets when its refresh fails: the IdP outage grace (SPEC §7
Sessions; THREAT_MODEL.md "Redis and IdP outages").

Invariants:
- Only a refresh that failed because the IdP could not be reached (``unreachable``: no
  connection, a timeout, a 5xx) may let the session go on, and only while ``now`` is before
  the moment the session became due for its refresh (``refresh_at``) plus ``grace``. Never
  past that, whatever ``now`` later turns out to be.
- A refresh the IdP refused (``refused``: ``invalid_grant`` or any other OAuth error answer)
  or that was unusable (``invalid``: a malformed answer, an ID token that does not verify,
  another user, no refresh token) ends the session at once, whatever ``grace`` is.
- ``grace`` 0 turns the grace off. The session the grace keeps is the one as loaded: its
  ``refresh_at`` does not move, so the next request tries the refresh again.
- Pure: no I/O, no clock of its own (``now`` is an argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from iap.domain.session import Session

RefreshFailure = Literal["unreachable", "refused", "invalid"]
"""Why a refresh failed: the IdP did not answer, it refused the grant, or the answer was bad."""

REFUSED_REASON = "session_refresh_failed"
"""The audit reason when a refresh was refused or unusable (the session ends at once)."""
GRACE_OVER_REASON = "session_refresh_unavailable"
"""The audit reason when the IdP stayed unreachable past the grace (the session ends)."""
GRACE_REASON = "refresh_grace"
"""The audit reason of a request that went on under the grace."""


@dataclass(frozen=True, slots=True)
class OnGrace:
    """The session goes on as it is, until ``until`` (Unix seconds, exclusive)."""

    until: int


@dataclass(frozen=True, slots=True)
class RefreshEnded:
    """The session is over; ``reason`` is the audit line's."""

    reason: str


def after_failed_refresh(
    session: Session, failure: RefreshFailure, *, grace: float, now: int
) -> OnGrace | RefreshEnded:
    """Whether ``session``, whose refresh failed with ``failure`` at ``now``, goes on."""
    if failure != "unreachable":
        return RefreshEnded(REFUSED_REASON)
    until = grace_ends(session, grace=grace)
    if now >= until:
        return RefreshEnded(GRACE_OVER_REASON)
    return OnGrace(until)


def grace_ends(session: Session, *, grace: float) -> int:
    """The first second at which ``session`` no longer goes on without a refresh."""
    return session.refresh_at + max(0, int(grace))
