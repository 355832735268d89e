"""iap.adapters.audit: one JSON line per request with the fields of SPEC §8."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from iap.adapters.audit import FIELDS as AUDIT_FIELDS
from iap.adapters.audit import AuditLog, _timestamp, json_line
from iap.model import Exchange

FIELDS = {
    "ts",
    "correlation_id",
    "trace_id",
    "span_id",
    "client_ip",
    "method",
    "host",
    "path",
    "route",
    "status",
    "duration_ms",
    "authn_method",
    "subject",
    "tenant",
    "decision",
    "reason",
    "upstream",
    "bytes_in",
    "bytes_out",
}


def _exchange() -> Exchange:
    return Exchange(
        started=100.0,
        correlation_id="c0ffee",
        client_ip="198.51.100.7",
        method="POST",
        host="api.contoso.com",
        path="/orders/1",
        route="orders",
        status=201,
        reason="allowed",
        decision="allow",
        authn_method="session",
        subject="tid:oid",
        tenant="tid",
        upstream="https://gw:443",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        bytes_in=12,
        bytes_out=34,
    )


def test_record_writes_exactly_one_json_line_with_every_field() -> None:
    stream = io.StringIO()
    AuditLog(stream).record(_exchange(), now=100.25)
    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    line = json.loads(text)
    assert set(line) == FIELDS
    assert len(FIELDS) == 19
    assert line["duration_ms"] == 250.0
    assert line["status"] == 201
    assert line["correlation_id"] == "c0ffee"
    assert line["path"] == "/orders/1"
    assert line["bytes_in"] == 12
    assert line["bytes_out"] == 34
    assert datetime.fromisoformat(line["ts"]).tzinfo is not None


def test_minimal_exchange_still_has_every_field() -> None:
    stream = io.StringIO()
    exchange = Exchange(
        started=0.0, correlation_id="c", client_ip="ip", method="GET", host="h", path="/"
    )
    AuditLog(stream).record(exchange, now=0.001)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert set(line) == FIELDS
    assert line["route"] is None
    assert line["subject"] is None


def test_each_record_is_its_own_line_even_with_hostile_values() -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    hostile = _exchange()
    hostile.path = '/a\n{"forged": true}\r\n'
    hostile.host = "h\u2028x"
    log.record(hostile, now=101.0)
    log.record(_exchange(), now=101.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["path"] == hostile.path
    assert "forged" not in json.loads(lines[1])


def test_closed_stream_does_not_raise() -> None:
    stream = io.StringIO()
    stream.close()
    AuditLog(stream).record(_exchange(), now=101.0)


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_timestamps_are_rfc3339_utc_milliseconds(now: float) -> None:
    text = _timestamp(now)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    assert now - 0.001 <= parsed <= now + 0.000_001


_VALUE = st.one_of(
    st.none(),
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.lists(_VALUE, min_size=19, max_size=19))
def test_json_line_is_what_json_dumps_writes(values: list[object]) -> None:
    line = json_line(tuple(values))  # type: ignore[arg-type]
    assert line.endswith("\n")
    assert line.count("\n") == 1
    expected = json.dumps(dict(zip(AUDIT_FIELDS, values, strict=True)), separators=(",", ":"))
    assert line == expected + "\n"
