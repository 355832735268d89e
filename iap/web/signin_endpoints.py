"""The sign-in endpoints under ``/.iap/``: thin handlers that turn requests into the values of
``iap.domain.signin_flow`` and its answers into responses (SPEC §3, §7 Login, Redirects).

    /.iap/login      -> 302 to the IdP; pending login sealed in ``__Host-iap-login``
    /.iap/callback   -> state, code redemption with PKCE, ID token validation, groups
                        overage, new session; 302 to the validated ``rd``
    /.iap/logout     -> session ended; 302 to the IdP's end_session_endpoint
    /.iap/frontchannel-logout?sid= -> every session of that IdP session ended
    /.iap/userinfo   -> the caller's identity as JSON

Invariants:
- Fail closed: a callback that fails any check sets no session cookie and answers a generic
  403 (502/503 when the IdP or store is down); the reason goes to the audit line only.
- Each sign-in creates a new session id (no fixation); ``state`` is single-use because the
  login-state cookie is rewritten without it before the code is redeemed, and the spent
  state is locked in the store, so an old copy of the login cookie cannot replay it.
- ``/.iap/userinfo`` shows the identity, never a token.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from iap.adapters.idp import IdpUnavailable
from iap.adapters.oauth import TokenRefused
from iap.adapters.provider import Provider
from iap.adapters.sessions import Sessions
from iap.adapters.store import SessionStore, StoreUnavailable
from iap.domain import idtoken
from iap.domain import signin_flow as flow
from iap.domain.login import MAX_AGE, LoginRefused, PendingLogin
from iap.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    SignInFailed,
)
from iap.web.cookies import NO_STORE, Cookies, redirect, set_cookies
from iap.web.flow import FlowDriver
from iap.web.session_check import SessionCheck, unauthenticated

log = logging.getLogger("iap")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Endpoints:
    """The five sign-in endpoints of one relying party."""

    def __init__(
        self,
        rp: flow.RelyingParty,
        *,
        provider: Provider,
        driver: FlowDriver,
        check: SessionCheck,
        sessions: Sessions,
        store: SessionStore,
        cookies: Cookies,
        lifetime: float,
        clock: Callable[[], int],
    ) -> None:
        self._rp = rp
        self._provider = provider
        self._driver = driver
        self._check = check
        self._sessions = sessions
        self._store = store
        self._cookies = cookies
        self._lifetime = lifetime
        self._clock = clock
        self._routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/.iap/login": (("GET", "HEAD"), self.login),
            flow.CALLBACK_PATH: (("GET", "POST"), self.callback),
            "/.iap/logout": (("GET", "POST"), self.logout),
            "/.iap/frontchannel-logout": (("GET",), self.frontchannel_logout),
            "/.iap/userinfo": (("GET", "HEAD"), self.userinfo),
        }

    async def endpoint(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Answer a ``/.iap/`` request; :class:`NotFound` for paths that are not ours."""
        entry = self._routes.get(path)
        if entry is None:
            raise NotFound("no endpoint under the reserved prefix")
        methods, handler = entry
        if request.method not in methods:
            raise MethodNotAllowed(headers=[("Allow", ", ".join(methods))])
        try:
            return await handler(request)
        except IdpUnavailable as exc:
            raise ServiceUnavailable(
                "identity provider unavailable",
                public="The identity provider is unavailable. Please try again.",
                reason="idp_unavailable",
            ) from exc
        except StoreUnavailable as exc:
            raise ServiceUnavailable(
                "session store unavailable", reason="store_unavailable"
            ) from exc

    async def login(self, request: web.BaseRequest) -> web.StreamResponse:
        """Start a login: remember it in the login-state cookie, send the browser to the IdP."""
        now = self._clock()
        metadata = await self._provider.metadata()
        started = flow.start_login(
            self._rp,
            authorize_endpoint=metadata["authorization_endpoint"],
            rd=flow.param(request.query, "rd"),
            pending=self._cookies.pending(request, now),
            now=now,
            random=os.urandom,
        )
        return redirect(started.url, [self._cookies.login(started.pending, now)])

    async def callback(self, request: web.BaseRequest) -> web.StreamResponse:
        """The redirect URI: turn a code into a session, or refuse with no session."""
        now = self._clock()
        params = await _callback_params(request)
        step = flow.callback(params, self._cookies.pending(request, now), now=now)
        if isinstance(step, flow.Malformed):
            raise BadRequest(step.detail)
        if isinstance(step, flow.Refused):
            raise SignInFailed(
                reason=step.audit, headers=set_cookies(self._written(step.remaining, now))
            )
        # The state is spent from here on, whatever happens next: in this browser's cookie,
        # and in the store, so an old copy of the login cookie cannot replay it.
        cookies = self._written(step.remaining, now)
        if await self._store.acquire_lock(step.replay_key, ttl=MAX_AGE) is None:
            raise SignInFailed(reason="login_refused:replayed", headers=set_cookies(cookies))
        try:
            signed_in = await self._driver.redeem(step, now=now)
        except (LoginRefused, idtoken.InvalidIdToken, TokenRefused) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "error", "refused")
            raise SignInFailed(
                reason=f"login_refused:{reason}", headers=set_cookies(cookies)
            ) from None
        session = signed_in.session
        value = await self._sessions.save(session, now=now)
        cookies += self._cookies.session(request, value, session, now)
        log.info("sign-in: subject=%s tenant=%s", session.identity.subject, session.identity.tid)
        return redirect(signed_in.target, cookies)

    def _written(self, remaining: list[PendingLogin] | None, now: int) -> list[str]:
        """The login-state cookie holding ``remaining``; none when the flow keeps it."""
        return [] if remaining is None else [self._cookies.login(remaining, now)]

    async def logout(self, request: web.BaseRequest) -> web.StreamResponse:
        """End the session here and at the IdP (RP-initiated logout, OIDC RP-Initiated §2)."""
        params = request.query if request.method == "GET" else await request.post()
        now = self._clock()
        caller = await self._check.load(request, now)
        if caller.session is not None:
            await self._sessions.end(caller.session, now=now)
        cookies = self._cookies.clear(request)
        metadata = await self._provider.metadata()
        location = flow.logout(
            self._rp,
            params,
            session=caller.session,
            end_session_endpoint=metadata.get("end_session_endpoint"),
        )
        return redirect(location, cookies)

    async def frontchannel_logout(self, request: web.BaseRequest) -> web.StreamResponse:
        """Entra single sign-out: end every session of ``sid`` (OIDC Front-Channel Logout)."""
        sid = flow.frontchannel_sid(request.query)
        if sid is None:
            raise BadRequest("front-channel logout without a valid sid")
        await self._sessions.end_sid(sid, now=self._clock())
        log.info("front-channel logout ended the sessions of one IdP session")
        return web.Response(
            text="<!doctype html><title>Signed out</title><p>Signed out.</p>",
            content_type="text/html",
            headers=dict(NO_STORE),
        )

    async def userinfo(self, request: web.BaseRequest) -> web.StreamResponse:
        """The caller's identity as JSON; never a token."""
        caller = await self._check.authenticate(request)
        if caller.identity is None or caller.session is None:
            raise unauthenticated(caller)
        body = flow.userinfo(caller.identity, caller.session, lifetime=self._lifetime)
        headers = [("Content-Type", "application/json"), *NO_STORE, *set_cookies(caller.cookies)]
        response = web.Response(text=json.dumps(body))
        for name, value in headers:
            response.headers.add(name, value)
        return response


async def _callback_params(request: web.BaseRequest) -> Mapping[str, Any]:
    if request.method == "GET":
        return request.query
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("form_post callback without a form body")
    return await request.post()
