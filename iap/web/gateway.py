"""The request pipeline of the public listener (SPEC §2), in its order.

One request passes each step once: bound (step 1), route (5), decide (6 and 7,
``iap.web.admission``), rate limit (8, ``iap.web.throttle``), identity and mint (4 and 9:
the upstream's headers), forward (10, ``iap.web.relay``) and record (11). The reserved
prefix has its own endpoints: forward-auth (``iap.web.forward_auth``), the key documents,
token exchange and sign-in.

Invariants:
- Fail closed: any error before the upstream answered means nothing was forwarded
  and the client gets iap's own generic error page.
- The path that is routed is the path that is forwarded (``iap.domain.paths``).
- The reserved prefix ``/.iap/`` is never forwarded.
- Exactly one audit line and one set of metrics per request, whatever happened.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import ItemsView

from aiohttp import web

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.adapters.ratelimit import RateLimiter
from iap.adapters.telemetry import RequestSpan, Tracing
from iap.adapters.tls import Material
from iap.adapters.upstream import Transfer, Upstreams
from iap.config import Config
from iap.domain import correlation, forward_auth
from iap.domain.headers import HeaderFilter, TrustedProxies, forwarded, identity_headers
from iap.domain.paths import Target, normalise
from iap.errors import (
    BadRequest,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    RequestError,
    UriTooLong,
)
from iap.model import Exchange
from iap.web import relay
from iap.web.admission import Admission
from iap.web.bearer import BearerAuth
from iap.web.errorpage import SERVER, refusal, shows_viewer
from iap.web.forward_auth import PATH, PREFIX, ForwardAuth
from iap.web.load import Load
from iap.web.minting import Minter
from iap.web.routes import PreparedRoute, route_table
from iap.web.signin import Caller, SignIn
from iap.web.throttle import Throttle

log = logging.getLogger("iap")

RESERVED_PREFIX = forward_auth.RESERVED
_PUBLIC_DECISION = {
    "iap.authn.method": "none",
    "iap.authz.decision": "allow",
    "iap.authz.reason": "public",
}
_PUBLIC: tuple[Caller | None, str | None] = (None, None)
"""The caller of a public route: nobody is authenticated, nothing was presented."""


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
        load: Load | None = None,
    ) -> None:
        self._signin = signin
        self._minter = minter
        self._bearer = bearer
        self._documents = minter.documents() if minter is not None else {}
        self._limits = config.limits
        self._load = load or Load(config.limits.max_in_flight, None)  # no edge: none counted
        self._trust = TrustedProxies(config.trusted_proxies)
        self._ids = correlation.CorrelationIds(os.urandom)
        self._tracing = tracing
        self._filter = _request_filter(config, tracing)
        self._metrics = metrics
        self._audit = audit
        self._throttle = Throttle(config, limiter=limiter, metrics=metrics)
        self._admission = Admission(metrics=metrics, signin=signin, bearer=bearer, minter=minter)
        self._upstreams = Upstreams()
        self._routes = route_table(config, self._upstreams)
        self._auth = (
            ForwardAuth(config, self._routes, self._admission, mints=minter is not None)
            if signin is not None
            else None
        )
        self.draining = False

    @property
    def tls_materials(self) -> list[Material]:
        return self._upstreams.materials()

    async def close(self) -> None:
        await self._upstreams.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; never raises."""
        peer = request.remote or ""
        trusted = self._trust.contains(peer)
        exchange = self._exchange(request, peer, trusted)
        span = self._span(request, exchange, peer, trusted)
        # Each request runs in its own task: the IdP calls made for it find their parent.
        self._tracing.current.set(span)
        transfer = Transfer()
        guarded = False
        try:
            guarded = await self._throttle.slow_down(request, exchange)
            response = await self._serve(
                request, exchange, transfer, span, peer=peer, trusted=trusted
            )
        except RequestError as exc:
            span.end_upstream(None, exc.reason)
            response = await self._refuse(request, exchange, exc)
        except Exception:
            log.exception("unexpected error, correlation_id=%s", exchange.correlation_id)
            response = refusal(request, exchange, RequestError("unexpected error"))
        if guarded and self._throttle.failed(exchange):
            await self._throttle.settle(exchange)
        if not response.prepared and "X-Correlation-ID" not in response.headers:
            # iap's own answers (sign-in endpoints, redirects): same headers as its errors
            response.headers["X-Correlation-ID"] = exchange.correlation_id
            response.headers["Server"] = SERVER
        self._record(exchange, transfer, response)
        if span.recording:
            span.set("url.path", exchange.path)
        span.end(response.status, exchange.reason)
        return response

    def _exchange(self, request: web.BaseRequest, peer: str, trusted: bool) -> Exchange:
        """SPEC §2 step 2: what is known of the request before any work (its correlation)."""
        headers = request.headers
        return Exchange(
            started=time.perf_counter(),
            correlation_id=self._ids.choose(headers.get("X-Correlation-ID"), trusted=trusted),
            client_ip=self._trust.client_ip(peer, headers.get("X-Forwarded-For")),
            method=request.method,
            host=headers.get("Host", ""),
            path="",
        )

    def _span(
        self, request: web.BaseRequest, exchange: Exchange, peer: str, trusted: bool
    ) -> RequestSpan:
        """SPEC §2 step 3: the SERVER span, its ids on the audit line."""
        span = self._tracing.start_request(
            name=request.method,
            headers=request.headers,
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
        return span

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
        """SPEC §2 steps 1 and 4 to 10, in order; raises what iap answers itself."""
        self._bound(request, exchange)
        self._load.admit()  # sheds past limits.max_in_flight, before any auth work
        if self._auth is not None and request.raw_path.startswith(PREFIX):
            return await self._auth.prefixed(request, exchange, span, trusted=trusted)
        target = normalise(request.raw_path)
        exchange.path = target.path
        if target.path.startswith(RESERVED_PREFIX):
            return await self._reserved(request, exchange, span, target.path, trusted)
        route = self._route(request, exchange, span, target)
        if route.config.policy.public:
            caller, presented = self._public(exchange, span)
        else:
            caller, presented = await self._admission.admit(
                request, exchange, route, span, request.method, target
            )
        identity = caller.identity if caller is not None else None
        limited = await self._throttle.route_limit(route, exchange, identity)
        headers = self._upstream_headers(request, exchange, route, caller, presented, peer, trusted)
        headers += self._trace_headers(request, route, span, target)
        forward = relay.forward_websocket if relay.upgrades(request) else relay.forward
        response = await forward(
            request,
            route.upstream,
            target=str(target),
            headers=headers,
            reply_headers=_reply_headers(exchange, caller, limited),
            max_body=route.config.max_body,
            timeouts=route.timeouts,
            transfer=transfer,
        )
        span.end_upstream(response.status)
        return response

    def _bound(self, request: web.BaseRequest, exchange: Exchange) -> None:
        """SPEC §2 step 1: bound the request before any other work; a Host is required."""
        limits = self._limits
        if len(request.raw_path) > limits.max_url_bytes:
            raise UriTooLong(f"request target of {len(request.raw_path)} bytes")
        raw = request.raw_headers
        if len(raw) > limits.max_headers:
            raise HeadersTooLarge(f"{len(raw)} header fields")
        if sum(len(name) + len(value) for name, value in raw) > limits.max_header_bytes:
            raise HeadersTooLarge("header section over the size limit")
        exchange.path = request.raw_path.partition("?")[0][:1024]  # until normalised
        if not forward_auth.HOST.fullmatch(exchange.host):
            raise BadRequest("missing or malformed Host header")

    def _route(
        self, request: web.BaseRequest, exchange: Exchange, span: RequestSpan, target: Target
    ) -> PreparedRoute:
        """SPEC §2 step 5: host, longest path prefix, methods; 404 without a route."""
        route = self._routes.match(exchange.host, target.path, request.method)
        if route is None:
            raise NotFound(f"no route for {request.method} {exchange.host}{target.path}")
        exchange.route = route.name
        exchange.upstream = route.upstream.origin
        if span.recording:
            span.rename(f"{request.method} {route.name}")
            span.set("iap.route", route.name)
        return route

    @staticmethod
    def _public(exchange: Exchange, span: RequestSpan) -> tuple[Caller | None, str | None]:
        """SPEC §2 steps 6 and 7 on a public route: allowed, nobody authenticated."""
        exchange.decision, exchange.reason = "allow", "public"
        if span.recording:
            span.decision("iap.authz", _PUBLIC_DECISION)
        return _PUBLIC

    def _upstream_headers(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        route: PreparedRoute,
        caller: Caller | None,
        presented: str | None,
        peer: str,
        trusted: bool,
    ) -> list[tuple[str, str]]:
        """SPEC §2 steps 4 and 9, §6: strip, then inject the identity, exactly one token,
        Host, the X-Forwarded-* set and the correlation id."""
        incoming = list(request.headers.items())
        headers = self._filter.request(incoming, trusted=trusted)
        if caller is not None and caller.identity is not None:
            headers += identity_headers(caller.identity)
            if self._minter is not None:
                sid = caller.session.sid if caller.session else None
                headers.append(
                    self._admission.token(caller.identity, presented, route.audience, sid)
                )
        host = exchange.host
        if route.config.preserve_host:
            headers.append(("Host", host))
        headers += forwarded(
            peer=peer, trusted=trusted, incoming=incoming, scheme=request.scheme, host=host
        )
        headers += [
            ("X-Correlation-ID", exchange.correlation_id),
            ("X-Request-ID", exchange.correlation_id),
        ]
        return headers

    @staticmethod
    def _trace_headers(
        request: web.BaseRequest, route: PreparedRoute, span: RequestSpan, target: Target
    ) -> ItemsView[str, str]:
        """The CLIENT span, opened as the request leaves; its trace headers."""
        return span.start_upstream(
            request.method,
            lambda: {
                "http.request.method": request.method,
                "server.address": route.upstream.host,
                "server.port": route.upstream.port,
                "url.full": route.upstream.origin + target.path,
            },
        ).items()

    async def _reserved(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        span: RequestSpan,
        path: str,
        trusted: bool,
    ) -> web.StreamResponse:
        """``/.iap/``: forward-auth, token exchange, the key documents, then the sign-in
        endpoints; never forwarded."""
        exchange.route = "_iap"
        if path == PATH and self._auth is not None:
            return await self._auth.headed(request, exchange, span, trusted=trusted)
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
        return await self._signin.endpoint(request, path, exchange)

    async def _refuse(
        self, request: web.BaseRequest, exchange: Exchange, exc: RequestError
    ) -> web.Response:
        """iap's own answer; a browser's page names who is signed in, also when the request
        was refused before its session was looked at (a 404, a 405, a 400 ...)."""
        viewer = exchange.identity
        if viewer is None and self._signin is not None and shows_viewer(request, exc):
            try:
                viewer = await self._signin.viewer(request)
            except Exception as error:  # a page's name line is never worth a 500
                log.warning("viewer lookup failed (%s)", type(error).__name__)
        return refusal(request, exchange, exc, viewer)

    def _record(self, exchange: Exchange, transfer: Transfer, response: web.StreamResponse) -> None:
        """SPEC §2 step 11: the audit line and the metrics, once per request."""
        now = time.perf_counter()
        exchange.status = response.status
        exchange.bytes_in = transfer.bytes_in
        exchange.bytes_out = transfer.bytes_out
        if isinstance(response, web.Response) and response.body is not None:
            exchange.bytes_out = len(response.body)  # type: ignore[arg-type]
        if transfer.client_gone:
            exchange.reason = "client_closed"
        elif transfer.aborted:
            exchange.reason = (
                "deadline_exceeded" if transfer.aborted == "deadline" else "upstream_aborted"
            )
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


def _request_filter(config: Config, tracing: Tracing) -> HeaderFilter:
    """What is stripped from a client's headers; with minted tokens the token header is
    iap's alone: a client's copy never passes."""
    token_headers = ["authorization", config.tokens.header] if config.tokens else []
    return HeaderFilter([*config.identity_headers, *token_headers], tracing.propagation_headers)


def _reply_headers(
    exchange: Exchange, caller: Caller | None, limited: list[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """What iap adds to the upstream's answer: the correlation id, the session's cookies
    and the route's RateLimit headers."""
    cookies = caller.cookies if caller is not None else ()
    return (
        ("X-Correlation-ID", exchange.correlation_id),
        *(("Set-Cookie", cookie) for cookie in cookies),
        *limited,
    )
