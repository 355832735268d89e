"""Tracing (SPEC §2 step 3, §8): sampling, ids, propagation and span records.

Together with ``iap.adapters.spans`` and ``iap.adapters.span_export`` the only place that
imports OpenTelemetry.
The request path records spans as plain tuples; OTLP encoding and export (the SDK's,
pure Python, ~40 µs per span) run in a separate process fed through a pipe.

Invariants:
- An incoming trace context is continued only from a trusted proxy; from anyone else
  a new trace starts, linked to the context the client sent, so a client cannot graft
  its requests into someone else's trace or force sampling.
- The upstream's ``traceparent`` (and B3 headers) name iap's CLIENT span as parent.
- Client-sent propagation headers never reach the upstream as sent; iap writes its own.
- Spans carry no header values, query strings, tokens, cookies or emails.
- An exporter that is down never slows a request: spans wait in a bounded buffer that a
  feeder thread hands to the exporter process; spans lost to a full buffer, a failed
  export or a dead exporter are counted in ``iap_spans_dropped_total``.
- Sampling follows the SDK's parent-based trace-id ratio: a trusted parent's flag, else
  ``trace_id`` against ``TraceIdRatioBased``'s bound, so the whole trace agrees.
- Decisions (authentication, authorization, rate limit, mint) are span *events* on the
  SERVER span, not child spans: an event costs a list append, a span an id, a context
  and an export record (see docs/observability.md).
"""

from __future__ import annotations

import pickle
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iap.adapters.spans import (
    EMPTY_CONTEXT as _EMPTY_CONTEXT,
)
from iap.adapters.spans import (
    UNTRACED as _UNTRACED,
)
from iap.adapters.spans import (
    PassThrough,
    RequestSpan,
    Sampled,
    Unsampled,
    current_span,
)
from iap.config import Telemetry as TelemetryConfig
from iap.environment import Environment


def _propagator(names: Sequence[str]) -> TextMapPropagator:
    known: dict[str, Callable[[], TextMapPropagator]] = {
        "tracecontext": TraceContextTextMapPropagator,
        "baggage": W3CBaggagePropagator,
        "b3multi": B3MultiFormat,
        "b3": B3SingleFormat,
    }
    return CompositePropagator([known[name]() for name in names])


SpanTuple = tuple[Any, ...]
_SEND_EVERY = 0.5  # seconds between hand-overs to the exporter process
_SEND_AT = 512  # or as soon as this many spans wait


def _endpoint(config: TelemetryConfig, environment: Environment) -> str | None:
    """Where spans go: ``telemetry.otlp_endpoint``, else ``OTEL_EXPORTER_OTLP_*``."""
    traces = environment.otlp_traces_endpoint
    base = config.otlp_endpoint or environment.otlp_endpoint
    if config.otlp_endpoint is None and traces:
        return traces
    if base is None:
        return None
    return base if config.protocol == "grpc" else f"{base.rstrip('/')}/v1/traces"


class Tracing:
    """Sampling, ids, propagation and span records for one process.

    Spans are recorded as tuples and handed in batches to a child process that encodes
    and exports them (``iap.adapters.span_export``); a bounded buffer sits in between.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        dropped: Callable[[int], None],
        environment: Environment | None = None,
        spawn: bool = True,
    ) -> None:
        """``environment``: the ``OTEL_*`` variables (none when omitted). ``spawn=False``
        records without an exporter process (tests of the buffer)."""
        self._config = config
        self._environment = environment or Environment()
        self._dropped = dropped
        self._spawn = spawn
        self.propagator = _propagator(config.propagators)
        self._fast_inject = set(config.propagators) <= {"tracecontext", "b3multi", "baggage"}
        self._w3c = "tracecontext" in config.propagators
        self._b3 = "b3multi" in config.propagators
        self._baggage = "baggage" in config.propagators
        self.propagation_headers = frozenset(self.propagator.fields) | {
            "baggage",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
            "traceparent",
            "tracestate",
        }
        self._bound = TraceIdRatioBased.get_bound_for_rate(config.sample_ratio)
        self._spans: deque[SpanTuple] = deque()
        self._wake = threading.Event()
        self._flushed = threading.Event()
        self._flush_wanted = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._process: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._reported_drops = 0
        self.enabled = False
        self.current = current_span()  # the span of the request a task serves

    def start(self) -> None:
        """Start the exporter process and its feeder thread (after any fork).

        Without an endpoint nothing would ever see a span, so none are made: a trusted
        proxy's context passes through to the upstream unchanged.
        """
        endpoint = _endpoint(self._config, self._environment)
        if endpoint is None and self._spawn:
            return
        self.enabled = True
        if not self._spawn:
            return
        import multiprocessing

        from iap.adapters import span_export

        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        settings = {
            "endpoint": endpoint,
            "protocol": self._config.protocol,
            "timeout": self._config.export_timeout,
            "service_name": self._environment.service_name or self._config.service_name,
        }
        self._process = context.Process(
            target=span_export.run, args=(child, settings), name="iap-span-exporter", daemon=True
        )
        self._process.start()
        child.close()
        self._thread = threading.Thread(target=self._feed, name="iap-span-feeder", daemon=True)
        self._thread.start()

    # --- the hand-over to the exporter process (a thread: the pipe may block) ----------
    # Records are tuples of plain values and flat dicts: the garbage collector stops
    # tracking them, so thousands waiting for the next hand-over cost it nothing.
    def record(self, span: SpanTuple) -> None:
        if len(self._spans) >= self._config.max_queue_size:
            self._dropped(1)
            return
        self._spans.append(span)
        if len(self._spans) >= _SEND_AT:
            self._wake.set()

    def _feed(self) -> None:
        assert self._pipe is not None
        while True:
            self._wake.wait(_SEND_EVERY)
            self._wake.clear()
            try:
                self._send_pending()
                self._take_reports()
                if self._flush_wanted or self._stopping:
                    self._sync()
            except (OSError, EOFError):  # the exporter process is gone
                self._dropped(len(self._spans))
                self._spans.clear()
                self._flushed.set()
                return
            if self._stopping:
                self._pipe.send_bytes(pickle.dumps(None))
                return

    def _send_pending(self) -> None:
        assert self._pipe is not None
        while self._spans:
            count = min(len(self._spans), self._config.max_queue_size)
            batch = [self._spans.popleft() for _ in range(count)]
            self._pipe.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))

    def _take_reports(self, *, until_flushed: bool = False) -> None:
        """Read what the exporter said: failed-export totals, and the answer to a flush."""
        assert self._pipe is not None
        while until_flushed or self._pipe.poll():
            kind, total = pickle.loads(self._pipe.recv_bytes())  # noqa: S301 - our own child
            if total > self._reported_drops:
                self._dropped(total - self._reported_drops)
                self._reported_drops = total
            if kind == "flushed":
                return

    def _sync(self) -> None:
        """Wait until the exporter has exported everything sent so far."""
        assert self._pipe is not None
        self._pipe.send_bytes(pickle.dumps(("flush",)))
        self._take_reports(until_flushed=True)
        self._flush_wanted = False
        self._flushed.set()

    def flush(self) -> bool:
        """Export everything recorded so far (blocking); for tests and shutdown."""
        if self._thread is None or not self._thread.is_alive():
            return True
        self._flushed.clear()
        self._flush_wanted = True
        self._wake.set()
        return self._flushed.wait(self._config.export_timeout * 4 + 10)

    def shutdown(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(self._config.export_timeout * 4 + 10)
        if self._process is not None:
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()

    # --- the request path ---------------------------------------------------------------
    def start_request(
        self,
        *,
        name: str,
        headers: Mapping[str, str],
        trusted: bool,
        attributes: Callable[[], Mapping[str, Any]],
    ) -> RequestSpan:
        """The SERVER span of one request; continues the incoming trace only if ``trusted``."""
        incoming = _EMPTY_CONTEXT
        if (
            "traceparent" in headers
            or "x-b3-traceid" in headers
            or "b3" in headers
            or (trusted and "baggage" in headers)
        ):
            incoming = self.propagator.extract(headers, context=_EMPTY_CONTEXT)
        if not self.enabled:
            return PassThrough(self.propagator, incoming) if trusted else _UNTRACED
        claimed = (
            trace.get_current_span(incoming).get_span_context()
            if incoming is not _EMPTY_CONTEXT
            else trace.INVALID_SPAN_CONTEXT  # most requests: no context came with them
        )
        links: tuple[tuple[int, int, dict[str, str]], ...] = ()
        if trusted and claimed.is_valid:
            trace_id, parent_id, sampled = (
                claimed.trace_id,
                claimed.span_id,
                claimed.trace_flags.sampled,
            )
        else:
            trace_id, parent_id = random.getrandbits(128) or 1, 0
            sampled = trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound
            if claimed.is_valid:
                links = ((claimed.trace_id, claimed.span_id, {"iap.link": "untrusted"}),)
            incoming = _EMPTY_CONTEXT  # no baggage or state from an untrusted client
        span_id = random.getrandbits(64) or 1
        if not sampled:
            return Unsampled(self, trace_id, span_id, incoming)
        return Sampled(self, name, trace_id, span_id, parent_id, incoming, links, attributes())

    def inject(
        self, trace_id: int, span_id: int, sampled: bool, incoming: Context
    ) -> dict[str, str]:
        """Propagation headers naming ``span_id`` as the upstream's parent."""
        if not self._fast_inject:
            context = trace.set_span_in_context(
                trace.NonRecordingSpan(
                    trace.SpanContext(
                        trace_id,
                        span_id,
                        is_remote=False,
                        trace_flags=trace.TraceFlags(1 if sampled else 0),
                        trace_state=trace.get_current_span(incoming).get_span_context().trace_state,
                    )
                ),
                incoming,
            )
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier, context=context)
            return carrier
        # W3C Trace Context §3.2 and B3 multi-header: fixed-width hex, as the library's
        # propagators write them (tests/unit/test_telemetry.py holds them to that).
        headers: dict[str, str] = {}
        trace_hex, span_hex = f"{trace_id:032x}", f"{span_id:016x}"
        if self._w3c:
            headers["traceparent"] = f"00-{trace_hex}-{span_hex}-{'01' if sampled else '00'}"
        if self._b3:
            headers["x-b3-traceid"] = trace_hex
            headers["x-b3-spanid"] = span_hex
            headers["x-b3-sampled"] = "1" if sampled else "0"
        if incoming is not _EMPTY_CONTEXT:  # a trusted proxy's state and baggage go on
            state = trace.get_current_span(incoming).get_span_context().trace_state
            if self._w3c and state:
                headers["tracestate"] = state.to_header()
            if self._baggage:
                _BAGGAGE.inject(headers, context=incoming)
        return headers


_BAGGAGE = W3CBaggagePropagator()


__all__ = ["RequestSpan", "SpanTuple", "Tracing"]
