"""Browser sessions: what a session holds and when it ends (SPEC §7 Sessions).

Pure values and decisions; where a session is kept (a sealed cookie or Redis) is the
business of ``iap.adapters.sessions``, and the refresh call of ``iap.web``.

Invariants:
- A session ends ``lifetime`` seconds after sign-in (absolute) or ``idle_timeout`` seconds
  after it was last seen (idle), whichever comes first; a refresh renews neither the
  absolute deadline nor the identity's key (``tid`` + ``oid``).
- A session is refreshed with its refresh token before the IdP's tokens expire
  (``refresh_at``); a session without a refresh token ends at ``refresh_at``, as nothing
  vouches for the user any more.
- ``seen`` is written back at most every ``touch_interval`` seconds, so a cookie session is
  not resealed on every request; the idle deadline is therefore exact to that interval.
- :func:`decode` accepts exactly what :func:`encode` writes, for every identity a login
  accepts (optional claims may be empty strings), and raises ValueError on anything else;
  callers decode only what a seal authenticated.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from iap.model import Identity

SESSION_PURPOSE = b"session"
"""The sealing purpose of a session (cookie store) or a session record (Redis store)."""
HANDLE_PURPOSE = b"session-handle"
"""The sealing purpose of the handle a Redis-store cookie carries."""
REFRESH_MARGIN = 300
"""Seconds before the IdP's tokens expire that a session is refreshed."""
MIN_TOUCH_INTERVAL = 60

State = Literal["valid", "expired", "idle", "stale"]


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser. ``id`` names it in stores and locks; ``sid`` is the IdP's."""

    id: str
    identity: Identity
    sid: str | None
    id_token: str
    refresh_token: str | None
    created: int
    seen: int
    refresh_at: int
    generation: int = 0
    """Refreshes so far; tells a newer outcome of a refresh from the one a cookie holds."""

    def __repr__(self) -> str:  # tokens stay out of logs and tracebacks
        return f"Session(id={self.id!r}, subject={self.identity.subject!r})"


def new_session(
    identity: Identity,
    *,
    sid: str | None,
    id_token: str,
    refresh_token: str | None,
    expires_in: int,
    now: int,
    random: Callable[[int], bytes],
) -> Session:
    """A session that starts ``now`` from a login's tokens (``expires_in`` from the IdP)."""
    session_id = base64.urlsafe_b64encode(random(18)).decode("ascii")
    return Session(
        id=session_id,
        identity=identity,
        sid=sid,
        id_token=id_token,
        refresh_token=refresh_token,
        created=now,
        seen=now,
        refresh_at=_refresh_at(now, expires_in),
    )


def refreshed(
    session: Session,
    *,
    identity: Identity,
    id_token: str | None,
    refresh_token: str | None,
    expires_in: int,
    now: int,
) -> Session:
    """``session`` after a refresh grant; the IdP may rotate the refresh token or not.

    Raises ValueError when ``identity`` is another user (OIDC Core §12.2: same ``iss``
    and ``sub``; iap keys users by ``tid`` + ``oid``).
    """
    if identity.subject != session.identity.subject:
        raise ValueError("a refresh returned another user")
    return replace(
        session,
        identity=identity,
        id_token=id_token or session.id_token,
        refresh_token=refresh_token or session.refresh_token,
        seen=now,
        refresh_at=_refresh_at(now, expires_in),
        generation=session.generation + 1,
    )


def _refresh_at(now: int, expires_in: int) -> int:
    return now + max(0, expires_in - REFRESH_MARGIN)


def state(session: Session, *, now: int, lifetime: float, idle_timeout: float) -> State:
    """``valid``, ``expired`` (absolute), ``idle``, or ``stale`` (needs a refresh first)."""
    if now >= session.created + lifetime:
        return "expired"
    if now >= session.seen + idle_timeout:
        return "idle"
    if now >= session.refresh_at:
        return "stale"
    return "valid"


def expires_at(session: Session, *, lifetime: float) -> int:
    """The absolute end of ``session`` (Unix seconds); cookies and records live until then."""
    return session.created + int(lifetime)


def touched(session: Session, *, now: int, idle_timeout: float) -> Session | None:
    """``session`` with ``seen = now`` when it is due to be written back, else None."""
    interval = max(MIN_TOUCH_INTERVAL, idle_timeout / 10)
    if now - session.seen < interval:
        return None
    return replace(session, seen=now)


# --- encoding ------------------------------------------------------------------------------

_FIELDS = frozenset(Session.__slots__)
_IDENTITY_FIELDS = frozenset(Identity.__slots__)


def encode(session: Session) -> bytes:
    """Compact JSON, for the caller to seal."""
    return json.dumps(asdict(session), separators=(",", ":")).encode()


def decode(data: bytes) -> Session:
    """Parse :func:`encode` output; ValueError on anything else."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("malformed session") from None
    if not isinstance(value, dict) or value.keys() != _FIELDS:
        raise ValueError("malformed session")
    identity = value["identity"]
    if not isinstance(identity, dict) or identity.keys() != _IDENTITY_FIELDS:
        raise ValueError("malformed session")
    try:
        return Session(
            id=_text(value["id"]),
            identity=Identity(
                subject=_text(identity["subject"]),
                tid=_text(identity["tid"]),
                oid=_text(identity["oid"]),
                name=_optional(identity["name"]),
                email=_optional(identity["email"]),
                preferred_username=_optional(identity["preferred_username"]),
                roles=_texts(identity["roles"]),
                groups=_texts(identity["groups"]),
                azp=_optional(identity["azp"]),
            ),
            sid=_optional(value["sid"]),
            id_token=_text(value["id_token"]),
            refresh_token=_optional(value["refresh_token"]),
            created=_int(value["created"]),
            seen=_int(value["seen"]),
            refresh_at=_int(value["refresh_at"]),
            generation=_int(value["generation"]),
        )
    except TypeError:
        raise ValueError("malformed session") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError
    return value


def _optional(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError
    return value


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError
    return tuple(value)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError
    return value
