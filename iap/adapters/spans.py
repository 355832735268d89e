"""The tracing face of one request (SPEC §2 step 3, §8): what the gateway calls on the
request path, and the span records it hands to :class:`~iap.adapters.telemetry.Tracing`.

Invariants:
- A request that is not traced pays one shared object (:data:`UNTRACED`) and no allocation;
  ``recording`` tells callers whether building attributes is worth it.
- A span records plain values only (ints, strings, flat dicts): no header values, query
  strings, tokens, cookies or emails.
- ``Tracing.current`` (:func:`current_span`) is the span of the request a task serves (each
  request runs in its own task), so calls made on its behalf, such as the IdP's, find their
  parent. It belongs to its ``Tracing``; no module holds request state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from iap.adapters.telemetry import Tracing

EMPTY_CONTEXT = Context()
SERVER, CLIENT = SpanKind.SERVER.value, SpanKind.CLIENT.value


class RequestSpan:
    """The tracing face of one request. This base records nothing (tracing off, untrusted)."""

    __slots__ = ()
    recording = False  # callers skip building attributes nobody records

    @property
    def ids(self) -> tuple[str | None, str | None]:
        """Trace and span id in hex for the audit line; None when not recorded."""
        return None, None

    def rename(self, name: str) -> None:
        """Name the SERVER span once the route is known (``{method} {route}``)."""

    def set(self, key: str, value: str | int | bool) -> None:
        """Set one attribute on the SERVER span."""

    def decision(self, event: str, attributes: Mapping[str, str]) -> None:
        """Record an authentication/authorization/rate-limit/mint decision as a span event."""

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        """Open the CLIENT span; return the trace headers for the upstream request."""
        return {}

    def end_upstream(self, status: int | None, error: str | None = None) -> None:
        """Close the CLIENT span with the upstream's status or the failure's reason."""

    def end(self, status: int, reason: str | None) -> None:
        """Close the SERVER span."""

    def client_call(
        self, name: str, attributes: Mapping[str, Any], start: int, end: int, failed: bool
    ) -> None:
        """Record a finished CLIENT call made for this request (an IdP call), as a child of
        the SERVER span; ``start`` and ``end`` are ``time.time_ns()`` values."""


UNTRACED = RequestSpan()


def current_span() -> ContextVar[RequestSpan]:
    """A holder of the span of the request being served, one per :class:`Tracing` (one per
    process): set by the gateway, read by the IdP calls made for that request."""
    return ContextVar("iap_request_span", default=UNTRACED)


class PassThrough(RequestSpan):
    """Tracing off, trusted peer: hand the incoming context to the upstream unchanged."""

    __slots__ = ("_incoming", "_propagator")

    def __init__(self, propagator: TextMapPropagator, incoming: Context) -> None:
        self._propagator = propagator
        self._incoming = incoming

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        carrier: dict[str, str] = {}
        if self._incoming is not EMPTY_CONTEXT:
            self._propagator.inject(carrier, context=self._incoming)
        return carrier


class Unsampled(RequestSpan):
    """Not sampled: ids for the audit line and for the upstream, nothing recorded."""

    __slots__ = ("_incoming", "_span_id", "_trace_id", "_tracing")

    def __init__(self, tracing: Tracing, trace_id: int, span_id: int, incoming: Context) -> None:
        self._tracing = tracing
        self._trace_id = trace_id
        self._span_id = span_id
        self._incoming = incoming

    @property
    def ids(self) -> tuple[str | None, str | None]:
        return f"{self._trace_id:032x}", f"{self._span_id:016x}"

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        client_id = random.getrandbits(64) or 1
        return self._tracing.inject(self._trace_id, client_id, False, self._incoming)


class Sampled(RequestSpan):
    """A recorded SERVER span and, once the upstream is called, its CLIENT span."""

    __slots__ = (
        "_attributes",
        "_client",
        "_events",
        "_incoming",
        "_links",
        "_name",
        "_parent_id",
        "_span_id",
        "_start",
        "_trace_id",
        "_tracing",
    )
    recording = True

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        trace_id: int,
        span_id: int,
        parent_id: int,
        incoming: Context,
        links: tuple[tuple[int, int, dict[str, str]], ...],
        attributes: Mapping[str, Any],
    ) -> None:
        self._tracing = tracing
        self._name = name
        self._trace_id, self._span_id, self._parent_id = trace_id, span_id, parent_id
        self._incoming = incoming
        self._links = links
        self._attributes = dict(attributes)
        self._events: list[tuple[str, int, dict[str, str]]] = []
        self._client: list[Any] | None = None
        self._start = time.time_ns()

    @property
    def ids(self) -> tuple[str | None, str | None]:
        return f"{self._trace_id:032x}", f"{self._span_id:016x}"

    def rename(self, name: str) -> None:
        self._name = name

    def set(self, key: str, value: str | int | bool) -> None:
        self._attributes[key] = value

    def decision(self, event: str, attributes: Mapping[str, str]) -> None:
        self._attributes.update(attributes)
        self._events.append((event, time.time_ns(), dict(attributes)))

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        client_id = random.getrandbits(64) or 1
        self._client = [method, client_id, time.time_ns(), dict(attributes()), False]
        return self._tracing.inject(self._trace_id, client_id, True, self._incoming)

    def end_upstream(self, status: int | None, error: str | None = None) -> None:
        if self._client is None:
            return
        name, client_id, start, attributes, _ = self._client
        self._client = None
        if status is not None:
            attributes["http.response.status_code"] = status
        failed = error is not None or (status is not None and status >= 500)
        if failed:
            attributes["error.type"] = error or str(status)
        self._tracing.record(
            (name, CLIENT, self._trace_id, client_id, self._span_id, False, start,
             time.time_ns(), attributes, (), (), failed)
        )  # fmt: skip

    def client_call(
        self, name: str, attributes: Mapping[str, Any], start: int, end: int, failed: bool
    ) -> None:
        span_id = random.getrandbits(64) or 1
        self._tracing.record(
            (name, CLIENT, self._trace_id, span_id, self._span_id, False, start, end,
             dict(attributes), (), (), failed)
        )  # fmt: skip

    def end(self, status: int, reason: str | None) -> None:
        self.end_upstream(None)
        attributes = self._attributes
        attributes["http.response.status_code"] = status
        if reason:
            attributes["iap.reason"] = reason
        if status >= 500:
            attributes["error.type"] = reason or str(status)
        self._tracing.record(
            (self._name, SERVER, self._trace_id, self._span_id, self._parent_id,
             bool(self._parent_id), self._start, time.time_ns(), attributes,
             tuple(self._events), self._links, status >= 500)
        )  # fmt: skip
