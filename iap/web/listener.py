"""The public listener's connections: aiohttp's server with iap's answers for requests that
never reach the gateway (unparseable, or too slow to arrive).

Invariants:
- Malformed HTTP that never reaches the gateway still gets iap's generic error page,
  an audit line and no library banner.
- A request head (request line and headers) must arrive within ``limits.header_timeout``
  of its first byte, and the first one within that time of the connection opening: a
  client that sends it slower (slowloris) gets 408, an audit line with the reason
  ``header_timeout``, and its connection closed. Request bodies are not bounded by it.
- An idle keep-alive connection is closed after ``limits.keepalive_timeout`` (aiohttp's own
  timer, fed from the config).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.model import Exchange
from iap.web.errorpage import SERVER, error_response

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nServer: " + SERVER.encode() + b"\r\n"
    b"Connection: close\r\nContent-Length: 0\r\n\r\n"
)


_METHOD_PREFIX = 8  # "OPTIONS " is the longest method the metrics name


@dataclass(slots=True)
class _Head:
    """What a refusal reports of a request head: its first bytes, its size, its start."""

    start: bytes = b""
    size: int = 0
    began: float = 0.0

    def feed(self, data: bytes) -> None:
        if len(self.start) < _METHOD_PREFIX:
            self.start += data[: _METHOD_PREFIX - len(self.start)]
            self.began = self.began or time.perf_counter()
        self.size += len(data)

    @property
    def method(self) -> str:
        """The method, when the request line got that far ("" otherwise); metrics fold
        any but the usual ones into ``OTHER``, and the audit line is JSON-escaped."""
        name, space, _ = self.start.partition(b" ")
        return name.decode("ascii") if space and name.isalpha() and name.isupper() else ""


class _Protocol(RequestHandler):
    """aiohttp's connection handler, with iap's error page for unparseable requests and a
    deadline for each request head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head = _Head()  # the head being read (its start, size and first byte's time)
        self._last_head = _Head()  # the last one parsed, refused or not: for handle_error
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        if self._reading_head():
            self._head.feed(data)
        super().data_received(data)
        if self._request_count != before:  # a whole head arrived (or was refused)
            self._last_head, self._head = self._head, _Head()
            self._disarm()
        elif data and self._head_timer is None and self._reading_head():
            self._arm()  # the first bytes of the next head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _reading_head(self) -> bool:
        return not (self._request_in_progress or self._upgraded or self._messages)

    def _arm(self) -> None:
        server: PublicServer = self._manager  # type: ignore[assignment]
        self._head_timer = self._loop.call_later(server.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        server: PublicServer | None = self._manager  # type: ignore[assignment]
        transport = self.transport
        if server is None or transport is None or not self._reading_head():
            return
        peer = transport.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else ""
        server.record_refusal(client_ip, self._head, 408, "header_timeout", 0)
        server.metrics.header_timeouts.inc()
        transport.write(_TIMED_OUT)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        server: PublicServer = self._manager  # type: ignore[assignment]
        status, code, public = _parser_error(exc, status, server.line_limit)
        correlation_id = str(uuid.uuid4())
        response = error_response(status, code, public, correlation_id, None)
        response.force_close()
        sent = len(response.body) if isinstance(response.body, bytes) else 0
        server.record_refusal(
            request.remote or "",
            self._last_head,
            status,
            "malformed_request",
            sent,
            correlation_id=correlation_id,
        )
        return response


def _parser_error(exc: BaseException | None, status: int, line_limit: int) -> tuple[int, str, str]:
    """What to answer for a request aiohttp's parser refused."""
    # LineTooLong carries the limit it hit: the request line's differs from a header's.
    if isinstance(exc, LineTooLong) and exc.args[1:2] == (line_limit,):
        return 414, "uri_too_long", "Request URI too long."
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "headers" in str(exc.message)
    ):
        return 431, "headers_too_large", "Request header fields too large."
    if status < 500:
        return status, "bad_request", "Bad request."
    return 500, "internal_error", "Internal error."


class PublicServer(web.Server):
    """aiohttp's server for the public listener; ``header_timeout`` bounds each request
    head, ``keepalive_timeout`` (aiohttp's) each idle keep-alive connection."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        audit: AuditLog,
        metrics: Metrics,
        *,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.audit, self.metrics = audit, metrics
        self.header_timeout = header_timeout
        self.line_limit = int(kwargs.get("max_line_size", 8190))

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def record_refusal(
        self,
        client_ip: str,
        head: _Head,
        status: int,
        reason: str,
        bytes_out: int,
        *,
        correlation_id: str | None = None,
    ) -> None:
        """The audit line and the request metrics (route ``_none``, as every request that
        matched no route) of a request refused before the gateway saw it."""
        now = time.perf_counter()
        exchange = Exchange(
            started=head.began or now,
            correlation_id=correlation_id or str(uuid.uuid4()),
            client_ip=client_ip,
            method=head.method,
            host="",
            path="",
            status=status,
            reason=reason,
            bytes_in=head.size,
            bytes_out=bytes_out,
        )
        self.metrics.observe_request("_none", head.method, status, now - exchange.started)
        self.audit.record(exchange, now=now)
