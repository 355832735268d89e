"""The keep-alive pool of the upstream hop's HTTP/1.1 connections (``iap.adapters.http1``).

Invariants:
- At most ``limit`` connections are open to the origin; a request past the limit waits
  for one to be returned or closed, at most ``connect_timeout`` seconds in all, then fails
  with :class:`PoolFull` (no verdict on the upstream: nothing was sent).
- At most ``max_idle`` connections are kept idle; one returned past that is closed.
- An idle connection is reused only while younger than ``keepalive`` seconds; one that
  closed, or spoke while idle, is never handed out again.
- A request that failed on a reused connection before any response byte arrived is sent
  again once on a new connection when that is safe (idempotent method, body not
  streamed): the upstream may have closed the idle connection as we wrote to it.
- The TLS context is asked for at every new connection, so rotated material applies to
  new connections without a restart.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress

from iap.adapters.http1 import Answer, ConnectFailed, Connection, ConnectTimeout, UpstreamClosed

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_CRLF = "\r\n"


class PoolFull(TimeoutError):
    """Every connection of the pool stayed busy for as long as a request may wait."""


class Pool:
    """Keep-alive connections to one upstream origin."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: Callable[[], ssl.SSLContext | None],
        server_name: str | None,
        limit: int = 1000,
        max_idle: int = 100,
        keepalive: float = 30.0,
    ) -> None:
        """``tls`` is asked for the current context at every new connection (rotation)."""
        self.loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        self._tls, self._server_name = tls, server_name
        self._limit, self._max_idle, self._keepalive = limit, max_idle, keepalive
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._authority = host if port in (80, 443) else f"{host}:{port}"

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection, the pool being full."""
        return sum(not waiter.done() for waiter in self._waiters)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Answer:
        """Send a request and return the head of the answer; read or release the body."""
        chunked = (
            body is not None and not isinstance(body, bytes) and not _has(headers, "content-length")
        )
        head = _head(method, target, headers, self._authority, chunked=chunked)
        replayable = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        connection, reused = await self._acquire(connect_timeout)
        try:
            return await connection.exchange(
                head, body, chunked=chunked, read_timeout=read_timeout, expect_body=method != "HEAD"
            )
        except UpstreamClosed:
            connection.abort()
            if not (reused and replayable and not connection.received_any):
                raise
        except BaseException:
            connection.abort()
            raise
        connection = await self._connect(connect_timeout)  # the idle one had gone stale
        try:
            return await connection.exchange(
                head, body, chunked=chunked, read_timeout=read_timeout, expect_body=method != "HEAD"
            )
        except BaseException:
            connection.abort()
            raise

    async def _acquire(self, connect_timeout: float | None) -> tuple[Connection, bool]:
        now = self.loop.time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive:
                return connection, True
            connection.abort()
        if self._open >= self._limit:
            try:
                async with asyncio.timeout(connect_timeout):
                    while self._open >= self._limit:
                        await self._wait_turn()
                        if self._idle:
                            return self._idle.pop(), True
            except TimeoutError as exc:
                raise PoolFull(f"all {self._limit} connections to {self._authority} busy") from exc
        return await self._connect(connect_timeout), False

    async def _wait_turn(self) -> None:
        """Until a connection is returned or closed; a turn given to a request that stopped
        waiting (timed out, cancelled) passes to the next one."""
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()
            else:
                waiter.cancel()
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def _connect(self, connect_timeout: float | None) -> Connection:
        self._open += 1
        tls = self._tls()
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: Connection(self),
                    self._host,
                    self._port,
                    ssl=tls,
                    server_hostname=self._server_name if tls else None,
                )
        except TimeoutError as exc:
            self._open -= 1
            raise ConnectTimeout(f"connect to {self._authority} timed out") from exc
        except OSError as exc:
            self._open -= 1
            raise ConnectFailed(f"cannot connect to {self._authority}: {exc}") from exc
        return connection

    def put(self, connection: Connection) -> None:
        if len(self._idle) >= self._max_idle and not self._waiters:
            connection.abort()  # forget() wakes a waiter, if one came meanwhile
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        """A connection closed: it no longer counts against the limit."""
        if not connection.counted:
            return
        connection.counted = False
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


def _has(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    authority: str,
    *,
    chunked: bool,
) -> bytes:
    """The request line and header section (names and values were validated upstream of
    here: aiohttp's parser refuses CR/LF in them, and iap's own are constants)."""
    lines = [f"{method} {target} HTTP/1.1"]
    if not _has(headers, "host"):
        lines.append(f"Host: {authority}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return (_CRLF.join(lines) + _CRLF + _CRLF).encode("utf-8", "surrogateescape")
