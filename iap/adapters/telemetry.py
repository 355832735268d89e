"""Tracing (SPEC §2 step 3, §8): the only module that imports the OpenTelemetry SDK.

Invariants:
- An incoming trace context is continued only from a trusted proxy; from anyone else
  a new trace starts, linked to the context the client sent, so a client cannot graft
  its requests into someone else's trace or force sampling.
- The upstream's ``traceparent`` (and B3 headers) name iap's CLIENT span as parent.
- Client-sent propagation headers never reach the upstream as sent; iap writes its own.
- Spans carry no header values, query strings, tokens, cookies or emails.
- An exporter that is down never slows a request: spans queue in a bounded buffer and
  are exported from a background thread; spans lost to a full queue or a failed export
  are counted in ``iap_spans_dropped_total``.
- Decisions (authentication, authorization, rate limit, mint) are span *events* on the
  SERVER span, not child spans: an event costs a list append, a span an id, a context
  and an export record (see docs/observability.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iap.config import Telemetry as TelemetryConfig

_EMPTY_CONTEXT = Context()


def _propagator(names: Sequence[str]) -> TextMapPropagator:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat

    known: dict[str, Callable[[], TextMapPropagator]] = {
        "tracecontext": TraceContextTextMapPropagator,
        "baggage": W3CBaggagePropagator,
        "b3multi": B3MultiFormat,
        "b3": B3SingleFormat,
    }
    return CompositePropagator([known[name]() for name in names])


class _CountingExporter(SpanExporter):
    """Counts the spans of every failed export: with the collector down they are lost."""

    def __init__(self, inner: SpanExporter, dropped: Callable[[int], None]) -> None:
        self._inner = inner
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingBatchProcessor(BatchSpanProcessor):
    """BatchSpanProcessor that also counts spans refused because its queue is full."""

    def __init__(
        self, exporter: SpanExporter, max_queue_size: int, dropped: Callable[[int], None]
    ) -> None:
        super().__init__(
            exporter, max_queue_size=max_queue_size, max_export_batch_size=min(512, max_queue_size)
        )
        self._max = max_queue_size
        self._dropped = dropped
        # The SDK keeps its queue private; without it only failed exports could be counted.
        self._queue: Sized | None = getattr(self._batch_processor, "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        sampled = span.context is not None and span.context.trace_flags.sampled
        if sampled and self._queue is not None and len(self._queue) >= self._max:
            self._dropped(1)
        super().on_end(span)


def _exporter(config: TelemetryConfig) -> SpanExporter | None:
    """The OTLP exporter from config, else from ``OTEL_EXPORTER_OTLP_*``; None when neither."""
    env_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if config.otlp_endpoint is None and not env_endpoint:
        return None
    timeout = config.export_timeout
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=config.otlp_endpoint, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = f"{config.otlp_endpoint}/v1/traces" if config.otlp_endpoint else None
    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)


class Tracing:
    """Tracer, sampler, propagators and exporter for one process."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        dropped: Callable[[int], None],
        exporter: SpanExporter | None = None,
    ) -> None:
        """``exporter`` overrides the OTLP exporter the config describes (tests)."""
        self._config = config
        self._exporter = exporter
        self._dropped = dropped
        self.propagator = _propagator(config.propagators)
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
        self._provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.enabled = False

    def start(self) -> None:
        """Create the provider and its export thread (after any fork).

        Without an exporter nothing would ever see a span, so none are made: the NoOp
        tracer passes a trusted proxy's context through to the upstream unchanged.
        """
        exporter = self._exporter or _exporter(self._config)
        if exporter is None:
            return
        name = os.environ.get("OTEL_SERVICE_NAME") or self._config.service_name
        self._provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: name}),
            sampler=ParentBased(TraceIdRatioBased(self._config.sample_ratio)),
        )
        counting = _CountingExporter(exporter, self._dropped)
        self._provider.add_span_processor(
            _CountingBatchProcessor(counting, self._config.max_queue_size, self._dropped)
        )
        self.tracer = self._provider.get_tracer("iap")
        self.enabled = True

    def flush(self) -> bool:
        """Export everything queued now (blocking); for tests and shutdown."""
        return self._provider.force_flush() if self._provider else True

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()

    def start_request(
        self,
        *,
        name: str,
        headers: Mapping[str, str],
        trusted: bool,
        attributes: Callable[[], Mapping[str, Any]],
    ) -> RequestSpan:
        """The SERVER span of one request; continues the incoming trace only if ``trusted``."""
        if not self.enabled:
            return _PassThrough(self.propagator, headers) if trusted else _UNTRACED
        incoming = self.propagator.extract(headers, context=_EMPTY_CONTEXT)
        incoming_span = trace.get_current_span(incoming).get_span_context()
        links: tuple[Link, ...] = ()
        parent = incoming
        if not trusted and incoming_span.is_valid:
            parent, links = _EMPTY_CONTEXT, (Link(incoming_span, {"iap.link": "untrusted"}),)
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes(), links=links
        )
        return _RecordedSpan(self, span)


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


_UNTRACED = RequestSpan()


class _PassThrough(RequestSpan):
    """Tracing off, trusted peer: hand the incoming context to the upstream unchanged."""

    __slots__ = ("_headers", "_propagator")

    def __init__(self, propagator: TextMapPropagator, headers: Mapping[str, str]) -> None:
        self._propagator = propagator
        self._headers = headers

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        carrier: dict[str, str] = {}
        context = self._propagator.extract(self._headers, context=_EMPTY_CONTEXT)
        self._propagator.inject(carrier, context=context)
        return carrier


class _RecordedSpan(RequestSpan):
    __slots__ = ("_client", "_span", "_tracing")
    recording = True

    def __init__(self, tracing: Tracing, span: trace.Span) -> None:
        self._tracing = tracing
        self._span = span
        self._client: trace.Span | None = None

    @property
    def ids(self) -> tuple[str | None, str | None]:
        context = self._span.get_span_context()
        if not context.is_valid:
            return None, None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def rename(self, name: str) -> None:
        self._span.update_name(name)

    def set(self, key: str, value: str | int | bool) -> None:
        self._span.set_attribute(key, value)

    def decision(self, event: str, attributes: Mapping[str, str]) -> None:
        self._span.set_attributes(attributes)
        self._span.add_event(event, attributes)

    def start_upstream(
        self, method: str, attributes: Callable[[], Mapping[str, Any]]
    ) -> dict[str, str]:
        parent = trace.set_span_in_context(self._span)
        self._client = self._tracing.tracer.start_span(
            method, context=parent, kind=SpanKind.CLIENT, attributes=attributes()
        )
        carrier: dict[str, str] = {}
        self._tracing.propagator.inject(carrier, context=trace.set_span_in_context(self._client))
        return carrier

    def end_upstream(self, status: int | None, error: str | None = None) -> None:
        if self._client is None:
            return
        if status is not None:
            self._client.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            self._client.set_attribute("error.type", error or str(status))
            self._client.set_status(Status(StatusCode.ERROR))
        self._client.end()
        self._client = None

    def end(self, status: int, reason: str | None) -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        if reason:
            span.set_attribute("iap.reason", reason)
        if status >= 500:
            span.set_attribute("error.type", reason or str(status))
            span.set_status(Status(StatusCode.ERROR))
        self.end_upstream(None)
        span.end()
