"""Sampling, ids, propagation and the span buffer (iap.adapters.telemetry)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iap.adapters.telemetry import RequestSpan, Tracing
from iap.config import Telemetry

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def recording(ratio: float = 1.0, queue: int = 2048) -> tuple[Tracing, list[int]]:
    drops: list[int] = []
    tracing = Tracing(
        Telemetry(sample_ratio=ratio, max_queue_size=queue), dropped=drops.append, spawn=False
    )
    tracing.start()
    return tracing, drops


def serve(
    tracing: Tracing, headers: dict[str, str] | None = None, *, trusted: bool = False
) -> tuple[RequestSpan, dict[str, str]]:
    span = tracing.start_request(
        name="GET", headers=headers or {}, trusted=trusted, attributes=dict
    )
    upstream = span.start_upstream("GET", dict)
    span.end_upstream(200)
    span.end(200, None)
    return span, upstream


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    tracing, drops = recording(queue=4)
    for _ in range(10):
        serve(tracing)  # two spans each; nothing takes them out of the buffer
    assert sum(drops) == 20 - 4


def test_untrusted_context_is_linked_not_continued() -> None:
    tracing, _ = recording()
    span, upstream = serve(tracing, {"traceparent": INCOMING})
    assert span.ids[0] != INCOMING.split("-")[1]
    assert upstream["traceparent"].split("-")[1] == span.ids[0]


def test_trusted_context_is_continued_with_its_sampling_decision() -> None:
    tracing, _ = recording(ratio=1.0)
    unsampled = INCOMING[:-2] + "00"
    span, upstream = serve(tracing, {"traceparent": unsampled}, trusted=True)
    assert span.ids[0] == INCOMING.split("-")[1]
    assert not span.recording
    assert upstream["traceparent"].endswith("-00")
    never, _ = recording(ratio=0.0)
    span, upstream = serve(never, {"traceparent": INCOMING}, trusted=True)
    assert span.recording
    assert upstream["traceparent"].endswith("-01")


def test_ratio_zero_records_nothing_but_still_propagates() -> None:
    tracing, drops = recording(ratio=0.0, queue=1)
    for _ in range(50):
        span, upstream = serve(tracing)
        assert not span.recording
        assert upstream["traceparent"].split("-")[1] == span.ids[0]
    assert drops == []


@given(
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.booleans(),
)
def test_fast_headers_are_what_the_library_propagators_write(
    trace_id: int, span_id: int, sampled: bool
) -> None:
    tracing, _ = recording()
    ours = tracing.inject(trace_id, span_id, sampled, Context())
    expected: dict[str, str] = {}
    context = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id, span_id, is_remote=False, trace_flags=trace.TraceFlags(int(sampled))
            )
        )
    )
    TraceContextTextMapPropagator().inject(expected, context=context)
    B3MultiFormat().inject(expected, context=context)
    assert ours == expected
