"""The upstream client (SPEC §2 step 10): one interface for plain HTTP and for WebSockets.

Values in, values out. A request is a method, a target, header pairs, a body (bytes, an
async iterator of chunks, or ``None``) and :class:`Timeouts`; the result is an
:class:`~iap.adapters.http1.Answer` or an :class:`UpstreamSocket`, a failure an
:class:`UpstreamFailure`. Nothing here builds an answer to the client or knows iap's
statuses: the web layer (``iap.web.relay``) turns these values into responses. Plain HTTP
goes over iap's own pool (``iap.adapters.pool``), WebSocket upgrades over aiohttp's client.

Invariants:
- :meth:`Upstream.admit` comes first: while the circuit is open it refuses before the
  request body is read or the network touched.
- Every failure to obtain an answer becomes an :class:`UpstreamFailure` (``raise ... from``
  the cause); its ``detail`` names the cause for the log, never the request URL (query
  strings hold codes) nor the upstream's bytes. What no upstream failure explains (a bug)
  is re-raised as it is.
- Only a failure to connect counts against the circuit; a slow or broken answer says
  nothing about reachability and counts as a success.
- Answers pass through byte for byte (no decompression, no re-encoding); an answer of
  known length up to :data:`SMALL_BODY` is read whole here and its connection released.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from iap.adapters.http1 import Answer, BadResponse, ConnectFailed, ConnectTimeout, UpstreamClosed
from iap.adapters.pool import Pool, PoolFull
from iap.adapters.tls import Material, upstream_material
from iap.config import Route, UpstreamTLS
from iap.domain.circuit import CircuitBreaker
from iap.domain.headers import WEBSOCKET_HANDSHAKE, fold
from iap.errors import IapError

# Bodies of known length up to this size are read whole: one write instead of a stream.
SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
# Each WebSocket hop negotiates key, version, extensions and subprotocol itself (RFC 6455 §4).
_HOP_HANDSHAKE = WEBSOCKET_HANDSHAKE | {"sec-websocket-protocol"}
_UNREACHABLE = (
    ConnectFailed | ConnectTimeout | aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
)

FailureKind = Literal[
    "circuit_open",  # not attempted: the circuit is open
    "unreachable",  # no connection (refused, reset while connecting, DNS)
    "certificate",  # the upstream's certificate was refused
    "tls",  # any other TLS failure
    "timeout",  # connect, read or total timeout
    "pool_full",  # not attempted: every pooled connection stayed busy past timeouts.connect
    "broken",  # the connection worked, the answer did not (closed early, malformed)
    "handshake",  # the upstream answered a WebSocket upgrade without upgrading
    "body_too_large",  # the request body went over the route's limit as it streamed
]


class UpstreamFailure(IapError):
    """No answer from the upstream: ``kind`` says which failure, ``detail`` is for the log."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the forwarder waits, in seconds; ``None`` is no bound.

    ``connect`` bounds opening a plain HTTP connection (TCP and TLS) and the wait for a
    free one when the pool is full, and a WebSocket's whole opening handshake (TCP, TLS and
    the upstream's 101); ``read`` bounds the upstream's silence while it answers, and a
    WebSocket's closing handshake; ``total`` bounds the whole wait for an answer's head or
    a WebSocket handshake (the web layer bounds the rest of the exchange with it).
    """

    connect: float | None = None
    read: float | None = None
    total: float | None = None


@dataclass(slots=True)
class Transfer:
    """Byte counts and timing of one forwarded exchange, filled in as it goes."""

    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float | None = None
    body_too_large: bool = False
    client_gone: bool = False
    aborted: str | None = None


class MessagePort(Protocol):
    """One end of a WebSocket relay; aiohttp's client and server sockets are both ports."""

    @property
    def close_code(self) -> int | None: ...
    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]: ...
    async def send_str(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def ping(self, message: bytes = b"") -> None: ...
    async def pong(self, message: bytes = b"") -> None: ...
    async def close(self, *, code: int = ..., message: bytes = b"") -> bool: ...


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
    max_idle: int = 100
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
                max_idle=self.max_idle,
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

    def admit(self) -> None:
        """Refuse (``circuit_open``) while the circuit is open; call before reading a body."""
        if not self.circuit.allow():
            raise UpstreamFailure("circuit_open", f"circuit open for {self.origin}")

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        timeouts: Timeouts,
        transfer: Transfer,
    ) -> Answer:
        """The upstream's answer to one request, once :meth:`admit` let it through.

        A small answer comes with its ``body`` and its connection released; otherwise
        stream :meth:`Answer.chunks` (which raise ``ConnectionError`` or ``TimeoutError`` if
        the upstream breaks off) and call :meth:`Answer.release`.
        """
        started = time.perf_counter()
        call = self.pool.request(
            method,
            target,
            headers,
            body,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        )
        try:
            answer = await (
                call if timeouts.total is None else asyncio.wait_for(call, timeouts.total)
            )
        except asyncio.CancelledError:
            self.circuit.abandoned()
            raise
        except Exception as exc:
            raise self.failure(exc, transfer) from exc
        transfer.upstream_seconds = time.perf_counter() - started
        self.circuit.succeeded()
        length = answer.content_length
        if length is None or length > SMALL_BODY or method == "HEAD":
            return answer
        if answer.status in _NO_BODY_STATUS:
            return answer
        try:
            answer.body = await answer.read()
        except (ConnectionError, TimeoutError) as exc:  # the body of a small answer broke off
            raise self.failure(exc, transfer) from exc
        finally:
            answer.release()
        transfer.bytes_out = len(answer.body)
        return answer

    async def websocket(
        self,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        protocols: Sequence[str],
        max_message: int,
        timeouts: Timeouts,
        transfer: Transfer,
    ) -> UpstreamSocket:
        """The upstream's end of a WebSocket, once :meth:`admit` let it through; messages
        over ``max_message`` bytes close it with code 1009."""
        url = "ws" + self.origin.removeprefix("http") + target
        started = time.perf_counter()
        call = self.session.ws_connect(
            url,
            headers=CIMultiDict((n, v) for n, v in headers if fold(n) not in _HOP_HANDSHAKE),
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeouts.read),
            ssl=self.ssl,
            server_hostname=self.server_name,
            autoping=False,
            max_msg_size=max_message,
        )
        bounds = [t for t in (timeouts.connect, timeouts.total) if t is not None]
        try:
            socket = await (asyncio.wait_for(call, min(bounds)) if bounds else call)
        except aiohttp.WSServerHandshakeError as exc:
            self.circuit.succeeded()
            detail = f"upstream refused the WebSocket handshake ({exc.status})"
            raise UpstreamFailure("handshake", detail) from exc
        except Exception as exc:
            raise self.failure(exc, transfer) from exc
        transfer.upstream_seconds = time.perf_counter() - started
        self.circuit.succeeded()
        return UpstreamSocket(socket)

    def failure(self, exc: Exception, transfer: Transfer) -> UpstreamFailure:
        """``exc``, raised while obtaining or relaying an answer, as an :class:`UpstreamFailure`;
        the circuit learns whether the upstream was reachable. Re-raises ``exc`` when no
        upstream failure explains it."""
        if transfer.body_too_large:  # the client's failure: no verdict on the upstream
            self.circuit.abandoned()
            detail = f"streamed body over limit after {transfer.bytes_in} bytes"
            return UpstreamFailure("body_too_large", detail)
        if isinstance(exc, PoolFull):  # nothing was sent: no verdict on the upstream
            self.circuit.abandoned()
            return UpstreamFailure("pool_full", str(exc))
        if isinstance(exc, _UNREACHABLE):
            self.circuit.failed()
        else:  # the connection worked; a slow or broken answer says nothing about reachability
            self.circuit.succeeded()
        return failure_of(exc)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._session is not None:
            await self._session.close()


def failure_of(exc: Exception) -> UpstreamFailure:
    """The failure a foreign exception stands for; the detail names the cause, never the
    request URL or upstream bytes. Re-raises ``exc`` when it is no upstream failure."""
    name = type(exc).__name__
    cause = exc.__cause__ if isinstance(exc, ConnectFailed) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return UpstreamFailure("certificate", f"upstream certificate refused: {cause}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamFailure(
            "certificate", f"upstream certificate refused: {exc.certificate_error}"
        )
    if isinstance(cause, ssl.SSLError | aiohttp.ClientSSLError):
        return UpstreamFailure("tls", f"upstream TLS failure ({type(cause).__name__}): {cause}")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"upstream timeout ({name})")
    if isinstance(exc, ConnectFailed):
        return UpstreamFailure("unreachable", f"upstream failure ({name}): {exc}")
    if isinstance(exc, UpstreamClosed | BadResponse):
        return UpstreamFailure("broken", f"upstream failure ({name}): {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure("unreachable", f"upstream failure ({name})")
    if isinstance(exc, aiohttp.ClientError | OSError):
        # Not str(exc): it can carry the request URL (query strings hold codes) or upstream bytes.
        return UpstreamFailure("broken", f"upstream failure ({name})")
    raise exc


class UpstreamSocket:
    """An open WebSocket to the upstream: relay it with the client's, then close it."""

    __slots__ = ("_socket",)

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket

    @property
    def protocol(self) -> str | None:
        """The subprotocol the upstream chose, if any."""
        return self._socket.protocol

    async def __aenter__(self) -> UpstreamSocket:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._socket.close()

    async def relay(self, client: MessagePort, transfer: Transfer) -> None:
        """Relay frames both ways until either side closes, then close the other with its
        code; ``transfer`` counts the payload bytes each way."""
        tasks = [
            asyncio.ensure_future(_pump(client, self._socket, transfer, inbound=True)),
            asyncio.ensure_future(_pump(self._socket, client, transfer, inbound=False)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(source: MessagePort, sink: MessagePort, transfer: Transfer, inbound: bool) -> None:
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
                limit=route.pool.max_connections,
                max_idle=route.pool.max_idle,
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
