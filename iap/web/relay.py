"""The client's side of forwarding (SPEC §2 step 10): an aiohttp request in, its answer out.

The upstream client (``iap.adapters.upstream``) speaks in values; this module reads the
client's body for it, turns its :class:`~iap.adapters.http1.Answer` into a response, relays
a WebSocket, and turns each :class:`~iap.adapters.upstream.UpstreamFailure` into iap's error
(:func:`refusal`): 502, 503 (circuit open, pool full), 504, or 413 for a body over the
route's limit.

Invariants:
- Bodies stream both ways in chunks; only bodies known to be small are read whole.
  A request body is counted as it streams and cut off at the route's limit.
- Only the status line and the headers iap allows reach the client; framing
  (Content-Length, Transfer-Encoding) is iap's own, ``Server`` is iap's (no upstream
  banner leaks, as Envoy does by default).
- A failure after the response started aborts the client connection: a status already
  sent cannot be taken back.
- ``timeouts.total`` is one deadline for the whole exchange, from the first byte of the
  request body read to the last byte of the answer: 504 while no status was sent, an
  aborted client connection after. An event stream's body (``text/event-stream``) and a
  WebSocket after its upgrade are not bounded by it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from iap.adapters.http1 import Answer
from iap.adapters.upstream import (
    SMALL_BODY,
    Timeouts,
    Transfer,
    Upstream,
    UpstreamFailure,
)
from iap.domain.headers import HeaderFilter
from iap.errors import (
    BadGateway,
    CircuitOpen,
    GatewayTimeout,
    PayloadTooLarge,
    RequestError,
    UpstreamBusy,
)
from iap.web.errorpage import SERVER

_NO_BODY_STATUS = frozenset({204, 304})
_REPLACED = frozenset({"server", "x-correlation-id"})
_REFUSALS: dict[str, type[RequestError]] = {
    "circuit_open": CircuitOpen,
    "pool_full": UpstreamBusy,
    "timeout": GatewayTimeout,
    "body_too_large": PayloadTooLarge,
}
"""Failure kinds that are not 502 Bad Gateway."""


def refusal(failure: UpstreamFailure, retry_after: float = 0.0) -> RequestError:
    """iap's error for an upstream failure; the public text says only which kind it was.
    An open circuit's ``Retry-After`` is ``retry_after``: when it lets a trial through."""
    if failure.kind == "circuit_open":
        return CircuitOpen(failure.detail, retry_after=math.ceil(retry_after))
    return _REFUSALS.get(failure.kind, BadGateway)(failure.detail)


async def forward(
    request: web.BaseRequest,
    upstream: Upstream,
    *,
    target: str,
    headers: Sequence[tuple[str, str]],
    reply_headers: Sequence[tuple[str, str]],
    max_body: int,
    timeouts: Timeouts,
    transfer: Transfer,
) -> web.StreamResponse:
    """Send ``request`` to ``upstream`` at ``target`` and stream the answer back."""
    try:
        upstream.admit()
    except UpstreamFailure as failure:
        raise refusal(failure, upstream.circuit.retry_after()) from failure
    deadline = _deadline(timeouts.total)
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            body = await _request_body(request, max_body, transfer)
            answer = await upstream.request(
                request.method, target, headers, body, timeouts=timeouts, transfer=transfer
            )
    except UpstreamFailure as failure:
        raise refusal(failure) from failure
    except TimeoutError as exc:
        upstream.circuit.abandoned()
        if not scope.expired():  # another timeout, not the deadline: not a 504 of ours
            raise
        raise GatewayTimeout(f"request deadline of {timeouts.total}s passed") from exc
    except BaseException:
        # The client's side failed first (a body over the limit, a dropped upload): no
        # verdict on the upstream, so a half-open circuit lets the next trial through.
        upstream.circuit.abandoned()
        raise
    response_headers = HeaderFilter.response(answer.headers, _REPLACED)
    response_headers.append(("Server", SERVER))
    response_headers.extend(reply_headers)
    if answer.body is not None:
        return web.Response(
            status=answer.status, reason=answer.reason, headers=response_headers, body=answer.body
        )
    if _event_stream(answer):
        deadline = None  # an event stream is long-lived by design
    try:
        return await _stream(request, answer, response_headers, transfer, deadline)
    except (ConnectionError, TimeoutError) as exc:  # the client's side broke before the head
        raise refusal(upstream.failure(exc, transfer)) from exc
    finally:
        answer.release()


def _deadline(total: float | None) -> float | None:
    """The loop time ``timeouts.total`` from now; None without one."""
    return None if total is None else asyncio.get_running_loop().time() + total


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


async def _stream(
    request: web.BaseRequest,
    answer: Answer,
    headers: list[tuple[str, str]],
    transfer: Transfer,
    deadline: float | None,
) -> web.StreamResponse:
    """An answer without a body (HEAD, 204, 304) or one too large to read whole, streamed
    until ``deadline`` (the event loop's clock) at most."""
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    length = answer.content_length
    if request.method == "HEAD" or answer.status in _NO_BODY_STATUS:
        if length is not None and answer.status not in _NO_BODY_STATUS:
            response.content_length = length
        await response.prepare(request)
        return response
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    await _pump(request, answer, response, transfer, deadline)
    return response


async def _pump(
    request: web.BaseRequest,
    answer: Answer,
    response: web.StreamResponse,
    transfer: Transfer,
    deadline: float | None,
) -> None:
    """Copy the body; on a failure mid-way or past ``deadline``, abort the client
    connection (the status is sent)."""
    timer = asyncio.timeout_at(deadline)
    try:
        async with timer:
            async for chunk in answer.chunks():
                try:
                    await response.write(chunk)
                except ConnectionError:
                    transfer.client_gone = True
                    return
                transfer.bytes_out += len(chunk)
            await response.write_eof()
    except (ConnectionError, TimeoutError) as exc:
        transfer.aborted = "deadline" if timer.expired() else type(exc).__name__
        if request.transport is not None:
            request.transport.abort()


async def forward_websocket(
    request: web.BaseRequest,
    upstream: Upstream,
    *,
    target: str,
    headers: Sequence[tuple[str, str]],
    reply_headers: Sequence[tuple[str, str]],
    max_body: int,
    timeouts: Timeouts,
    transfer: Transfer,
) -> web.StreamResponse:
    """Proxy a WebSocket: handshake upstream first, then upgrade the client and relay frames.

    ``max_body`` bounds each message (close code 1009 beyond it).
    """
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    try:
        upstream.admit()
    except UpstreamFailure as failure:
        raise refusal(failure, upstream.circuit.retry_after()) from failure
    try:
        socket = await upstream.websocket(
            target,
            headers,
            protocols=[p for p in offered if p],
            max_message=max_body,
            timeouts=timeouts,
            transfer=transfer,
        )
    except UpstreamFailure as failure:
        raise refusal(failure) from failure
    except BaseException:  # cancelled during the handshake: no verdict on the upstream
        upstream.circuit.abandoned()
        raise
    async with socket:
        client = web.WebSocketResponse(
            protocols=[socket.protocol] if socket.protocol else (),
            autoping=False,
            max_msg_size=max_body,
        )
        client.headers["Server"] = SERVER
        client.headers.extend(reply_headers)
        await client.prepare(request)
        await socket.relay(client, transfer)
    return client


def _event_stream(answer: Answer) -> bool:
    """A ``text/event-stream`` answer (Server-Sent Events)."""
    return any(
        name.lower() == "content-type" and value.lower().startswith("text/event-stream")
        for name, value in answer.headers
    )


def upgrades(request: web.BaseRequest) -> bool:
    """A GET asking for an RFC 6455 upgrade: :func:`forward_websocket` carries it."""
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
