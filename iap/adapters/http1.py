"""The upstream hop's HTTP/1.1 connection: one exchange at a time, parsed by llhttp (httptools).

Why not aiohttp's ClientSession: on this hop it cost about 65 µs of CPU per proxied request,
more than the rest of iap together (docs/PERFORMANCE.md); a reverse proxy needs far less
than a general client (no cookies, redirects, decompression, proxies or auth). Parsing,
the part that must be exactly right, stays with llhttp, the parser of Node.js and aiohttp.
The keep-alive pool of these connections is ``iap.adapters.pool``; aiohttp still carries
WebSocket upgrades (``iap.adapters.upstream``).

Invariants:
- One exchange at a time per connection. A connection goes back to the pool only when
  its request was sent whole, its response was read to the end and both sides keep the
  connection alive; anything else closes it.
- Bodies flow with backpressure both ways: an upload waits while the socket's buffer is
  full, and reading pauses while more than ``HIGH_WATER`` bytes wait for the consumer.
- The read timeout bounds silence from the upstream (time since the last byte), with
  one timer per exchange that re-arms itself, not one per packet; ``None`` is no bound.
- The answer to a HEAD request never returns its connection to the pool: the parser
  cannot be told that such a response has no body despite its Content-Length.
- Every failure is one of the exceptions below, all ``ConnectionError`` or ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from iap.adapters.pool import Pool

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamClosed(ConnectionError):
    """The connection ended before the response was complete."""


class ConnectFailed(ConnectionError):
    """No connection could be opened; ``__cause__`` says why (refused, TLS, DNS...)."""


class ConnectTimeout(TimeoutError):
    """Opening the connection took longer than the connect timeout."""


class ReadTimeout(TimeoutError):
    """The upstream was silent for longer than the read timeout."""


class BadResponse(ConnectionError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class Answer:
    """The head of an upstream response, with its body still to be read.

    ``body`` is the whole body when the reader above took it in one piece (then the
    connection is released already); ``None`` while it is to be read or streamed.
    """

    __slots__ = ("_connection", "body", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        connection: Connection,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
    ) -> None:
        self._connection = connection
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.body: bytes | None = None

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small)."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; chunked transfer coding already removed."""
        while chunk := await self._connection.next_chunk():
            yield chunk

    def release(self) -> None:
        """Done with this answer: pool the connection if it is clean, else close it."""
        self._connection.finish()


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream; the pool hands it to one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # against the pool's limit, until closed
        self.busy = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.received_any = False
        self._head: asyncio.Future[Answer] = self._loop.create_future()
        self._headers: list[tuple[str, str]] = []
        self._reason = b""
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._close_delimited = False
        self._stray = False
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = 0.0
        self._last_data = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes on an idle connection (a 408, garbage): never trust it again
            self.abort()
            return
        self._last_data = self._loop.time()
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close; a response without length ends here (on_message_complete)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._close_delimited and self._head.done() and self._error is None:
            self._complete = True  # RFC 9112 §6.3 item 8: the body ends with the connection
            self._disarm()
            self._wake()
        elif not self._complete:
            self._fail(UpstreamClosed("connection closed before the response was complete"))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    # --- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: never reuse this connection
            self._stray = True
            self._keep_alive = False
        self._headers = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self._stray:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim responses (103 Early Hints...): wait for the final one
            self._reason = b""
            return
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        length, chunked = None, False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length" and value.isdigit():
                length = int(value)
            elif lowered == "transfer-encoding":
                chunked = "chunked" in value.lower()
        # Neither length nor chunked: the body ends when the connection does (RFC 9112 §6.3).
        self._close_delimited = length is None and not chunked and status not in (204, 304)
        self._keep_alive = self._keep_alive and not self._close_delimited
        answer = Answer(self, status, self._reason.decode("latin-1"), self._headers, length)
        if not self._head.done():
            self._head.set_result(answer)

    def on_body(self, body: bytes) -> None:
        if self._stray:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._stray or not self._head.done():  # stray, or an interim response ended
            return
        self._complete = True
        self._disarm()
        self._wake()

    # --- used by the pool and by Answer -----------------------------------------------
    async def exchange(
        self,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        read_timeout: float | None,
        expect_body: bool,
    ) -> Answer:
        """Send one request and wait for the head of its response."""
        assert self.transport is not None
        self.busy = True
        self._keep_alive = expect_body
        if body is None or isinstance(body, bytes):
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            await self._upload(body, chunked=chunked, stall_timeout=read_timeout)
        self._arm(read_timeout)
        return await self._head

    async def _upload(
        self, body: AsyncIterator[bytes], *, chunked: bool, stall_timeout: float | None
    ) -> None:
        assert self.transport is not None
        async for chunk in body:
            if self._error is not None or self.closed:
                break
            if not chunk:  # an empty chunk would end a chunked body early
                continue
            if chunked:
                self.transport.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            else:
                self.transport.write(chunk)
            if self._writing_paused:  # the upstream stopped reading: wait, but not forever
                self._drained = self._loop.create_future()
                try:
                    async with asyncio.timeout(stall_timeout):
                        await self._drained
                except TimeoutError:
                    raise ReadTimeout(f"upstream read nothing for {stall_timeout:g}s") from None
        if chunked and not self.closed:
            self.transport.write(b"0\r\n\r\n")

    async def next_chunk(self) -> bytes:
        """The next piece of body, or ``b""`` at its end."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._waiter = self._loop.create_future()
            await self._waiter
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> None:
        """The exchange is over: back to the pool if clean, else close."""
        self._disarm()
        self.busy = False
        if self._complete and self._keep_alive and not self.closed and self._error is None:
            self._reset()
            self._pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self._pool.forget(self)

    # --- internals --------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a caller may be gone already
        self._wake()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _arm(self, timeout: float | None) -> None:
        if not timeout:  # None or 0: no bound
            return
        self._read_timeout = timeout
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._last_data + timeout, self._check_silence)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_silence(self) -> None:
        if self._complete:
            return
        now = self._loop.time()
        deadline = self._last_data + self._read_timeout
        if self._reading_paused or now < deadline:  # our own backpressure is not silence
            self._timer = self._loop.call_at(max(deadline, now + 0.001), self._check_silence)
            return
        self._fail(ReadTimeout(f"no data from the upstream for {self._read_timeout:g}s"))
