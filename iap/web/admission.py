"""Who is calling and whether the route lets them in (SPEC §2 steps 6, 7 and 9), for the
gateway and forward-auth alike.

Invariants:
- Fail closed: anything unexpected while authenticating or authorizing is logged with the
  correlation id, counted in ``iap_authn_internal_errors_total`` and answered as for a
  caller without credentials (401, or 302 to sign-in); never 500, never a pass.
- Deny by default: the route's policy decides. An anonymous caller whom signing in could
  let through is challenged; any other denial is 403.
- The session cookie counts first, then ``Authorization: Bearer``. An iap token is good
  only for its own audience; another service's must be exchanged (``/.iap/token``).
- Exactly one token goes upstream: an iap token the caller presented for this audience
  as it came, else one minted for the route's audience.
"""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web

from iap.adapters.metrics import Metrics
from iap.adapters.store import StoreUnavailable
from iap.adapters.telemetry import RequestSpan
from iap.domain.negotiation import prefers_html
from iap.domain.outage import GRACE_REASON
from iap.domain.paths import Target
from iap.domain.policy import Facts, decide
from iap.errors import Forbidden, RequestError, ServiceUnavailable
from iap.model import Exchange, Identity
from iap.web.bearer import BearerAuth, Refused, Verified, bearer_token, refused
from iap.web.minting import Minter
from iap.web.routes import PreparedRoute
from iap.web.signin import Caller, SignIn, challenge

log = logging.getLogger("iap")


class Admission:
    """Authentication, authorization and the upstream token; one per gateway."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        signin: SignIn | None,
        bearer: BearerAuth | None,
        minter: Minter | None,
    ) -> None:
        self._metrics = metrics
        self._signin = signin
        self._bearer = bearer
        self._minter = minter

    async def admit(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        route: PreparedRoute,
        span: RequestSpan,
        method: str,
        target: Target,
        *,
        redirect: bool = True,
    ) -> tuple[Caller, str | None]:
        """SPEC §2 steps 6 and 7: the caller, once the route's policy lets it pass, and the
        iap token it presented for the route's audience, if any; raises otherwise.

        ``method`` and ``target`` are the request judged (forward-auth's original one);
        without ``redirect`` an anonymous browser gets 401, not 302.
        """
        try:
            caller, presented = await self._authenticate(request, exchange, route.audience)
            facts = self._facts(route, exchange, caller, method, target.path)
            self._authorize(request, route, exchange, span, caller, facts, str(target), redirect)
        except RequestError:
            raise
        except Exception:
            log.exception("authentication error, correlation_id=%s", exchange.correlation_id)
            self._metrics.authn_internal_errors.inc()
            exchange.decision, exchange.reason = "deny", "authn_internal_error"
            if bearer_token(request) is not None:
                raise refused("authn_internal_error") from None
            raise challenge(
                Caller(),
                html=redirect and prefers_html(request.headers.get("Accept")),
                method=request.method,
                target=str(target),
                reason="authn_internal_error",
            ) from None
        return caller, presented

    def token(
        self, identity: Identity, presented: str | None, audience: str, sid: str | None
    ) -> tuple[str, str]:
        """The token header for the upstream: an iap token the caller presented for this
        audience goes on as it came; anyone else gets one minted for ``audience``."""
        assert self._minter is not None
        if presented is not None:
            return self._minter.carry(presented)
        return self._minter.header_for(identity, audience=audience, sid=sid)

    async def _authenticate(
        self, request: web.BaseRequest, exchange: Exchange, audience: str
    ) -> tuple[Caller, str | None]:
        """SPEC §2 step 6: the session cookie, else ``Authorization: Bearer``.

        Returns the caller and, when it presented an iap token for ``audience``, that token.
        """
        assert self._signin is not None  # config refuses protected routes without oidc
        try:
            caller = await self._signin.authenticate(request)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("session store down", reason="store_unavailable") from exc
        presented = None
        token = bearer_token(request) if caller.identity is None and self._bearer else None
        if token is not None:
            verified = await self._verify_bearer(token, audience, exchange)
            caller = Caller(verified.identity, None, caller.cookies, "bearer", verified.claims)
            presented = token if verified.method == "iap" else None
            exchange.authn_method = "bearer"
        elif caller.identity is not None:
            exchange.authn_method = "session"
            self._metrics.observe_authn("session", "ok")
        else:
            self._metrics.observe_authn("session", caller.reason)
        if caller.identity is not None:
            exchange.subject = caller.identity.subject
            exchange.tenant = caller.identity.tid
            exchange.identity = caller.identity
        return caller, presented

    async def _verify_bearer(self, token: str, audience: str, exchange: Exchange) -> Verified:
        """The caller of a bearer token; 401 ``invalid_token`` when it is not believed."""
        assert self._bearer is not None
        try:
            verified = await self._bearer.verify(token)
            if verified.method == "iap" and verified.audience != audience:
                raise Refused("bearer_audience")  # another service's token: exchange it
        except Refused as exc:
            self._metrics.observe_authn("bearer", exc.reason)
            exchange.decision = "deny"
            raise refused(exc.reason) from None
        self._metrics.observe_authn(verified.method, "ok")
        return verified

    def _authorize(
        self,
        request: web.BaseRequest,
        route: PreparedRoute,
        exchange: Exchange,
        span: RequestSpan,
        caller: Caller,
        facts: Facts,
        target: str,
        redirect: bool,
    ) -> None:
        """SPEC §2 step 7: the route's policy, deny by default; raises when denied.

        An anonymous caller whom signing in could let through is challenged: a browser with
        ``redirect`` is sent to sign-in. A deny rule refuses anonymous callers with 403.
        """
        decision = decide(route.config.policy, facts)
        exchange.decision = "allow" if decision.allow else "deny"
        exchange.reason = decision.reason
        if caller.identity is None and caller.reason != "no_session":
            exchange.reason = caller.reason  # e.g. session_invalid: why the cookie did not count
        elif decision.allow and caller.reason == GRACE_REASON:
            exchange.reason = GRACE_REASON  # let in by a session the IdP could not refresh
        self._metrics.observe_authz(route.name, exchange.decision)
        if span.recording:
            span.decision(
                "iap.authz",
                {
                    "iap.authn.method": exchange.authn_method or "none",
                    "iap.authn.result": "ok" if caller.identity else caller.reason,
                    "iap.authz.decision": exchange.decision,
                    "iap.authz.reason": decision.reason,
                    **(_who(caller.identity) if caller.identity else {}),
                },
            )
        if decision.allow:
            return
        if decision.outcome == "sign_in":
            html = redirect and prefers_html(request.headers.get("Accept"))
            raise challenge(
                caller, html=html, method=request.method, target=target, reason=exchange.reason
            )
        cookies = [("Set-Cookie", c) for c in caller.cookies]
        raise Forbidden(reason=decision.reason, headers=cookies, return_to=target)

    @staticmethod
    def _facts(
        route: PreparedRoute, exchange: Exchange, caller: Caller, method: str, path: str
    ) -> Facts:
        """What the route's policy decides on; the token claims only when a rule reads them."""
        claims = caller.claims() if route.config.policy.reads_claims else {}
        auth: Literal["session", "bearer"] = (
            "bearer" if exchange.authn_method == "bearer" else "session"
        )
        return Facts(
            method=method,
            path=path,
            identity=caller.identity,
            auth=auth if caller.identity is not None else None,
            client=exchange.client_ip,
            claims=claims,
        )


def _who(identity: Identity) -> dict[str, str]:
    """The caller on the span: the same ``iap.subject`` (``sub``, as in ``X-IAP-Subject``)
    and ``iap.tenant`` that the mesh's Telemetry tags carry; never an email."""
    return {"iap.subject": identity.subject, "iap.tenant": identity.tid}
