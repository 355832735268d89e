"""Listeners: the public one (the gateway) and the admin one (health, readiness, metrics).

Invariants:
- Everything that can fail from configuration (TLS material, routes) is built before
  a socket is bound (:meth:`Edge.__init__`); binding is :meth:`Edge.start`.
- Malformed or slow HTTP that never reaches the gateway is answered by
  :mod:`iap.web.listener`.
- Requests in flight are counted across reloads (:class:`~iap.web.load.Load`): past
  ``limits.max_in_flight`` the gateway sheds them. The admin listener is never counted.
- :meth:`Edge.stop` drains: readiness turns false, listeners close, in-flight requests
  get up to ``drain_timeout`` to finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass

from aiohttp import web

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.adapters.ratelimit import RateLimiter
from iap.adapters.telemetry import Tracing
from iap.adapters.tls import Material, expiry_in
from iap.config import Address, Config
from iap.errors import ConfigError
from iap.web.admin import admin_app
from iap.web.bearer import BearerAuth
from iap.web.gateway import Gateway
from iap.web.listener import PublicServer
from iap.web.load import Load
from iap.web.minting import Minter
from iap.web.signin import SignIn

log = logging.getLogger("iap")


def bind(address: Address, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; ``OSError`` when the address cannot be had."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return socket.create_server(
        (address.host, address.port), family=family, backlog=1024, reuse_port=reuse_port
    )


_RESTART_KEYS = (
    "public_url",
    "listen",
    "admin",
    "limits",
    "drain_timeout",
    "tls_watch_interval",
    "oidc",
    "session",
    "redis",
    "allowed_redirect_hosts",
    "tokens",
    "telemetry",
)
"""Built once per process (listeners and their parser bounds, sign-in's keys, IdP client and
store, the minter, tracing): a reload that changes one is refused by name, never half applied."""


def restart_changes(running: Config, fresh: Config) -> list[str]:
    """The keys of :data:`_RESTART_KEYS` that differ between ``running`` and ``fresh``."""
    return [key for key in _RESTART_KEYS if getattr(fresh, key) != getattr(running, key)]


@dataclass(frozen=True)
class Parts:
    """What one process serves with, built by the composition root (:mod:`iap.app.wiring`)
    from the config, the environment and the secrets."""

    metrics: Metrics
    audit: AuditLog
    tracing: Tracing
    limiter: RateLimiter
    listener_tls: Material | None = None
    signin: SignIn | None = None
    minter: Minter | None = None
    bearer: BearerAuth | None = None


class Edge:
    """One process's listeners. Build (may raise ConfigError), then start, then stop."""

    def __init__(self, config: Config, parts: Parts) -> None:
        """Raises :class:`ConfigError` when the routes cannot be served."""
        self.config = config
        self.metrics, self.audit, self.tracing = parts.metrics, parts.audit, parts.tracing
        self.limiter = parts.limiter
        self._tls = parts.listener_tls
        self.signin, self.minter, self.bearer = parts.signin, parts.minter, parts.bearer
        self.load = Load(config.limits.max_in_flight, self.metrics.shed)
        self.gateway = self._gateway(config)
        self._runners: list[web.BaseRunner] = []
        self._watcher: asyncio.Task[None] | None = None
        self.public_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    @property
    def public_url(self) -> str:
        assert self.public_address is not None
        host, port = self.public_address
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"

    async def start(self, *, reuse_port: bool = False) -> None:
        """Bind both listeners and serve."""
        self.tracing.start()
        if self.signin is not None:
            await self.signin.start()
        limits = self.config.limits
        server = PublicServer(
            self._dispatch,
            self.audit,
            self.metrics,
            header_timeout=limits.header_timeout,
            keepalive_timeout=limits.keepalive_timeout,
            max_headers=limits.max_headers * 2,
            max_field_size=limits.max_header_bytes,
            # Generous, so that our own check answers 414 with an audit line.
            # Generous, so our own check answers 414 with an audit line; never equal to the
            # field limit, so a parser refusal still tells a long target from a long header.
            max_line_size=max(8 * limits.max_url_bytes, 65536, limits.max_header_bytes + 1),
            access_log=None,
        )
        public = web.ServerRunner(
            server, shutdown_timeout=self.config.drain_timeout, handle_signals=False
        )
        admin = web.AppRunner(self._admin_app(), access_log=None, shutdown_timeout=1.0)
        for runner in (public, admin):
            await runner.setup()
            self._runners.append(runner)
        public_sock = bind(self.config.listen.address, reuse_port=reuse_port)
        admin_sock = bind(self.config.admin.address, reuse_port=reuse_port)
        listener_ssl = self._tls.context if self._tls else None
        await web.SockSite(public, public_sock, ssl_context=listener_ssl).start()
        await web.SockSite(admin, admin_sock).start()
        self.public_address = public_sock.getsockname()[:2]
        self.admin_address = admin_sock.getsockname()[:2]
        self._watcher = asyncio.ensure_future(self._watch_tls())

    def _admin_app(self) -> web.Application:
        return admin_app(
            self.readiness,
            self.metrics,
            self.tls_materials,
            self.minter,
            self.degraded,
            self.store_states,
        )

    def _gateway(self, config: Config) -> Gateway:
        return Gateway(
            config,
            metrics=self.metrics,
            audit=self.audit,
            tracing=self.tracing,
            signin=self.signin,
            minter=self.minter,
            bearer=self.bearer,
            limiter=self.limiter,
            load=self.load,
        )

    async def readiness(self) -> dict[str, bool]:
        """Every check ``/readyz`` reports; all must be true to receive traffic."""
        checks = self.gateway.readiness()
        if self.signin is not None:
            checks.update(await self.signin.readiness())
        if self.minter is not None:
            checks["signing_key"] = self.minter.ready()
        return checks

    def store_states(self) -> dict[str, object]:
        """``/readyz``'s ``stores``: the session store's backend and whether its last ping
        (made by :meth:`readiness`) was answered."""
        return {"session": self.signin.store.state()} if self.signin is not None else {}

    async def degraded(self) -> list[str]:
        """Dependencies that are down without making the pod unready (``/readyz``'s
        ``degraded``): ``rate_limit_store`` when Redis counts rate limits and does not
        answer. Every replica shares that Redis, so taking pods out of their Service would
        turn a rate-limit outage into a full one; ``on_store_error`` decides instead."""
        counts = self.config.auth_failures is not None or any(
            route.rate_limit is not None for route in self.config.routes
        )
        if counts and not await self.limiter.ping():
            return ["rate_limit_store"]
        return []

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        # One indirection so SIGHUP can swap the gateway under open keep-alive connections;
        # the count of requests in flight lives here, so it survives the swap.
        load = self.load
        load.in_flight += 1
        try:
            return await self.gateway.handle(request)
        finally:
            load.in_flight -= 1

    def reload(self, config: Config) -> Gateway:
        """SIGHUP: new routes and policies for new requests; returns the old gateway, which
        the caller closes once requests in flight on it had ``drain_timeout`` to finish.

        The keys of :data:`_RESTART_KEYS` need a restart: a reload that changes one is
        refused as a whole, naming each, and counted in ``iap_reload_refusals_total``.
        """
        changed = restart_changes(self.config, config)
        if changed:
            self.metrics.reload_refusals.inc()
            raise ConfigError([f"{key}: changes need a restart, not a reload" for key in changed])
        try:
            fresh = self._gateway(config)  # the running gateway stays
        except ConfigError:
            self.metrics.reload_refusals.inc()
            raise
        if self.bearer is not None:
            self.bearer.apply(config)  # bearer audiences and exchange rules
        old, self.gateway, self.config = self.gateway, fresh, config
        return old

    def tls_materials(self) -> list[Material]:
        listener = [self._tls] if self._tls else []
        return listener + self.gateway.tls_materials

    async def _watch_tls(self) -> None:
        """Re-read TLS files when they change; publish seconds to expiry."""
        while True:
            if self.minter is not None:
                try:
                    self.minter.refresh()  # keys_dir: new keys published, vanished ones retained
                except Exception:
                    log.exception("tokens.keys_dir: re-reading failed; the keys in use stay")
            for material in self.tls_materials():
                try:
                    if material.refresh() is False:
                        self.metrics.tls_reload_failures.labels(material.name).inc()
                    self.metrics.certificate_expiry.labels(material.name).set(expiry_in(material))
                except Exception:  # one bad material must not stop the others' rotation
                    log.exception("tls %s: watch failed", material.name)
            await asyncio.sleep(self.config.tls_watch_interval)

    async def stop(self) -> None:
        """Drain in-flight requests (bounded by ``drain_timeout``), then close everything."""
        self.gateway.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        await self.gateway.close()
        await self.limiter.close()
        if self.signin is not None:
            await self.signin.close()
        await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)

    def describe(self) -> str:
        admin = self.admin_address or ("?", 0)
        return json.dumps({"public": self.public_url, "admin": f"http://{admin[0]}:{admin[1]}"})


async def wait_for_signals(*signals: int) -> int:
    """Block until one of ``signals`` arrives; returns it. Repeats are ignored, so a second
    SIGTERM from an impatient orchestrator does not cut the drain short."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def deliver(number: int) -> None:
        if not received.done():
            received.set_result(number)

    for number in signals:
        loop.add_signal_handler(number, deliver, number)
    return await received
