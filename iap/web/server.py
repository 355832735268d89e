"""Listeners: the public one (the gateway) and the admin one (health, readiness, metrics).

Invariants:
- Everything that can fail from configuration (TLS material, routes) is built before
  a socket is bound (:meth:`Edge.__init__`); binding is :meth:`Edge.start`.
- Malformed HTTP that never reaches the gateway still gets iap's generic error page,
  an audit line and no library banner.
- :meth:`Edge.stop` drains: readiness turns false, listeners close, in-flight requests
  get up to ``drain_timeout`` to finish.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.adapters.telemetry import Tracing
from iap.adapters.tls import Material, expiry_in, listener_material
from iap.config import Address, Config
from iap.errors import ConfigError
from iap.model import Exchange
from iap.web.errorpage import error_response
from iap.web.gateway import Gateway


class _Protocol(RequestHandler):
    """aiohttp's connection handler, with iap's error page for unparseable requests."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        oversized = isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "headers" in str(exc.message)
        )
        status, code, public = (
            (431, "headers_too_large", "Request header fields too large.")
            if oversized
            else (status, "bad_request", "Bad request.")
            if status < 500
            else (500, "internal_error", "Internal error.")
        )
        correlation_id = str(uuid.uuid4())
        server: _PublicServer = self._manager  # type: ignore[assignment]
        server.audit.record(
            Exchange(
                started=time.perf_counter(),
                correlation_id=correlation_id,
                client_ip=request.remote or "",
                method=request.method,
                host="",
                path="",
                status=status,
                reason="malformed_request",
            )
        )
        response = error_response(status, code, public, correlation_id, None)
        response.force_close()
        return response


class _PublicServer(web.Server):
    def __init__(self, gateway: Gateway, audit: AuditLog, **kwargs: Any) -> None:
        super().__init__(gateway.handle, **kwargs)
        self.audit = audit

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


def admin_app(
    gateway: Gateway, metrics: Metrics, materials: Callable[[], list[Material]]
) -> web.Application:
    """``/healthz``, ``/readyz`` and ``/metrics``; never exposed publicly."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = gateway.readiness()
        for material in materials():
            checks[f"tls:{material.name}"] = material.usable()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics_text(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def server_header(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "iap"

    app = web.Application()
    app.on_response_prepare.append(server_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app


def bind(address: Address, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; ``OSError`` when the address cannot be had."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return socket.create_server(
        (address.host, address.port), family=family, backlog=1024, reuse_port=reuse_port
    )


class Edge:
    """One process's listeners. Build (may raise ConfigError), then start, then stop."""

    def __init__(self, config: Config, *, audit: AuditLog | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.audit = audit or AuditLog()
        tls = config.listen.tls
        try:
            self._tls = listener_material(tls.cert_file, tls.key_file) if tls else None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"listen.tls: cannot load certificate or key ({exc})"]) from None
        self.tracing = Tracing(config.telemetry, dropped=self.metrics.spans_dropped.inc)
        self.gateway = Gateway(config, metrics=self.metrics, audit=self.audit, tracing=self.tracing)
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
        limits = self.config.limits
        server = _PublicServer(
            self.gateway,
            self.audit,
            max_headers=limits.max_headers * 2,
            max_field_size=limits.max_header_bytes,
            max_line_size=limits.max_url_bytes + 64,
            access_log=None,
        )
        public = web.ServerRunner(
            server, shutdown_timeout=self.config.drain_timeout, handle_signals=False
        )
        admin = web.AppRunner(
            admin_app(self.gateway, self.metrics, self.tls_materials),
            access_log=None,
            shutdown_timeout=1.0,
        )
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

    def tls_materials(self) -> list[Material]:
        listener = [self._tls] if self._tls else []
        return listener + self.gateway.tls_materials

    async def _watch_tls(self) -> None:
        """Re-read TLS files when they change; publish seconds to expiry."""
        while True:
            for material in self.tls_materials():
                if material.refresh() is False:
                    self.metrics.tls_reload_failures.labels(material.name).inc()
                self.metrics.certificate_expiry.labels(material.name).set(expiry_in(material))
            await asyncio.sleep(self.config.tls_watch_interval)

    async def stop(self) -> None:
        """Drain in-flight requests (bounded by ``drain_timeout``), then close everything."""
        self.gateway.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
        for runner in self._runners:
            await runner.cleanup()
        await self.gateway.close()
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
