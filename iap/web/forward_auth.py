"""``/.iap/auth`` for nginx ``auth_request``, Traefik and Envoy ext_authz (SPEC §3, §5.1).

The front proxy asks about the request it holds (the *original*, ``iap.domain.forward_auth``):
in headers (``GET /.iap/auth``), or, for Envoy ext_authz with ``path_prefix``, in the rest
of the request line (``/.iap/auth/<original target>``). The original is judged by the same
steps as a proxied request (``iap.web.admission``).

Invariants:
- Never forwards. The answer is 200 with the identity headers and token, 401, or 403:
  an anonymous browser gets 401, not a redirect, since front proxies treat any answer
  but 2xx, 401 and 403 as an error.
- The original is believed only from ``trusted_proxies`` (SPEC §7); any other peer gets
  403 whatever it asks.
- A prefixed target is normalised on its own: a dot segment cannot climb out of the prefix.
- An original that no route serves is 403 (``no_route``), not 404.
"""

from __future__ import annotations

from aiohttp import web

from iap.adapters.telemetry import RequestSpan
from iap.config import Config
from iap.domain import forward_auth
from iap.domain.headers import identity_headers
from iap.domain.routing import RouteTable
from iap.errors import Forbidden, MethodNotAllowed
from iap.model import Exchange
from iap.web.admission import Admission
from iap.web.routes import PreparedRoute

PATH = forward_auth.PATH
PREFIX = forward_auth.PATH + "/"


class ForwardAuth:
    """The forward-auth endpoint over one gateway's routes and admission."""

    def __init__(
        self,
        config: Config,
        routes: RouteTable[PreparedRoute],
        admission: Admission,
        *,
        mints: bool,
    ) -> None:
        fa = config.forward_auth
        self._sources = forward_auth.Sources(fa.uri_header, fa.method_header, fa.host_header)
        self._routes = routes
        self._admission = admission
        self._mints = mints

    async def prefixed(
        self, request: web.BaseRequest, exchange: Exchange, span: RequestSpan, *, trusted: bool
    ) -> web.StreamResponse:
        """``/.iap/auth/<original target>`` (Envoy ext_authz with ``path_prefix``)."""
        exchange.route = "_iap"
        _require_trusted(trusted)
        suffix = request.raw_path[len(PATH) :]
        original = forward_auth.from_path(
            suffix, method=request.method, host=exchange.host, headers=request.headers.items()
        )
        return await self._answer(request, exchange, span, original)

    async def headed(
        self, request: web.BaseRequest, exchange: Exchange, span: RequestSpan, *, trusted: bool
    ) -> web.StreamResponse:
        """``GET /.iap/auth`` with the original request in the front proxy's headers."""
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(headers=[("Allow", "GET, HEAD")])
        _require_trusted(trusted)
        original = forward_auth.from_headers(request.headers.items(), self._sources)
        return await self._answer(request, exchange, span, original)

    async def _answer(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        span: RequestSpan,
        original: forward_auth.Original,
    ) -> web.StreamResponse:
        """200 with the identity headers and token when ``original`` may pass; raises the
        401 or 403 otherwise."""
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
        caller, presented = await self._admission.admit(
            request, exchange, route, span, original.method, original.target, redirect=False
        )
        assert caller.identity is not None  # admit raised otherwise
        for name, value in identity_headers(caller.identity):
            answer.headers.add(name, value)
        for cookie in caller.cookies:
            answer.headers.add("Set-Cookie", cookie)
        if self._mints:
            sid = caller.session.sid if caller.session else None
            name, value = self._admission.token(caller.identity, presented, route.audience, sid)
            answer.headers[name] = value
        return answer


def _require_trusted(trusted: bool) -> None:
    """Forward-auth believes the original request only from ``trusted_proxies`` (SPEC §7)."""
    if not trusted:
        raise Forbidden("forward-auth from an untrusted peer", reason="untrusted_peer")
