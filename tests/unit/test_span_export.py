"""The exporter process's OTLP encoding: the same message the SDK's encoder builds, cheaper;
and the SDK exporter whole when its HTTP transport is not available."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from iap.adapters.span_export import _export, _readable, encode

RESOURCE = Resource.create({SERVICE_NAME: "iap"})
SERVER = (
    "GET app", SpanKind.SERVER.value, 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7,
    0xB7AD6B7169203331, True, 1_700_000_000_000_000_000, 1_700_000_000_002_000_000,
    {"http.request.method": "GET", "http.response.status_code": 200, "iap.ok": True,
     "iap.ratio": 0.5},
    (("iap.authz", 1_700_000_000_001_000_000, {"iap.authz.decision": "allow"}),),
    ((0x1234, 0x5678, {"iap.link": "untrusted"}),),
    False,
)  # fmt: skip
CLIENT = (
    "GET", SpanKind.CLIENT.value, SERVER[2], 0x1111, SERVER[3], False,
    1_700_000_000_000_500_000, 1_700_000_000_001_500_000,
    {"server.port": 443, "error.type": "upstream_timeout"}, (), (), True,
)  # fmt: skip


def spans(message: ExportTraceServiceRequest) -> list[Any]:
    [resource_spans] = message.resource_spans
    [scope_spans] = resource_spans.scope_spans
    return list(scope_spans.spans)


def test_the_fast_encoding_is_the_sdk_encoding() -> None:
    batch = [SERVER, CLIENT]
    fast = ExportTraceServiceRequest.FromString(encode(RESOURCE.attributes, batch))
    sdk = encode_spans([_readable(RESOURCE, span) for span in batch])
    assert spans(fast) == spans(sdk)
    assert fast.resource_spans[0].resource == sdk.resource_spans[0].resource
    assert fast.resource_spans[0].scope_spans[0].scope.name == "iap"


class _Client:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def export(self, data: bytes) -> Any:
        self.sent.append(data)
        return type("Result", (), {"success": True})()


class _FastExporter:
    def __init__(self) -> None:
        self._client = _Client()


class _SdkOnlyExporter:
    def __init__(self) -> None:
        self.exported: list[Any] = []

    def export(self, batch: list[Any]) -> SpanExportResult:
        self.exported.extend(batch)
        return SpanExportResult.SUCCESS


def test_the_transport_gets_the_encoded_batch() -> None:
    exporter = _FastExporter()
    assert _export(exporter, RESOURCE, [SERVER])
    [data] = exporter._client.sent
    assert spans(ExportTraceServiceRequest.FromString(data))[0].name == "GET app"


def test_without_the_transport_the_sdk_exporter_does_it_all() -> None:
    exporter = _SdkOnlyExporter()
    assert _export(exporter, RESOURCE, [SERVER, CLIENT])
    assert [span.name for span in exporter.exported] == ["GET app", "GET"]
