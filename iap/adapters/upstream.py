"""The streaming forwarder (SPEC §2 step 10).

Invariants:
- Bodies stream both ways in chunks; only bodies known to be small are read whole.
  A request body is counted as it streams and cut off at the route's limit.
- Only the status line and the headers iap allows reach the client; framing
  (Content-Length, Transfer-Encoding) is iap's own, and responses are passed through
  byte for byte (no decompression, no re-encoding).
- Every failure to obtain an answer becomes a :class:`~iap.errors.UpstreamError`;
  failures after the response started abort the client connection, since a status
  already sent cannot be taken back.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from iap.adapters.http1 import (
    Answer,
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    UpstreamClosed,
)
from iap.adapters.pool import Pool
from iap.adapters.tls import Material, upstream_material
from iap.config import Route, UpstreamTLS
from iap.domain.circuit import CircuitBreaker
from iap.domain.headers import WEBSOCKET_HANDSHAKE, HeaderFilter, fold
from iap.errors import (
    BadGateway,
    CircuitOpen,
    GatewayTimeout,
    PayloadTooLarge,
    RequestError,
)

SERVER = "iap"
# Bodies of known length up to this size are read whole: one write instead of a stream.
SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_REPLACED = frozenset({"server", "x-correlation-id"})
# Each WebSocket hop negotiates key, version, extensions and subprotocol itself (RFC 6455 §4).
_HOP_HANDSHAKE = WEBSOCKET_HANDSHAKE | {"sec-websocket-protocol"}


@dataclass(slots=True)
class Transfer:
    """Byte counts and timing of one forwarded exchange."""

    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float | None = None
    body_too_large: bool = False
    client_gone: bool = False
    aborted: str | None = None


@dataclass
class Upstream:
    """One upstream origin with its TLS settings: a keep-alive pool and a circuit breaker."""

    origin: str
    host: str
    port: int
    tls: Material | None
    server_name: str | None
    circuit: CircuitBreaker
    limit: int = 1000
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    _pool: Pool | None = field(default=None, init=False)

    @property
    def pool(self) -> Pool:
        """Plain HTTP exchanges (created on first use, inside the event loop)."""
        if self._pool is None:
            self._pool = Pool(
                self.host,
                self.port,
                tls=lambda: self.tls.context if self.tls is not None else None,
                server_name=self.server_name,
                limit=self.limit,
            )
        return self._pool

    @property
    def session(self) -> aiohttp.ClientSession:
        """WebSocket upgrades (aiohttp)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    @property
    def ssl(self) -> ssl.SSLContext | bool:
        """The current context: swapped on rotation, so new connections use new material."""
        return self.tls.context if self.tls is not None else False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._session is not None:
            await self._session.close()


class Upstreams:
    """Pools shared by routes that point at the same origin with the same TLS settings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._pools: dict[tuple[str, str], Upstream] = {}
        self._clock = clock

    def for_route(self, route: Route) -> Upstream:
        key = (route.upstream, repr(route.upstream_tls))
        if key not in self._pools:
            https = route.upstream.startswith("https:")
            url = urlsplit(route.upstream)
            self._pools[key] = Upstream(
                origin=route.upstream,
                host=url.hostname or "",
                port=url.port or (443 if https else 80),
                tls=_material(route) if https else None,
                server_name=route.upstream_tls.server_name if route.upstream_tls else None,
                circuit=CircuitBreaker(route.circuit.failures, route.circuit.cooldown, self._clock),
            )
        return self._pools[key]

    def materials(self) -> list[Material]:
        return [pool.tls for pool in self._pools.values() if pool.tls is not None]

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))


def _material(route: Route) -> Material:
    tls = route.upstream_tls or UpstreamTLS()
    return upstream_material(
        f"upstream:{route.name}",
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        verify_san=tls.verify_san,
    )


async def forward(
    request: web.BaseRequest,
    upstream: Upstream,
    *,
    target: str,
    headers: Sequence[tuple[str, str]],
    reply_headers: Sequence[tuple[str, str]],
    max_body: int,
    timeouts: aiohttp.ClientTimeout,
    transfer: Transfer,
) -> web.StreamResponse:
    """Send ``request`` to ``upstream`` at ``target`` and stream the answer back."""
    if not upstream.circuit.allow():
        raise CircuitOpen(f"circuit open for {upstream.origin}")
    body = await _request_body(request, max_body, transfer)
    started = time.perf_counter()
    try:
        answer = await upstream.pool.request(
            request.method,
            target,
            headers,
            body,
            connect_timeout=timeouts.sock_connect or 0.0,
            read_timeout=timeouts.sock_read or 0.0,
        )
    except asyncio.CancelledError:
        upstream.circuit.abandoned()
        raise
    except Exception as exc:
        raise _translate(exc, upstream, transfer) from exc
    transfer.upstream_seconds = time.perf_counter() - started
    upstream.circuit.succeeded()
    try:
        return await _relay(request, answer, reply_headers, transfer)
    except (ConnectionError, TimeoutError) as exc:  # the body of a small answer broke off
        raise _translate(exc, upstream, transfer) from exc
    finally:
        answer.release()


async def _request_body(
    request: web.BaseRequest, limit: int, transfer: Transfer
) -> bytes | AsyncIterator[bytes] | None:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"content-length {length} over limit {limit}")
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if not request.body_exists:
        return None
    if length is not None and length <= SMALL_BODY:
        data = await request.read()
        transfer.bytes_in = len(data)
        return data
    return _stream_body(request, limit, transfer)


async def _stream_body(
    request: web.BaseRequest, limit: int, transfer: Transfer
) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        transfer.bytes_in += len(chunk)
        if transfer.bytes_in > limit:
            transfer.body_too_large = True
            raise PayloadTooLarge(f"streamed body over limit {limit}")
        yield chunk


async def _relay(
    request: web.BaseRequest,
    answer: Answer,
    reply_headers: Sequence[tuple[str, str]],
    transfer: Transfer,
) -> web.StreamResponse:
    # Server is overwritten as Envoy does by default: no upstream banner leaks.
    headers = HeaderFilter.response(answer.headers, _REPLACED)
    headers.append(("Server", SERVER))
    headers.extend(reply_headers)
    length = answer.content_length
    if request.method == "HEAD" or answer.status in _NO_BODY_STATUS:
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if length is not None and answer.status not in _NO_BODY_STATUS:
            response.content_length = length
        await response.prepare(request)
        return response
    if length is not None and length <= SMALL_BODY:
        body = await answer.read()
        transfer.bytes_out = len(body)
        return web.Response(status=answer.status, reason=answer.reason, headers=headers, body=body)
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    await _pump(request, answer, response, transfer)
    return response


async def _pump(
    request: web.BaseRequest,
    answer: Answer,
    response: web.StreamResponse,
    transfer: Transfer,
) -> None:
    """Copy the body; on a failure mid-way, abort the client connection (status is sent)."""
    try:
        async for chunk in answer.chunks():
            try:
                await response.write(chunk)
            except ConnectionError:
                transfer.client_gone = True
                return
            transfer.bytes_out += len(chunk)
        await response.write_eof()
    except (ConnectionError, TimeoutError) as exc:
        transfer.aborted = type(exc).__name__
        if request.transport is not None:
            request.transport.abort()


def _translate(exc: Exception, upstream: Upstream, transfer: Transfer) -> RequestError:
    """Foreign exceptions to our tree; the detail names the cause, the public text does not."""
    if transfer.body_too_large:
        return PayloadTooLarge(f"streamed body over limit after {transfer.bytes_in} bytes")
    name = type(exc).__name__
    unreachable = isinstance(
        exc,
        ConnectFailed
        | ConnectTimeout
        | aiohttp.ClientConnectorError
        | aiohttp.ConnectionTimeoutError,
    )
    if unreachable:
        upstream.circuit.failed()
    else:  # the connection worked; a slow or broken answer says nothing about reachability
        upstream.circuit.succeeded()
    cause = exc.__cause__ if isinstance(exc, ConnectFailed) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return BadGateway(f"upstream certificate refused: {cause}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return BadGateway(f"upstream certificate refused: {exc.certificate_error}")
    if isinstance(cause, ssl.SSLError | aiohttp.ClientSSLError):
        return BadGateway(f"upstream TLS failure ({type(cause).__name__}): {cause}")
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"upstream timeout ({name})")
    if isinstance(exc, ConnectFailed | UpstreamClosed | BadResponse):
        return BadGateway(f"upstream failure ({name}): {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        # Not str(exc): it can carry the request URL (query strings hold codes) or upstream bytes.
        return BadGateway(f"upstream failure ({name})")
    raise exc


async def forward_websocket(
    request: web.BaseRequest,
    upstream: Upstream,
    *,
    target: str,
    headers: Sequence[tuple[str, str]],
    reply_headers: Sequence[tuple[str, str]],
    max_body: int,
    timeouts: aiohttp.ClientTimeout,
    transfer: Transfer,
) -> web.StreamResponse:
    """Proxy a WebSocket: handshake upstream first, then upgrade the client and relay frames.

    ``max_body`` bounds each message (close code 1009 beyond it).
    """
    if not upstream.circuit.allow():
        raise CircuitOpen(f"circuit open for {upstream.origin}")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    url = "ws" + upstream.origin.removeprefix("http") + target
    started = time.perf_counter()
    try:
        upstream_ws = await upstream.session.ws_connect(
            url,
            headers=CIMultiDict(
                (name, value) for name, value in headers if fold(name) not in _HOP_HANDSHAKE
            ),
            protocols=[p for p in offered if p],
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeouts.sock_read),
            ssl=upstream.ssl,
            server_hostname=upstream.server_name,
            autoping=False,
            max_msg_size=max_body,
        )
    except aiohttp.WSServerHandshakeError as exc:
        upstream.circuit.succeeded()
        raise BadGateway(f"upstream refused the WebSocket handshake ({exc.status})") from exc
    except Exception as exc:
        raise _translate(exc, upstream, transfer) from exc
    transfer.upstream_seconds = time.perf_counter() - started
    upstream.circuit.succeeded()
    async with upstream_ws:
        client_ws = web.WebSocketResponse(
            protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
            autoping=False,
            max_msg_size=max_body,
        )
        client_ws.headers["Server"] = SERVER
        client_ws.headers.extend(reply_headers)
        await client_ws.prepare(request)
        await _relay_frames(client_ws, upstream_ws, transfer)
    return client_ws


async def _relay_frames(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, transfer: Transfer
) -> None:
    """Relay frames both ways until either side closes, then close the other with its code."""

    async def pump(
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        inbound: bool,
    ) -> None:
        async for message in source:
            size = len(message.data) if isinstance(message.data, str | bytes) else 0
            if inbound:
                transfer.bytes_in += size
            else:
                transfer.bytes_out += size
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
        code = source.close_code or aiohttp.WSCloseCode.OK
        await sink.close(code=code)

    tasks = [
        asyncio.ensure_future(pump(client, upstream, inbound=True)),
        asyncio.ensure_future(pump(upstream, client, inbound=False)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
