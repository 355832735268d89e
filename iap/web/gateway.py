"""The request pipeline of the public listener (SPEC §2), in its order.

Invariants:
- Fail closed: any error before the upstream answered means nothing was forwarded
  and the client gets iap's own generic error page.
- The path that is routed is the path that is forwarded (``iap.domain.paths``).
- The reserved prefix ``/.iap/`` is never forwarded.
- Exactly one audit line and one set of metrics per request, whatever happened.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.adapters.ratelimit import RateLimiter
from iap.adapters.store import StoreUnavailable
from iap.adapters.telemetry import CURRENT, RequestSpan, Tracing
from iap.adapters.tls import Material
from iap.adapters.upstream import Transfer, Upstreams
from iap.config import Config
from iap.domain import correlation, forward_auth, ratelimit
from iap.domain.headers import HeaderFilter, TrustedProxies, forwarded, identity_headers
from iap.domain.negotiation import prefers_html
from iap.domain.paths import Target, normalise
from iap.domain.policy import Facts, decide
from iap.errors import (
    BadRequest,
    Forbidden,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    RequestError,
    ServiceUnavailable,
    TooManyRequests,
    UriTooLong,
)
from iap.model import Exchange, Identity
from iap.web import relay
from iap.web.bearer import BearerAuth, Refused, Verified, bearer_token, refused
from iap.web.errorpage import SERVER, error_response
from iap.web.minting import Minter
from iap.web.routes import PreparedRoute, route_table
from iap.web.signin import Caller, SignIn, challenge

log = logging.getLogger("iap")

RESERVED_PREFIX = forward_auth.RESERVED
_PUBLIC_DECISION = {
    "iap.authn.method": "none",
    "iap.authz.decision": "allow",
    "iap.authz.reason": "public",
}
_FORWARD_AUTH_PREFIX = forward_auth.PATH + "/"
_CREDENTIAL_PATHS = ("/.iap/callback", "/.iap/token")
_FAILED = re.compile(r"(?:exchange_)?bearer_|login_refused:")
"""Audit reasons of a credential that failed: a refused bearer token or sign-in."""


class Gateway:
    """Routes, filters and forwards; one instance per listener and process."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics,
        audit: AuditLog,
        tracing: Tracing,
        signin: SignIn | None = None,
        minter: Minter | None = None,
        bearer: BearerAuth | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._signin = signin
        self._limiter = limiter
        failures = config.auth_failures
        self._failures = ratelimit.Quota(failures.requests, failures.per) if failures else None
        self._minter = minter
        self._bearer = bearer
        self._documents: dict[str, Callable[[], Awaitable[web.Response]]] = (
            {
                "/.iap/jwks.json": minter.jwks,
                "/.iap/.well-known/openid-configuration": minter.discovery,
            }
            if minter is not None
            else {}
        )
        self._limits = config.limits
        self._trust = TrustedProxies(config.trusted_proxies)
        fa = config.forward_auth
        self._sources = forward_auth.Sources(fa.uri_header, fa.method_header, fa.host_header)
        self._tracing = tracing
        # With minted tokens, the token header is iap's alone: a client's copy never passes.
        token_headers = ["authorization", config.tokens.header] if config.tokens else []
        self._filter = HeaderFilter(
            [*config.identity_headers, *token_headers], tracing.propagation_headers
        )
        self._upstreams = Upstreams()
        self._metrics = metrics
        self._audit = audit
        self._routes = route_table(config, self._upstreams)
        self.draining = False

    @property
    def tls_materials(self) -> list[Material]:
        return self._upstreams.materials()

    async def close(self) -> None:
        await self._upstreams.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; never raises."""
        started = time.perf_counter()
        peer = request.remote or ""
        trusted = self._trust.contains(peer)
        headers = request.headers
        exchange = Exchange(
            started=started,
            correlation_id=correlation.choose(headers.get("X-Correlation-ID"), trusted=trusted),
            client_ip=self._trust.client_ip(peer, headers.get("X-Forwarded-For")),
            method=request.method,
            host=headers.get("Host", ""),
            path="",
        )
        span = self._tracing.start_request(
            name=request.method,
            headers=headers,
            trusted=trusted,
            attributes=lambda: {
                "http.request.method": request.method,
                "url.scheme": request.scheme,
                "server.address": exchange.host.rpartition(":")[0] or exchange.host,
                "client.address": exchange.client_ip,
                "network.peer.address": peer,
                "iap.correlation_id": exchange.correlation_id,
            },
        )
        exchange.trace_id, exchange.span_id = span.ids
        CURRENT.set(span)  # each request runs in its own task: IdP calls find their parent
        transfer = Transfer()
        guarded = False
        try:
            guarded = await self._slow_down(request, exchange)
            response = await self._serve(
                request, exchange, transfer, span, peer=peer, trusted=trusted
            )
        except RequestError as exc:
            span.end_upstream(None, exc.reason)
            response = self._refuse(request, exchange, exc)
        except Exception:
            log.exception("unexpected error, correlation_id=%s", exchange.correlation_id)
            response = self._refuse(request, exchange, RequestError("unexpected error"))
        if guarded and _FAILED.match(exchange.reason or ""):
            await self._count_failure(exchange)
        if not response.prepared and "X-Correlation-ID" not in response.headers:
            # iap's own answers (sign-in endpoints, redirects): same headers as its errors
            response.headers["X-Correlation-ID"] = exchange.correlation_id
            response.headers["Server"] = SERVER
        self._record(exchange, transfer, response)
        if span.recording:
            span.set("url.path", exchange.path)
        span.end(response.status, exchange.reason)
        return response

    async def _slow_down(self, request: web.BaseRequest, exchange: Exchange) -> bool:
        """The edge-wide limit on failed credentials (``auth_failures``): a client address
        that failed too often gets 429 before its bearer token or sign-in callback is even
        examined (credential stuffing, bursts of random ``kid``s). Whether this request
        presents credentials that count."""
        failures = self._failures
        presents = (
            request.raw_path.startswith(_CREDENTIAL_PATHS)
            or request.headers.get("Authorization", "")[:7].lower() == "bearer "
        )
        if failures is None or self._limiter is None or not presents:
            return False
        key = _failure_key(exchange)
        if await self._limiter.exhausted(key, failures):
            exchange.decision = "deny"
            raise TooManyRequests(
                reason="auth_failures_limited", headers=[("Retry-After", str(failures.window))]
            )
        return True

    async def _count_failure(self, exchange: Exchange) -> None:
        assert self._failures is not None
        assert self._limiter is not None
        await self._limiter.hit(_failure_key(exchange), self._failures, on_store_error="allow")

    async def _serve(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        transfer: Transfer,
        span: RequestSpan,
        *,
        peer: str,
        trusted: bool,
    ) -> web.StreamResponse:
        self._check_bounds(request)
        exchange.path = request.raw_path.partition("?")[0][:1024]  # until normalised
        host = exchange.host
        if not forward_auth.HOST.fullmatch(host):
            raise BadRequest("missing or malformed Host header")
        if request.raw_path.startswith(_FORWARD_AUTH_PREFIX) and self._signin is not None:
            # Envoy ext_authz with path_prefix: the rest of the request line is the original
            # target, normalised on its own (a dot segment cannot climb out of the prefix).
            exchange.route = "_iap"
            _require_trusted(trusted)
            suffix = request.raw_path[len(forward_auth.PATH) :]
            original = forward_auth.from_path(
                suffix, method=request.method, host=host, headers=request.headers.items()
            )
            return await self._forward_auth(request, exchange, span, original)
        target = normalise(request.raw_path)
        exchange.path = target.path
        if target.path.startswith(RESERVED_PREFIX):
            exchange.route = "_iap"
            if target.path == forward_auth.PATH and self._signin is not None:
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed(headers=[("Allow", "GET, HEAD")])
                _require_trusted(trusted)
                original = forward_auth.from_headers(request.headers.items(), self._sources)
                return await self._forward_auth(request, exchange, span, original)
            return await self._reserved(request, target.path)
        route = self._routes.match(host, target.path, request.method)
        if route is None:
            raise NotFound(f"no route for {request.method} {host}{target.path}")
        exchange.route = route.name
        exchange.upstream = route.upstream.origin
        if span.recording:
            span.rename(f"{request.method} {route.name}")
            span.set("iap.route", route.name)
        cookies: list[str] = []
        identity: Identity | None = None
        sid = presented = None
        audience = route.config.audience or route.name
        if route.config.policy.public:
            exchange.decision, exchange.reason = "allow", "public"
            if span.recording:
                span.decision("iap.authz", _PUBLIC_DECISION)
        else:
            caller, presented = await self._admit(
                request, exchange, route, span, request.method, target
            )
            identity, cookies = caller.identity, caller.cookies
            sid = caller.session.sid if caller.session else None
        limited = await self._rate_limit(route, exchange, identity)  # SPEC §2 step 8
        incoming = list(request.headers.items())
        upstream_headers = self._filter.request(incoming, trusted=trusted)
        if identity is not None:
            upstream_headers += identity_headers(identity)
            if self._minter is not None:  # SPEC §2 step 9: exactly one token upstream
                upstream_headers.append(self._token(identity, presented, audience, sid))
        if route.config.preserve_host:
            upstream_headers.append(("Host", host))
        upstream_headers += forwarded(
            peer=peer, trusted=trusted, incoming=incoming, scheme=request.scheme, host=host
        )
        upstream_headers += [
            ("X-Correlation-ID", exchange.correlation_id),
            ("X-Request-ID", exchange.correlation_id),
        ]
        upstream_headers += span.start_upstream(
            request.method,
            lambda: {
                "http.request.method": request.method,
                "server.address": route.upstream.host,
                "server.port": route.upstream.port,
                "url.full": route.upstream.origin + target.path,
            },
        ).items()
        reply_headers = (
            ("X-Correlation-ID", exchange.correlation_id),
            *(("Set-Cookie", cookie) for cookie in cookies),
            *limited,
        )
        upgrade = request.method == "GET" and relay.says_websocket(request)
        response = await (relay.forward_websocket if upgrade else relay.forward)(
            request,
            route.upstream,
            target=str(target),
            headers=upstream_headers,
            reply_headers=reply_headers,
            max_body=route.config.max_body,
            timeouts=route.timeouts,
            transfer=transfer,
        )
        span.end_upstream(response.status)
        return response

    async def _rate_limit(
        self, route: PreparedRoute, exchange: Exchange, identity: Identity | None
    ) -> list[tuple[str, str]]:
        """The route's limit, after the decision and before a token is minted or the
        upstream contacted: 429 over it; otherwise the RateLimit headers for the reply."""
        limit, quota = route.config.rate_limit, route.quota
        if limit is None or quota is None or self._limiter is None:
            return []
        key = ratelimit.key_for(
            limit.key,
            route=route.name,
            subject=identity.subject if identity else None,
            client=exchange.client_ip,
        )
        verdict = await self._limiter.hit(key, quota, on_store_error=limit.on_store_error)
        if verdict.store_error and verdict.allowed:
            return []  # nothing known to tell the client
        if verdict.allowed:
            return ratelimit.headers(
                limit=quota, remaining=verdict.remaining, reset_after=verdict.reset_after
            )
        self._metrics.rate_limited.labels(route.name).inc()
        exchange.decision = "deny"
        reason = "rate_limit_store_error" if verdict.store_error else "rate_limited"
        raise TooManyRequests(
            reason=reason,
            headers=ratelimit.headers(
                limit=quota,
                remaining=0,
                reset_after=verdict.reset_after,
                refused=True,
            ),
        )

    async def _forward_auth(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        span: RequestSpan,
        original: forward_auth.Original,
    ) -> web.StreamResponse:
        """``/.iap/auth`` for nginx ``auth_request``, Traefik and Envoy ext_authz (SPEC §3,
        §5.1): 200 with the identity headers and token, 401, or 403; never forwards.

        ``original`` is the request the front proxy holds (``iap.domain.forward_auth``); it
        is judged by the same steps as a proxied request, but an anonymous browser gets 401,
        not a redirect: front proxies treat any answer but 2xx, 401 and 403 as an error.
        """
        exchange.method, exchange.path = original.method, original.target.path  # as judged
        route = self._routes.match(original.host, original.target.path, original.method)
        if route is None:
            raise Forbidden(
                f"forward-auth: no route for {original.host}{original.target.path}",
                reason="no_route",
            )
        exchange.route = route.name
        answer = web.Response(status=200, headers={"Cache-Control": "no-store"})
        if route.config.policy.public:
            exchange.decision, exchange.reason = "allow", "public"
            return answer
        caller, presented = await self._admit(
            request, exchange, route, span, original.method, original.target, redirect=False
        )
        assert caller.identity is not None  # _admit raised otherwise
        for name, value in identity_headers(caller.identity):
            answer.headers.add(name, value)
        for cookie in caller.cookies:
            answer.headers.add("Set-Cookie", cookie)
        if self._minter is not None:
            sid = caller.session.sid if caller.session else None
            audience = route.config.audience or route.name
            name, value = self._token(caller.identity, presented, audience, sid)
            answer.headers[name] = value
        return answer

    async def _admit(
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
        """SPEC §2 steps 6 and 7: the caller, once the route's policy lets it pass.

        Fail closed: anything unexpected while authenticating or authorizing is logged with
        the correlation id, counted in ``iap_authn_internal_errors_total`` and answered as
        for a caller without credentials (401, or 302 to sign-in), never 500, never a pass.
        """
        try:
            caller, presented = await self._authenticate(
                request, exchange, route.config.audience or route.name
            )
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

    def _token(
        self, identity: Identity, presented: str | None, audience: str, sid: str | None
    ) -> tuple[str, str]:
        """The token header for the upstream: an iap token the caller presented for this
        audience goes on as it came; anyone else gets one minted for ``audience``."""
        assert self._minter is not None
        if presented is not None:
            return self._minter.carry(presented)
        return self._minter.header_for(identity, audience=audience, sid=sid)

    async def _reserved(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """``/.iap/``: the key documents, then the sign-in endpoints; never forwarded."""
        if path == "/.iap/token" and self._bearer is not None:
            if request.method != "POST":
                raise MethodNotAllowed(headers=[("Allow", "POST")])
            return await self._bearer.exchange(request)
        document = self._documents.get(path)
        if document is not None:
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(headers=[("Allow", "GET, HEAD")])
            return await document()
        if self._signin is None:
            raise NotFound("no endpoint under the reserved prefix")
        return await self._signin.endpoint(request, path)

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
            assert self._bearer is not None
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
        self._metrics.observe_authz(route.name, exchange.decision)
        if span.recording:
            span.decision(
                "iap.authz",
                {
                    "iap.authn.method": exchange.authn_method or "none",
                    "iap.authn.result": "ok" if caller.identity else caller.reason,
                    "iap.authz.decision": exchange.decision,
                    "iap.authz.reason": decision.reason,
                    **({"iap.tenant": caller.identity.tid} if caller.identity else {}),
                },
            )
        if decision.allow:
            return
        if decision.outcome == "sign_in":
            html = redirect and prefers_html(request.headers.get("Accept"))
            raise challenge(
                caller, html=html, method=request.method, target=target, reason=exchange.reason
            )
        raise Forbidden(reason=decision.reason, headers=[("Set-Cookie", c) for c in caller.cookies])

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

    def _check_bounds(self, request: web.BaseRequest) -> None:
        """SPEC §2 step 1: bound the request before any other work."""
        limits = self._limits
        if len(request.raw_path) > limits.max_url_bytes:
            raise UriTooLong(f"request target of {len(request.raw_path)} bytes")
        raw = request.raw_headers
        if len(raw) > limits.max_headers:
            raise HeadersTooLarge(f"{len(raw)} header fields")
        if sum(len(name) + len(value) for name, value in raw) > limits.max_header_bytes:
            raise HeadersTooLarge("header section over the size limit")

    def _refuse(
        self, request: web.BaseRequest, exchange: Exchange, exc: RequestError
    ) -> web.Response:
        exchange.reason = exc.reason
        if exc.status >= 500:
            log.warning(
                "%s: %s, correlation_id=%s", exc.reason, exc.detail, exchange.correlation_id
            )
        response = error_response(
            exc.status,
            type(exc).reason,  # the class's generic code; the specific reason is for the log
            exc.public,
            exchange.correlation_id,
            request.headers.get("Accept"),
        )
        for name, value in exc.headers:
            response.headers.add(name, value)
        return response

    def _record(self, exchange: Exchange, transfer: Transfer, response: web.StreamResponse) -> None:
        now = time.perf_counter()
        exchange.status = response.status
        exchange.bytes_in = transfer.bytes_in
        exchange.bytes_out = transfer.bytes_out
        if isinstance(response, web.Response) and response.body is not None:
            exchange.bytes_out = len(response.body)  # type: ignore[arg-type]
        if transfer.client_gone:
            exchange.reason = "client_closed"
        elif transfer.aborted:
            exchange.reason = "upstream_aborted"
        route = exchange.route or "_none"
        self._metrics.observe_request(
            route, exchange.method, exchange.status, now - exchange.started
        )
        if transfer.upstream_seconds is not None:
            self._metrics.observe_upstream(
                route, exchange.method, exchange.status, transfer.upstream_seconds
            )
        self._audit.record(exchange, now=now)

    def readiness(self) -> dict[str, bool]:
        """Checks for ``/readyz``; every value must be true to receive traffic."""
        return {"accepting": not self.draining, "routes": True}


def _failure_key(exchange: Exchange) -> str:
    """The counter of failed credentials of the request's client address."""
    return ratelimit.key_for(
        "client", route="_auth_failures", subject=None, client=exchange.client_ip
    )


def _require_trusted(trusted: bool) -> None:
    """Forward-auth believes the original request only from ``trusted_proxies`` (SPEC §7)."""
    if not trusted:
        raise Forbidden("forward-auth from an untrusted peer", reason="untrusted_peer")
