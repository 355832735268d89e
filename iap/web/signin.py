"""Browser sign-in with Entra ID: the ``/.iap/`` endpoints and the session check
(SPEC §3, §7 Login, Sessions, Redirects).

The OIDC authorization code flow in four steps, each a short method here over the pure
pieces in ``iap.domain`` (``login``, ``idtoken``, ``session``, ``redirects``) and the IO in
``iap.adapters`` (``idp``, ``oauth``, ``sessions``):

    /.iap/login      -> 302 to the IdP; pending login sealed in ``__Host-iap-login``
    /.iap/callback   -> state, code redemption with PKCE, ID token validation, groups
                        overage, new session; 302 to the validated ``rd``
    /.iap/logout     -> session ended; 302 to the IdP's end_session_endpoint
    /.iap/frontchannel-logout?sid= -> every session of that IdP session ended

Invariants:
- Fail closed: a callback that fails any check sets no session cookie and answers a generic
  403 (502/503 when the IdP or store is down); the reason goes to the audit line only.
- Each sign-in creates a new session id (no fixation); ``state`` is single-use because the
  login-state cookie is rewritten without it before the code is redeemed.
- A session cookie that does not open (tampered, foreign key, revoked, expired) is cleared
  in the same response and logged with its reason; the caller is treated as anonymous.
- ``/.iap/userinfo`` shows the identity, never a token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp
from aiohttp import web

from iap.adapters.idp import Discovery, IdpUnavailable, JwksCache, Observe, new_session
from iap.adapters.jwks import verify_with_refetch
from iap.adapters.oauth import ClientCredential, OAuthClient, TokenRefused, TokenResponse
from iap.adapters.sessions import CookieSessions, SessionRejected, Sessions, StoredSessions
from iap.adapters.store import SessionStore, StoreUnavailable
from iap.config import Config
from iap.domain import compact, idtoken, sealing
from iap.domain import session as sessions
from iap.domain.login import (
    MAX_AGE,
    LoginRefused,
    PendingLogin,
    add_pending,
    identity_from_claims,
    new_login,
    take_pending,
)
from iap.domain.redirects import RedirectPolicy
from iap.domain.session import Session
from iap.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RequestError,
    ServiceUnavailable,
    SignInFailed,
    SignInRequired,
    Unauthenticated,
)
from iap.model import Identity
from iap.web.cookies import NO_STORE, Cookies, redirect, set_cookies

log = logging.getLogger("iap")

CALLBACK_PATH = "/.iap/callback"
_MAX_PARAM = 4096
_SID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_SESSION_GROUPS = 200
"""Past this many groups a session keeps only those named in ``tokens.roles`` or a policy."""


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
        try:
            return compact.json_object(
                compact.b64decode(compact.segments(self.session.id_token)[1])
            )
        except compact.Malformed:
            return {}


@dataclass(frozen=True)
class _Authority:
    """The configured issuer split into the authority and the tenant segment."""

    base: str
    tenant: str

    @classmethod
    def parse(cls, issuer: str) -> _Authority:
        base, tenant, _ = issuer.rsplit("/", 2)
        return cls(base, tenant)


class SignIn:
    """The sign-in endpoints and the per-request session check; one per process.

    Built before any socket is bound (a bad ``allowed_redirect_hosts`` raises
    :class:`~iap.errors.ConfigError`); :meth:`start` opens the IdP client inside the loop.
    """

    def __init__(
        self,
        config: Config,
        *,
        keyring: sealing.Keyring,
        credential: ClientCredential,
        store: SessionStore,
        observe: Observe | None = None,
    ) -> None:
        """``keyring``, ``credential`` and ``store`` come from the composition root
        (:mod:`iap.app.wiring`), which read the secrets and chose the store."""
        assert config.oidc is not None
        self._observe = observe
        oidc = self._oidc = config.oidc
        self._credential = credential
        self._redirects = RedirectPolicy(config.public_url, config.allowed_redirect_hosts)
        self._lifetime = config.session.lifetime
        self._idle = config.session.idle_timeout
        self.store = store
        kind = StoredSessions if config.session.store == "redis" else CookieSessions
        self._sessions: Sessions = kind(keyring, self.store, lifetime=self._lifetime)
        self._cookies = Cookies(
            keyring, lifetime=self._lifetime, form_post=oidc.response_mode == "form_post"
        )
        self._roles_map = dict(config.tokens.roles) if config.tokens else {}
        self._relevant_groups = frozenset(self._roles_map).union(
            *(route.policy.groups for route in config.routes)
        )
        self._authority = _Authority.parse(oidc.issuer)
        self._public_url = config.public_url.rstrip("/")
        self._redirect_uri = self._public_url + CALLBACK_PATH
        self._scopes = " ".join(oidc.scopes)
        self._http: aiohttp.ClientSession | None = None
        self._warming: asyncio.Task[None] | None = None
        self.ready = False

    async def start(self) -> None:
        """Open the IdP client and load its metadata in the background."""
        self._http = new_session()
        self._discovery = Discovery(self._http, self._authority.base, observe=self._observe)
        self._jwks = JwksCache(self._discovery)
        self._oauth = OAuthClient(self._discovery.fetcher, self._credential)
        self._warming = asyncio.ensure_future(self._warm())

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.store.close()

    async def _warm(self) -> None:
        try:
            await self._jwks.keys(self._authority.tenant)
            self.ready = True
        except IdpUnavailable:
            log.warning("identity provider metadata not loaded yet; will retry on demand")

    async def readiness(self) -> dict[str, bool]:
        """``idp``: metadata loaded; ``session_store``: the store answers.

        Until the IdP's metadata is loaded, each probe starts one more attempt in the
        background (never two at once), so a pod that started during an IdP outage
        becomes ready once the IdP is back.
        """
        if not self.ready and (self._warming is None or self._warming.done()):
            self._warming = asyncio.ensure_future(self._warm())
        return {"idp": self.ready, "session_store": await self.store.ping()}

    async def _metadata(self) -> dict[str, Any]:
        document = await self._discovery.document(self._authority.tenant)
        self.ready = True
        return document

    # --- endpoints ------------------------------------------------------------------------

    async def endpoint(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Answer a ``/.iap/`` request; :class:`NotFound` for paths that are not ours."""
        handlers = {
            "/.iap/login": (("GET", "HEAD"), self.login),
            CALLBACK_PATH: (("GET", "POST"), self.callback),
            "/.iap/logout": (("GET", "POST"), self.logout),
            "/.iap/frontchannel-logout": (("GET",), self.frontchannel_logout),
            "/.iap/userinfo": (("GET", "HEAD"), self.userinfo),
        }
        entry = handlers.get(path)
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
        now = int(time.time())
        rd = self._redirects.target(_param(request.query, "rd") or "/")
        metadata = await self._metadata()
        url, pending = new_login(
            authorize_endpoint=metadata["authorization_endpoint"],
            client_id=self._oidc.client_id,
            redirect_uri=self._redirect_uri,
            scopes=self._oidc.scopes,
            rd=rd,
            now=now,
            response_mode=self._oidc.response_mode,
            random=os.urandom,
        )
        logins = add_pending(self._cookies.pending(request, now), pending)
        return redirect(url, [self._cookies.login(logins, now)])

    async def callback(self, request: web.BaseRequest) -> web.StreamResponse:
        """The redirect URI: turn a code into a session, or refuse with no session."""
        now = int(time.time())
        params = await _callback_params(request)
        state, code = _param(params, "state"), _param(params, "code")
        if "error" in params:  # the user cancelled, or the IdP refused: spend the login
            cookies = self._spend(request, state, now)
            raise SignInFailed(reason="login_refused:idp_error", headers=set_cookies(cookies))
        if not state or not code:
            raise BadRequest("callback without state or code")
        try:
            pending, rest = take_pending(self._cookies.pending(request, now), state=state, now=now)
        except LoginRefused as exc:
            raise SignInFailed(reason=f"login_refused:{exc.reason}") from None
        # The state is spent from here on, whatever happens next: in this browser's cookie,
        # and in the store, so an old copy of the login cookie cannot replay it.
        cookies = [self._cookies.login(rest, now)]
        digest = hashlib.sha256(state.encode()).hexdigest()
        if await self.store.acquire_lock(f"login-state:{digest}", ttl=MAX_AGE) is None:
            raise SignInFailed(reason="login_refused:replayed", headers=set_cookies(cookies))
        try:
            session = await self._sign_in(code, pending, now)
        except (LoginRefused, idtoken.InvalidIdToken, TokenRefused) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "error", "refused")
            raise SignInFailed(
                reason=f"login_refused:{reason}", headers=set_cookies(cookies)
            ) from None
        value = await self._sessions.save(session, now=now)
        cookies += self._cookies.session(request, value, session, now)
        target = self._redirects.target(pending.rd)
        log.info("sign-in: subject=%s tenant=%s", session.identity.subject, session.identity.tid)
        return redirect(target, cookies)

    def _spend(self, request: web.BaseRequest, state: str, now: int) -> list[str]:
        """The login-state cookie without the login of ``state``, if there was one."""
        try:
            _, rest = take_pending(self._cookies.pending(request, now), state=state, now=now)
        except LoginRefused:
            return []
        return [self._cookies.login(rest, now)]

    async def logout(self, request: web.BaseRequest) -> web.StreamResponse:
        """End the session here and at the IdP (RP-initiated logout, OIDC RP-Initiated §2)."""
        params = request.query if request.method == "GET" else await request.post()
        target = self._redirects.target(
            _param(params, "post_logout_redirect_uri") or _param(params, "rd") or "/"
        )
        now = int(time.time())
        caller = await self._load(request, now)
        if caller.session is not None:
            await self._sessions.end(caller.session, now=now)
        cookies = self._cookies.clear(request)
        metadata = await self._metadata()
        end_session = metadata.get("end_session_endpoint")
        if not isinstance(end_session, str):
            return redirect(target, cookies)
        query = {"post_logout_redirect_uri": urljoin(self._public_url + "/", target)}
        if caller.session is not None:
            query["id_token_hint"] = caller.session.id_token
        query["client_id"] = self._oidc.client_id
        separator = "&" if "?" in end_session else "?"
        return redirect(end_session + separator + urlencode(query), cookies)

    async def frontchannel_logout(self, request: web.BaseRequest) -> web.StreamResponse:
        """Entra single sign-out: end every session of ``sid`` (OIDC Front-Channel Logout)."""
        sid = _param(request.query, "sid")
        if not _SID.fullmatch(sid):
            raise BadRequest("front-channel logout without a valid sid")
        await self._sessions.end_sid(sid, now=int(time.time()))
        log.info("front-channel logout ended the sessions of one IdP session")
        return web.Response(
            text="<!doctype html><title>Signed out</title><p>Signed out.</p>",
            content_type="text/html",
            headers=dict(NO_STORE),
        )

    async def userinfo(self, request: web.BaseRequest) -> web.StreamResponse:
        """The caller's identity as JSON; never a token."""
        caller = await self.authenticate(request)
        if caller.identity is None or caller.session is None:
            raise _unauthenticated(caller)
        identity = caller.identity
        body = {
            "sub": identity.subject,
            "tid": identity.tid,
            "oid": identity.oid,
            "name": identity.name,
            "email": identity.email,
            "preferred_username": identity.preferred_username,
            "roles": list(identity.roles),
            "groups": list(identity.groups),
            "session_expires_at": sessions.expires_at(caller.session, lifetime=self._lifetime),
        }
        headers = [("Content-Type", "application/json"), *NO_STORE, *set_cookies(caller.cookies)]
        response = web.Response(text=json.dumps(body))
        for name, value in headers:
            response.headers.add(name, value)
        return response

    # --- the session check on every protected request ----------------------------------

    async def authenticate(self, request: web.BaseRequest) -> Caller:
        """The caller behind the session cookie, refreshed when due; anonymous otherwise.

        Raises :class:`~iap.adapters.store.StoreUnavailable` (fail closed).
        """
        now = int(time.time())
        caller = await self._load(request, now)
        session = caller.session
        if session is None:
            return caller
        status = sessions.state(session, now=now, lifetime=self._lifetime, idle_timeout=self._idle)
        if status in ("expired", "idle"):
            return self._anonymous(request, f"session_{status}")
        if status == "stale":
            try:
                session = await self._sessions.refresh_once(session, self._refresh, now=now)
            except (TokenRefused, IdpUnavailable, SessionRejected, ValueError) as exc:
                log.info("session refresh failed (%s); sign-in required", type(exc).__name__)
                return self._anonymous(request, "session_refresh_failed")
        else:
            touched = sessions.touched(session, now=now, idle_timeout=self._idle)
            if touched is None:
                return Caller(session.identity, session, [], "session")
            session = touched
        value = await self._sessions.save(session, now=now)
        return Caller(
            session.identity,
            session,
            self._cookies.session(request, value, session, now),
            "session",
        )

    async def _load(self, request: web.BaseRequest, now: int) -> Caller:
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

    async def _refresh(self, session: Session) -> Session:
        """One refresh-token grant; the new ID token is validated like a login's."""
        if session.refresh_token is None:
            raise ValueError("no refresh token")
        metadata = await self._metadata()
        tokens = await self._oauth.refresh(
            metadata["token_endpoint"], refresh_token=session.refresh_token, scopes=self._scopes
        )
        now = int(time.time())
        identity = session.identity
        if tokens.id_token is not None:
            claims = await self._validated(tokens.id_token, nonce=None, now=now)
            identity = await self._identity(claims, tokens)
        return sessions.refreshed(
            session,
            identity=identity,
            id_token=tokens.id_token,
            refresh_token=tokens.refresh_token,
            expires_in=tokens.expires_in,
            now=now,
        )

    # --- the steps of a sign-in ------------------------------------------------------------

    async def _sign_in(self, code: str, pending: PendingLogin, now: int) -> Session:
        metadata = await self._metadata()
        tokens = await self._oauth.redeem_code(
            metadata["token_endpoint"],
            code=code,
            redirect_uri=self._redirect_uri,
            verifier=pending.verifier,
            scopes=self._scopes,
        )
        if tokens.id_token is None:
            raise LoginRefused("no_id_token")
        claims = await self._validated(tokens.id_token, nonce=pending.nonce, now=now)
        identity = await self._identity(claims, tokens)
        return sessions.new_session(
            identity,
            sid=claims.sid,
            id_token=tokens.id_token,
            refresh_token=tokens.refresh_token,
            expires_in=tokens.expires_in,
            now=now,
            random=os.urandom,
        )

    @property
    def authority(self) -> str:
        """The IdP's base URL (``https://login.microsoftonline.com``)."""
        return self._authority.base

    async def entra_keys(self, *, unknown_kid: bool = False) -> dict[str, Any] | None:
        """The IdP's JWKS (cached); with ``unknown_kid``, a rate-limited refetch or None."""
        tenant = self._authority.tenant
        if unknown_kid:
            return await self._jwks.for_unknown_kid(tenant)
        return await self._jwks.keys(tenant)

    async def _validated(self, token: str, *, nonce: str | None, now: int) -> idtoken.Claims:
        """Validate with the cached keys; an unknown ``kid`` refetches once (rate-limited)."""
        issuer = (await self._metadata())["issuer"]
        tenant = self._authority.tenant

        def check(jwks: Mapping[str, Any]) -> idtoken.Claims:
            return idtoken.validate(
                token,
                jwks=jwks,
                issuer=issuer,
                client_id=self._oidc.client_id,
                nonce=nonce,
                allowed_tenants=self._oidc.allowed_tenants,
                now=now,
                skew=int(self._oidc.clock_skew),
            )

        keys = await self._jwks.keys(tenant)
        return await verify_with_refetch(
            check,
            keys,
            lambda: self._jwks.for_unknown_kid(tenant),
            refused=idtoken.InvalidIdToken,
        )

    async def _identity(self, claims: idtoken.Claims, tokens: TokenResponse) -> Identity:
        """The identity, with groups from Graph when the token had too many (overage)."""
        raw = dict(claims.raw)
        names = raw.get("_claim_names")
        if isinstance(names, Mapping) and "groups" in names:
            if self._oidc.groups_overage == "deny" or tokens.access_token is None:
                raise LoginRefused("groups_overage")
            groups = await self._oauth.member_groups(self._oidc.graph_url, tokens.access_token)
            raw["groups"] = list(groups)
        identity = identity_from_claims(raw, roles_map=self._roles_map)
        if len(identity.groups) > MAX_SESSION_GROUPS:
            # Keep what a decision can use: the session must fit its cookie (SPEC §6: bounded).
            kept = tuple(g for g in identity.groups if g in self._relevant_groups)
            identity = dataclasses.replace(identity, groups=kept)
        return identity


def _param(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name, "")
    if not isinstance(value, str) or len(value) > _MAX_PARAM:
        return ""
    return value


async def _callback_params(request: web.BaseRequest) -> Mapping[str, Any]:
    if request.method == "GET":
        return request.query
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("form_post callback without a form body")
    return await request.post()


def _unauthenticated(caller: Caller, reason: str | None = None) -> RequestError:
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
    return _unauthenticated(caller, reason)
