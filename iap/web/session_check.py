"""The session check on every protected request, and what an anonymous caller gets
(SPEC §2 step 6, §7 Sessions).

Invariants:
- A session cookie that does not open (tampered, foreign key, revoked, expired) is cleared
  in the same response and logged with its reason; the caller is treated as anonymous.
- What a session needs (end, refresh, write back, nothing) is decided by
  ``iap.domain.signin_flow.session_check``, and a refresh happens once per session across
  tasks and replicas (``Sessions.refresh_once``).
- What a failed refresh leads to is decided by ``iap.domain.outage``: a refusal
  (``invalid_grant``...) or a bad answer ends the session (``session_refresh_failed``); an
  IdP that does not answer (:class:`~iap.adapters.idp.IdpUnreachable`) lets the session go
  on as it was loaded, never rewritten as refreshed, for at most ``session.refresh_grace``
  past the moment it became due (reason ``refresh_grace``, counted by ``on_grace``), after
  which it ends (``session_refresh_unavailable``). Every other error ends it too.
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

from iap.adapters.idp import IdpUnavailable, IdpUnreachable
from iap.adapters.oauth import TokenRefused
from iap.adapters.sessions import SessionRejected, Sessions
from iap.adapters.store import StoreUnavailable
from iap.domain import claims as read
from iap.domain import outage
from iap.domain import session as sessions
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
        refresh_grace: float = 0.0,
        on_grace: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._sessions = sessions
        self._cookies = cookies
        self._driver = driver
        self._clock = clock
        self._grace = refresh_grace
        self._on_grace = on_grace

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
            return await self._saved(request, step.session, now, "session")
        try:
            fresh = await self._sessions.refresh_once(session, self._driver.refresh, now=now)
        except (TokenRefused, IdpUnavailable, SessionRejected, ValueError) as exc:
            return await self._refresh_failed(request, caller, _failure(exc), now)
        return await self._saved(request, fresh, now, "session")

    async def _refresh_failed(
        self, request: web.BaseRequest, caller: Caller, failure: outage.RefreshFailure, now: int
    ) -> Caller:
        """The session goes on under the grace, or ends (``iap.domain.outage``)."""
        assert caller.session is not None
        session = caller.session
        step = outage.after_failed_refresh(session, failure, grace=self._grace, now=now)
        if isinstance(step, outage.RefreshEnded):
            log.info("session refresh failed (%s); sign-in required", step.reason)
            return self._anonymous(request, step.reason)
        log.warning(
            "session refresh failed: the IdP is unreachable; session goes on for %ds more",
            step.until - now,
        )
        if self._on_grace is not None:
            self._on_grace()
        touched = sessions.touched(session, now=now, idle_timeout=self._policy.idle_timeout)
        if touched is None:  # refresh_at stays as it was: the next request tries again
            return Caller(session.identity, session, [], outage.GRACE_REASON)
        return await self._saved(request, touched, now, outage.GRACE_REASON)

    async def _saved(
        self, request: web.BaseRequest, session: Session, now: int, reason: str
    ) -> Caller:
        """``session`` written back, with its cookie to set."""
        value = await self._sessions.save(session, now=now)
        return Caller(
            session.identity,
            session,
            self._cookies.session(request, value, session, now),
            reason,
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

    async def viewer(self, request: web.BaseRequest) -> Identity | None:
        """Who the session cookie names while the session lasts, for a page only: nothing is
        refreshed, written, cleared or logged, and a store that does not answer means nobody."""
        value, _ = self._cookies.session_value(request)
        if not value:
            return None
        now = self._clock()
        try:
            session = await self._sessions.load(value, now=now)
        except (SessionRejected, StoreUnavailable):
            return None
        if isinstance(flow.session_check(self._policy, session, now=now), flow.Ended):
            return None
        return session.identity

    def _anonymous(self, request: web.BaseRequest, reason: str) -> Caller:
        return Caller(cookies=self._cookies.clear(request), reason=reason)


def _failure(exc: Exception) -> outage.RefreshFailure:
    """Why a refresh failed, for :func:`iap.domain.outage.after_failed_refresh`."""
    if isinstance(exc, IdpUnreachable):
        return "unreachable"
    return "refused" if isinstance(exc, TokenRefused) else "invalid"


def unauthenticated(
    caller: Caller, reason: str | None = None, return_to: str | None = None
) -> RequestError:
    """401 with ``WWW-Authenticate`` and the caller's cookies (cleared ones included);
    a browser's page links to sign-in, coming back to ``return_to``."""
    return Unauthenticated(
        reason=reason or caller.reason,
        headers=[("WWW-Authenticate", 'Bearer realm="iap"'), *set_cookies(caller.cookies)],
        return_to=return_to,
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
    return unauthenticated(caller, reason, target)
