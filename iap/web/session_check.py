"""The session check on every protected request, and what an anonymous caller gets
(SPEC §2 step 6, §7 Sessions).

Invariants:
- A session cookie that does not open (tampered, foreign key, revoked, expired) is cleared
  in the same response and logged with its reason; the caller is treated as anonymous.
- What a session needs (end, refresh, write back, nothing) is decided by
  ``iap.domain.signin_flow.session_check``; a refresh that fails for any reason ends the
  session (``session_refresh_failed``), and a refresh happens once per session across
  tasks and replicas (``Sessions.refresh_once``).
- A store that does not answer raises :class:`~iap.adapters.store.StoreUnavailable`: the
  caller fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from iap.adapters.idp import IdpUnavailable
from iap.adapters.oauth import TokenRefused
from iap.adapters.sessions import SessionRejected, Sessions
from iap.domain import claims as read
from iap.domain import signin_flow as flow
from iap.domain.session import Session
from iap.errors import RequestError, SignInRequired, Unauthenticated
from iap.model import Identity
from iap.web.cookies import Cookies, set_cookies
from iap.web.flow import FlowDriver

log = logging.getLogger("iap")


@dataclass(slots=True)
class Caller:
    """Who the session cookie says is calling; ``cookies`` are Set-Cookie values to send."""

    identity: Identity | None = None
    session: Session | None = None
    cookies: list[str] = field(default_factory=list)
    reason: str = "no_session"
    token_claims: Mapping[str, Any] | None = None
    """A bearer caller's verified claims; a session's come from its ID token on demand."""

    def claims(self) -> Mapping[str, Any]:
        """The claims ``claims`` policy conditions read: the bearer token's, or those of the
        session's ID token (validated when it was received; only read here)."""
        if self.token_claims is not None:
            return self.token_claims
        if self.session is None or not self.session.id_token:
            return {}
        return read.unverified(self.session.id_token)


class SessionCheck:
    """The caller behind the session cookie, for the gateway and the sign-in endpoints."""

    def __init__(
        self,
        *,
        policy: flow.SessionPolicy,
        sessions: Sessions,
        cookies: Cookies,
        driver: FlowDriver,
        clock: Callable[[], int],
    ) -> None:
        self._policy = policy
        self._sessions = sessions
        self._cookies = cookies
        self._driver = driver
        self._clock = clock

    async def authenticate(self, request: web.BaseRequest) -> Caller:
        """The caller behind the session cookie, refreshed when due; anonymous otherwise."""
        now = self._clock()
        caller = await self.load(request, now)
        session = caller.session
        if session is None:
            return caller
        step = flow.session_check(self._policy, session, now=now)
        if isinstance(step, flow.Ended):
            return self._anonymous(request, step.reason)
        if isinstance(step, flow.Keep):
            return caller  # as loaded: nothing to write, no cookie to set
        if isinstance(step, flow.Touch):
            session = step.session
        else:
            try:
                session = await self._sessions.refresh_once(session, self._driver.refresh, now=now)
            except (TokenRefused, IdpUnavailable, SessionRejected, ValueError) as exc:
                log.info("session refresh failed (%s); sign-in required", type(exc).__name__)
                return self._anonymous(request, "session_refresh_failed")
        value = await self._sessions.save(session, now=now)
        return Caller(
            session.identity,
            session,
            self._cookies.session(request, value, session, now),
            "session",
        )

    async def load(self, request: web.BaseRequest, now: int) -> Caller:
        """The session the cookie names, not yet checked for time; anonymous without one."""
        value, sent = self._cookies.session_value(request)
        if not value:
            if not sent:
                return Caller()
            log.warning("session cookie rejected (malformed); cleared")
            return self._anonymous(request, "session_malformed")
        try:
            session = await self._sessions.load(value, now=now)
        except SessionRejected as exc:
            log.warning("session cookie rejected (%s); cleared", exc.reason)
            return self._anonymous(request, f"session_{exc.reason}")
        return Caller(session.identity, session, [], "session")

    def _anonymous(self, request: web.BaseRequest, reason: str) -> Caller:
        return Caller(cookies=self._cookies.clear(request), reason=reason)


def unauthenticated(caller: Caller, reason: str | None = None) -> RequestError:
    """401 with ``WWW-Authenticate`` and the caller's cookies (cleared ones included)."""
    return Unauthenticated(
        reason=reason or caller.reason,
        headers=[("WWW-Authenticate", 'Bearer realm="iap"'), *set_cookies(caller.cookies)],
    )


def challenge(caller: Caller, *, html: bool, method: str, target: str, reason: str) -> RequestError:
    """What an anonymous caller gets on a protected route: 302 to login or 401.

    Browsers (``Accept`` prefers HTML) on GET/HEAD go to ``/.iap/login?rd=<target>``;
    everyone else gets 401 with ``WWW-Authenticate`` (SPEC §2 step 6). ``reason`` is the
    audit line's.
    """
    if html and method in ("GET", "HEAD"):
        location = "/.iap/login?" + urlencode({"rd": target})
        return SignInRequired(
            reason=reason, headers=[("Location", location), *set_cookies(caller.cookies)]
        )
    return unauthenticated(caller, reason)
