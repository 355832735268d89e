"""The span pipeline's bounds: a stuck exporter never blocks, and what is lost is counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from iap.adapters.telemetry import Tracing
from iap.config import Telemetry


class StuckExporter(SpanExporter):
    """Blocks every export until released, like a collector that stopped answering."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(timeout=60)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


class FailingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionRefusedError("collector down")

    def shutdown(self) -> None:
        pass


def tracing_with(exporter: SpanExporter, queue: int) -> tuple[Tracing, list[int]]:
    drops: list[int] = []
    config = Telemetry(max_queue_size=queue)
    tracing = Tracing(config, dropped=drops.append, exporter=exporter)
    tracing.start()
    return tracing, drops


def finish_requests(tracing: Tracing, count: int) -> None:
    for _ in range(count):
        span = tracing.start_request(name="GET", headers={}, trusted=False, attributes=dict)
        span.end(200, None)


def test_full_queue_drops_instead_of_blocking() -> None:
    exporter = StuckExporter()
    tracing, drops = tracing_with(exporter, queue=2)
    finish_requests(tracing, 20)  # returns although nothing can be exported
    # At most one batch is held by the stuck export and two spans wait in the queue.
    assert sum(drops) >= 20 - 2 - 2
    exporter.release.set()
    tracing.shutdown()
    # Nothing vanishes uncounted. (A drop can be counted for a span that still made it
    # when the export thread frees a slot between the check and the enqueue.)
    assert exporter.exported + sum(drops) >= 20


def test_failed_exports_are_counted() -> None:
    tracing, drops = tracing_with(FailingExporter(), queue=64)
    finish_requests(tracing, 7)
    assert tracing.flush()
    assert sum(drops) == 7
    tracing.shutdown()


def test_untrusted_incoming_context_is_linked_not_continued() -> None:
    tracing, _ = tracing_with(StuckExporter(), queue=64)
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    untrusted = tracing.start_request(
        name="GET", headers={"traceparent": incoming}, trusted=False, attributes=dict
    )
    trusted = tracing.start_request(
        name="GET", headers={"traceparent": incoming}, trusted=True, attributes=dict
    )
    assert untrusted.ids[0] != "0af7651916cd43dd8448eb211c80319c"
    assert trusted.ids[0] == "0af7651916cd43dd8448eb211c80319c"
    tracing.shutdown()
