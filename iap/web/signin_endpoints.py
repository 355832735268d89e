"""The sign-in endpoints under ``/.iap/``: thin handlers that turn requests into the values of
``iap.domain.signin_flow`` and its answers into responses (SPEC §3, §7 Login, Redirects).

    /.iap/login      -> 302 to the IdP; pending login sealed in ``__Host-iap-login``
    /.iap/callback   -> state, code redemption with PKCE, ID token validation, groups
                        overage, new session; 302 to the validated ``rd``
    /.iap/logout     -> session ended; 302 to the IdP's end_session_endpoint
    /.iap/frontchannel-logout?sid= -> every session of that IdP session ended
    /.iap/userinfo   -> the caller's identity as JSON
    /.iap/           -> the same as a page, with the routes the caller may reach
    /.iap/signed-out -> "You are signed out", where a logout comes back to by default

Invariants:
- Fail closed: a callback that fails any check sets no session cookie and answers a generic
  403 (502/503 when the IdP or store is down); the reason goes to the audit line only.
- Each sign-in creates a new session id (no fixation); ``state`` is single-use because the
  login-state cookie is rewritten without it before the code is redeemed, and the spent
  state is locked in the store, so an old copy of the login cookie cannot replay it.
- ``/.iap/userinfo`` shows the identity, never a token.
- A callback whose state is spent, for a browser that is signed in (a reload, Back), goes
  to where that login was going (``/`` when the spent login is no longer known): nothing
  is redeemed again.
- The audit line of a callback, a logout and a refused tenant names the subject and tenant.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from iap.adapters.idp import IdpUnavailable
from iap.adapters.oauth import TokenRefused
from iap.adapters.provider import Provider
from iap.adapters.sessions import Sessions
from iap.adapters.store import SessionStore, StoreUnavailable
from iap.config import Route
from iap.domain import idtoken
from iap.domain import signin_flow as flow
from iap.domain.login import MAX_AGE, LoginRefused, PendingLogin
from iap.domain.login import state_key as login_state_key
from iap.domain.negotiation import prefers_html
from iap.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    SignInFailed,
)
from iap.model import Exchange, Identity
from iap.web.cookies import NO_STORE, Cookies, redirect, set_cookies
from iap.web.flow import FlowDriver
from iap.web.session_check import SessionCheck, challenge, unauthenticated
from iap.web.userpage import SIGNED_OUT_PATH, html, reachable, signed_out_page, user_page

log = logging.getLogger("iap")

Handler = Callable[[web.BaseRequest, Exchange], Awaitable[web.StreamResponse]]
_SPENT = frozenset({"state", "expired", "replayed"})
"""Refusals that a signed-in browser's reload or Back to the callback meets."""
_IDP_ERROR = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""An OAuth ``error`` code shown on the page as it is; anything else is not shown."""


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
        routes: Sequence[Route] = (),
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
        self._listed = tuple(routes)
        self._routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/.iap/login": (("GET", "HEAD"), self.login),
            flow.CALLBACK_PATH: (("GET", "POST"), self.callback),
            "/.iap/logout": (("GET", "POST"), self.logout),
            "/.iap/frontchannel-logout": (("GET",), self.frontchannel_logout),
            "/.iap/userinfo": (("GET", "HEAD"), self.userinfo),
            "/.iap/": (("GET", "HEAD"), self.user_page),
            SIGNED_OUT_PATH: (("GET", "HEAD"), self.signed_out),
        }

    async def endpoint(
        self, request: web.BaseRequest, path: str, exchange: Exchange
    ) -> web.StreamResponse:
        """Answer a ``/.iap/`` request; :class:`NotFound` for paths that are not ours."""
        entry = self._routes.get(path)
        if entry is None:
            raise NotFound("no endpoint under the reserved prefix")
        methods, handler = entry
        if request.method not in methods:
            raise MethodNotAllowed(headers=[("Allow", ", ".join(methods))])
        try:
            return await handler(request, exchange)
        except _Redirect as spent:
            return spent.response
        except SignInFailed:
            await self._viewer(request, exchange)
            raise
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

    async def _viewer(self, request: web.BaseRequest, exchange: Exchange) -> None:
        """Who is still signed in, for a browser's page about a sign-in that failed (a new
        login does not end the session the browser had); never for the audit line."""
        if prefers_html(request.headers.get("Accept")):
            exchange.identity = await self._check.viewer(request)

    async def login(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
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
        url = started.url
        if flow.param(request.query, "prompt") == "select_account":  # "Sign in as someone else"
            url += "&prompt=select_account"
        return redirect(url, [self._cookies.login(started.pending, now)])

    async def callback(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The redirect URI: turn a code into a session, or refuse with no session."""
        now = self._clock()
        params = await _callback_params(request)
        step = flow.callback(params, self._cookies.pending(request, now), now=now)
        if isinstance(step, flow.Malformed):
            raise BadRequest(step.detail)
        if isinstance(step, flow.Refused):
            cookies = self._written(step.remaining, now)
            key = login_state_key(flow.param(params, "state"))
            await self._signed_in_already(request, exchange, step.reason, key, cookies)
            shown = flow.param(params, "error") if step.reason == "idp_error" else ""
            raise SignInFailed(
                reason=step.audit,
                headers=set_cookies(cookies),
                shown=shown if _IDP_ERROR.fullmatch(shown) else None,
            )
        # The state is spent from here on, whatever happens next: in this browser's cookie,
        # and in the store, so an old copy of the login cookie cannot replay it.
        cookies = self._written(step.remaining, now)
        if await self._store.acquire_lock(step.replay_key, ttl=MAX_AGE) is None:
            key = step.replay_key
            await self._signed_in_already(request, exchange, "replayed", key, cookies)
            raise SignInFailed(reason="login_refused:replayed", headers=set_cookies(cookies))
        # Where this login goes, kept as long as its state is spent: a reload finds it.
        await self._store.put(f"{step.replay_key}:target", step.login.rd.encode(), ttl=MAX_AGE)
        try:
            signed_in = await self._driver.redeem(step, now=now)
        except (LoginRefused, idtoken.InvalidIdToken, TokenRefused) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "error", "refused")
            exchange.subject, exchange.tenant = getattr(exc, "who", (None, None))
            raise SignInFailed(
                reason=f"login_refused:{reason}", headers=set_cookies(cookies)
            ) from None
        session = signed_in.session
        value = await self._sessions.save(session, now=now)
        cookies += self._cookies.session(request, value, session, now)
        _name(exchange, session.identity)
        log.info("sign-in: subject=%s tenant=%s", session.identity.subject, session.identity.tid)
        return redirect(signed_in.target, cookies)

    async def _signed_in_already(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        reason: str,
        key: str,
        cookies: list[str],
    ) -> None:
        """A spent callback (a reload, Back) for a browser already signed in: raise the
        redirect to where the login was going; nothing is redeemed again."""
        if reason not in _SPENT:
            return
        caller = await self._check.authenticate(request)
        if caller.identity is None:
            return
        _name(exchange, caller.identity)
        exchange.reason = f"callback_spent:{reason}"
        kept = await self._store.get(f"{key}:target")
        target = self._rp.redirects.target(kept.decode("utf-8", "replace") if kept else "/")
        raise _Redirect(redirect(target, [*cookies, *caller.cookies]))

    def _written(self, remaining: list[PendingLogin] | None, now: int) -> list[str]:
        """The login-state cookie holding ``remaining``; none when the flow keeps it."""
        return [] if remaining is None else [self._cookies.login(remaining, now)]

    async def logout(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """End the session here and at the IdP (RP-initiated logout, OIDC RP-Initiated §2)."""
        params = request.query if request.method == "GET" else await request.post()
        now = self._clock()
        caller = await self._check.load(request, now)
        if caller.session is not None:
            _name(exchange, caller.session.identity)
            await self._sessions.end(caller.session, now=now)
        cookies = self._cookies.clear(request)
        metadata = await self._provider.metadata()
        location = flow.logout(
            self._rp,
            params,
            session=caller.session,
            end_session_endpoint=metadata.get("end_session_endpoint"),
            default=SIGNED_OUT_PATH,
        )
        return redirect(location, cookies)

    async def frontchannel_logout(
        self, request: web.BaseRequest, exchange: Exchange
    ) -> web.StreamResponse:
        """Entra single sign-out: end every session of ``sid`` (OIDC Front-Channel Logout)."""
        sid = flow.frontchannel_sid(request.query)
        if sid is None:
            raise BadRequest("front-channel logout without a valid sid")
        await self._sessions.end_sid(sid, now=self._clock())
        log.info("front-channel logout ended the sessions of one IdP session")
        return html(signed_out_page(exchange.correlation_id))

    async def signed_out(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """Where a logout comes back to: "You are signed out", *Sign in again*."""
        return html(signed_out_page(exchange.correlation_id))

    async def userinfo(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The caller's identity as JSON; never a token."""
        caller = await self._check.authenticate(request)
        if caller.identity is None or caller.session is None:
            raise unauthenticated(caller, return_to="/.iap/userinfo")
        _name(exchange, caller.identity)
        body = flow.userinfo(caller.identity, caller.session, lifetime=self._lifetime)
        headers = [("Content-Type", "application/json"), *NO_STORE, *set_cookies(caller.cookies)]
        response = web.Response(text=json.dumps(body))
        for name, value in headers:
            response.headers.add(name, value)
        return response

    async def user_page(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """``/.iap/``: the caller as iap sees it; anonymous browsers are sent to sign in."""
        caller = await self._check.authenticate(request)
        if caller.identity is None or caller.session is None:
            browser = prefers_html(request.headers.get("Accept"))
            method, reason = request.method, caller.reason
            raise challenge(caller, html=browser, method=method, target="/.iap/", reason=reason)
        _name(exchange, caller.identity)
        routes = reachable(self._listed, caller.identity, exchange.client_ip, caller.claims())
        text = user_page(
            caller.identity,
            caller.session,
            routes,
            lifetime=self._lifetime,
            now=self._clock(),
            correlation_id=exchange.correlation_id,
        )
        return html(text, set_cookies(caller.cookies))


class _Redirect(Exception):  # control flow, caught in Endpoints.endpoint
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _name(exchange: Exchange, identity: Identity) -> None:
    """The audit line names who this request was about."""
    exchange.subject, exchange.tenant = identity.subject, identity.tid


async def _callback_params(request: web.BaseRequest) -> Mapping[str, Any]:
    if request.method == "GET":
        return request.query
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("form_post callback without a form body")
    return await request.post()
