"""The span exporter process: OTLP encoding and export, away from the proxy's event loop.

The OpenTelemetry SDK's encoder and exporter are pure Python; run in the proxy they took
the interpreter lock for about 40 µs per span. Here they run in a child process that
receives finished spans as plain tuples over a pipe, rebuilds them as the SDK's
``ReadableSpan`` and exports them with the SDK's OTLP exporter.

Messages on the pipe (pickled). To the child: a list of span tuples (see
``iap.adapters.telemetry``), ``("flush",)``, or ``None`` to stop. From the child:
``("dropped", total)`` after every failed export and ``("flushed", total)`` once everything
sent before a flush was exported; ``total`` counts spans whose export failed so far.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

SpanTuple = tuple[Any, ...]
_BATCH = 512


def run(connection: Connection, settings: dict[str, Any]) -> None:
    """Entry point of the child process."""
    import os
    import signal

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the proxy, which stops us

    # Telemetry yields to traffic: when the machine is busy the exporter falls behind and
    # the proxy's bounded buffer drops (and counts) spans, rather than requests slowing.
    os.nice(10)

    exporter = _exporter(settings)
    resource = Resource.create({SERVICE_NAME: settings["service_name"]})
    dropped = 0
    while True:
        try:
            message = pickle.loads(connection.recv_bytes())  # noqa: S301 - our own parent
        except (EOFError, OSError):
            break
        if message is None:
            break
        if isinstance(message, tuple):  # ("flush",)
            connection.send_bytes(pickle.dumps(("flushed", dropped)))
            continue
        for start in range(0, len(message), _BATCH):
            batch = message[start : start + _BATCH]
            if not _export(exporter, resource, batch):
                dropped += len(batch)
                connection.send_bytes(pickle.dumps(("dropped", dropped)))
    exporter.shutdown()


def _exporter(settings: dict[str, Any]) -> Any:
    endpoint, timeout = settings["endpoint"], settings["timeout"]
    if settings["protocol"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint, timeout=timeout)


def _export(exporter: Any, resource: Any, batch: Sequence[SpanTuple]) -> bool:
    from opentelemetry.sdk.trace.export import SpanExportResult

    try:
        client = _http_client(exporter)
        if client is not None:
            return bool(client.export(encode(resource.attributes, batch)).success)
        return bool(
            exporter.export([_readable(resource, span) for span in batch])
            is SpanExportResult.SUCCESS
        )
    except Exception:  # a broken collector must not end the exporter
        return False


def _http_client(exporter: Any) -> Any:
    """The OTLP/HTTP exporter's transport (compression, retries, OTEL_* headers and TLS), when
    this SDK version has it: the request bytes then come from :func:`encode`, about 2.5 times
    cheaper than the SDK's encoder, which takes ~50 µs per span. Without it (another SDK
    version, or gRPC) spans go through the SDK exporter whole; docs/PERFORMANCE.md."""
    client = getattr(exporter, "_client", None)
    result = getattr(client, "export", None)
    return client if callable(result) else None


def encode(resource: Mapping[str, Any], batch: Sequence[SpanTuple]) -> bytes:
    """``ExportTraceServiceRequest`` bytes for ``batch``, as the SDK's encoder writes them.

    Messages are filled in place (``add()``), never built apart and copied in.
    """
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _fill(resource_spans.resource.attributes, resource)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "iap"
    for span in batch:
        _fill_span(scope_spans.spans.add(), span)
    return bytes(request.SerializeToString())


def _fill_span(encoded: Any, span: SpanTuple) -> None:
    (name, kind, trace_id, span_id, parent_id, parent_remote, start, end, attributes, events,
     links, error) = span  # fmt: skip
    encoded.trace_id = trace_id.to_bytes(16, "big")
    encoded.span_id = span_id.to_bytes(8, "big")
    if parent_id:
        encoded.parent_span_id = parent_id.to_bytes(8, "big")
    encoded.name = name
    encoded.kind = kind + 1  # the API's SpanKind counts from INTERNAL = 0, OTLP's from UNSPECIFIED
    encoded.start_time_unix_nano = start
    encoded.end_time_unix_nano = end
    _fill(encoded.attributes, attributes)
    for event_name, at, values in events:
        event = encoded.events.add()
        event.name = event_name
        event.time_unix_nano = at
        _fill(event.attributes, values)
    for tid, sid, values in links:
        link = encoded.links.add()
        link.trace_id = tid.to_bytes(16, "big")
        link.span_id = sid.to_bytes(8, "big")
        link.flags = 0x100 | 0x200  # links name remote contexts
        _fill(link.attributes, values)
    if error:
        encoded.status.code = Status.STATUS_CODE_ERROR
    else:
        encoded.status.SetInParent()  # an empty status, as the SDK's encoder writes
    # OTLP span flags: bit 8 "is-remote is known", bit 9 "the parent is remote".
    encoded.flags = 0x100 | (0x200 if parent_id and parent_remote else 0)


def _fill(target: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        pair = target.add()
        pair.key = key
        if isinstance(value, bool):
            pair.value.bool_value = value
        elif isinstance(value, int):
            pair.value.int_value = value
        elif isinstance(value, float):
            pair.value.double_value = value
        else:
            pair.value.string_value = str(value)


def _readable(resource: Any, span: SpanTuple) -> Any:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

    (name, kind, trace_id, span_id, parent_id, parent_remote, start, end, attributes, events,
     links, error) = span  # fmt: skip
    sampled = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled)
    parent = (
        SpanContext(trace_id, parent_id, is_remote=parent_remote, trace_flags=sampled)
        if parent_id
        else None
    )
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(event, event_attributes, at) for event, at, event_attributes in events],
        links=[
            Link(SpanContext(tid, sid, is_remote=True), link_attributes)
            for tid, sid, link_attributes in links
        ],
        kind=SpanKind(kind),
        status=Status(StatusCode.ERROR if error else StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope("iap"),
    )
