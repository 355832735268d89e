"""Browser sign-in with Entra ID, assembled: the ``/.iap/`` endpoints, the per-request session
check and the IdP's lifecycle behind one object the edge holds (SPEC §3, §7 Login, Sessions).

The parts, each small: the pure flow (``iap.domain.signin_flow``), its I/O driver
(``iap.web.flow``), the endpoints (``iap.web.signin_endpoints``), the session check
(``iap.web.session_check``) and the IdP (``iap.adapters.provider``). The keyring, the client
credential and the session store come from the composition root (``iap.app.wiring``).

Invariants:
- Built before any socket is bound (a bad ``allowed_redirect_hosts`` raises
  :class:`~iap.errors.ConfigError`); :meth:`SignIn.start` opens the IdP client inside the
  loop, :meth:`SignIn.close` closes it and the store.
- Sign-in's clock is this module's ``time.time``, read through :func:`_now` on each request
  and handed to every part, so that all of them see the same seconds.
- What the gateway calls (:meth:`SignIn.endpoint`, :meth:`SignIn.authenticate`,
  :class:`Caller`, :func:`challenge`) and what the bearer path calls
  (:meth:`SignIn.entra_keys`, :attr:`SignIn.authority`) keep their names and signatures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from iap.adapters.idp import Observe
from iap.adapters.oauth import ClientCredential
from iap.adapters.provider import Provider
from iap.adapters.sessions import CookieSessions, Sessions, StoredSessions
from iap.adapters.store import SessionStore
from iap.config import Config
from iap.domain import sealing
from iap.domain.redirects import RedirectPolicy
from iap.domain.signin_flow import CALLBACK_PATH, MAX_SESSION_GROUPS, RelyingParty, SessionPolicy
from iap.model import Exchange, Identity
from iap.web.cookies import Cookies
from iap.web.flow import FlowDriver
from iap.web.session_check import Caller, SessionCheck, challenge
from iap.web.signin_endpoints import Endpoints

__all__ = ["CALLBACK_PATH", "MAX_SESSION_GROUPS", "Caller", "SignIn", "challenge"]


def _now() -> int:
    """Sign-in's clock: Unix seconds (``time`` is looked up here on each call)."""
    return int(time.time())


def relying_party(config: Config) -> RelyingParty:
    """iap as an OIDC client, from ``config.oidc`` and the roles and groups decisions use."""
    assert config.oidc is not None
    oidc = config.oidc
    roles_map = dict(config.tokens.roles) if config.tokens else {}
    return RelyingParty(
        client_id=oidc.client_id,
        public_url=config.public_url.rstrip("/"),
        scopes=tuple(oidc.scopes),
        response_mode=oidc.response_mode,
        allowed_tenants=oidc.allowed_tenants,
        clock_skew=int(oidc.clock_skew),
        groups_overage=oidc.groups_overage,
        roles_map=roles_map,
        relevant_groups=frozenset(roles_map).union(
            *(route.policy.groups for route in config.routes)
        ),
        redirects=RedirectPolicy(config.public_url, config.allowed_redirect_hosts),
    )


class SignIn:
    """The sign-in endpoints and the per-request session check; one per process."""

    def __init__(
        self,
        config: Config,
        *,
        keyring: sealing.Keyring,
        credential: ClientCredential,
        store: SessionStore,
        observe: Observe | None = None,
        on_grace: Callable[[], None] | None = None,
    ) -> None:
        """``keyring``, ``credential`` and ``store`` come from the composition root
        (:mod:`iap.app.wiring`), which read the secrets and chose the store; ``on_grace``
        is told of each request let in under ``session.refresh_grace``."""
        assert config.oidc is not None
        rp = relying_party(config)
        lifetime = config.session.lifetime
        self.store = store
        kind = StoredSessions if config.session.store == "redis" else CookieSessions
        sessions: Sessions = kind(keyring, store, lifetime=lifetime)
        cookies = Cookies(
            keyring, lifetime=lifetime, form_post=config.oidc.response_mode == "form_post"
        )
        self._provider = Provider(
            config.oidc.issuer,
            credential,
            observe=observe,
            max_stale=config.oidc.metadata_max_stale,
        )
        driver = FlowDriver(rp, self._provider, graph_url=config.oidc.graph_url, clock=_now)
        self._check = SessionCheck(
            policy=SessionPolicy(lifetime, config.session.idle_timeout),
            sessions=sessions,
            cookies=cookies,
            driver=driver,
            clock=_now,
            refresh_grace=config.session.refresh_grace,
            on_grace=on_grace,
        )
        self._endpoints = Endpoints(
            rp,
            provider=self._provider,
            driver=driver,
            check=self._check,
            sessions=sessions,
            store=store,
            cookies=cookies,
            lifetime=lifetime,
            clock=_now,
            routes=config.routes,
        )

    async def start(self) -> None:
        """Open the IdP client and load its metadata in the background."""
        await self._provider.start()

    async def close(self) -> None:
        """Close the IdP client, then the session store."""
        await self._provider.close()
        await self.store.close()

    @property
    def ready(self) -> bool:
        """The IdP's metadata has been loaded."""
        return self._provider.ready

    def metadata_ages(self) -> dict[str, float]:
        """Seconds since the IdP's ``discovery`` document and ``jwks`` were fetched."""
        return self._provider.ages()

    async def readiness(self) -> dict[str, bool]:
        """``idp``: metadata loaded; ``session_store``: the store answers.

        Until the IdP's metadata is loaded, each probe starts one more attempt in the
        background (never two at once), so a pod that started during an IdP outage
        becomes ready once the IdP is back.
        """
        return {"idp": self._provider.probe(), "session_store": await self.store.ping()}

    async def endpoint(
        self, request: web.BaseRequest, path: str, exchange: Exchange
    ) -> web.StreamResponse:
        """Answer a ``/.iap/`` request; :class:`~iap.errors.NotFound` for paths not ours.
        ``exchange`` is the request's audit line, which the endpoint names who it is about."""
        return await self._endpoints.endpoint(request, path, exchange)

    async def authenticate(self, request: web.BaseRequest) -> Caller:
        """The caller behind the session cookie, refreshed when due; anonymous otherwise.

        Raises :class:`~iap.adapters.store.StoreUnavailable` (fail closed).
        """
        return await self._check.authenticate(request)

    async def viewer(self, request: web.BaseRequest) -> Identity | None:
        """Who is signed in, for a page about something else (a 404...): nothing is refreshed
        or written, and nobody when the store does not answer."""
        return await self._check.viewer(request)

    @property
    def authority(self) -> str:
        """The IdP's base URL (``https://login.microsoftonline.com``)."""
        return self._provider.authority

    async def entra_keys(self, *, unknown_kid: bool = False) -> dict[str, Any] | None:
        """The IdP's JWKS (cached); with ``unknown_kid``, a rate-limited refetch or None."""
        return await self._provider.keys(unknown_kid=unknown_kid)
