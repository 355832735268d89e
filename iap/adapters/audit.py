"""The audit log (SPEC §8): exactly one JSON line per request on stdout.

Invariants:
- A line carries only the fields below. The path is logged without its query string
  (callbacks carry codes), and nothing here ever sees a header value, so tokens and
  cookies cannot reach the log.
- Lines written during one event-loop iteration leave in one write at its end: one
  system call per batch instead of one per request, and never later than the next
  iteration.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import TextIO

from iap.model import Exchange

FIELDS = (
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
)
_PREFIXES = tuple(f'{"{" if i == 0 else ","}"{name}":' for i, name in enumerate(FIELDS))


def json_line(values: tuple[str | int | float | None, ...]) -> str:
    """The JSON object ``dict(zip(FIELDS, values))`` on one line, as ``json.dumps`` with
    compact separators writes it, at half its cost: the keys are constant, so only the
    values are encoded (strings by the json module's own C escaper)."""
    parts = []
    for prefix, value in zip(_PREFIXES, values, strict=True):
        parts.append(prefix)
        if value is None:
            parts.append("null")
        elif isinstance(value, str):
            parts.append(encode_basestring_ascii(value))
        else:
            parts.append(repr(value))
    parts.append("}\n")
    return "".join(parts)


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """The date and time of a whole second, formatted once (a pure function, memoised)."""
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds; the date part is formatted once per second."""
    whole = int(now)
    return f"{_second(whole)}.{int((now - whole) * 1000):03d}Z"


class AuditLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._pending: list[str] = []

    def record(self, exchange: Exchange, *, now: float | None = None) -> None:
        """Write ``exchange`` as one line; ``now`` is a ``time.perf_counter`` reading."""
        elapsed = (now if now is not None else time.perf_counter()) - exchange.started
        values = (
            _timestamp(time.time()),
            exchange.correlation_id,
            exchange.trace_id,
            exchange.span_id,
            exchange.client_ip,
            exchange.method,
            exchange.host,
            exchange.path,
            exchange.route,
            exchange.status,
            round(elapsed * 1000, 3),
            exchange.authn_method,
            exchange.subject,
            exchange.tenant,
            exchange.decision,
            exchange.reason,
            exchange.upstream,
            exchange.bytes_in,
            exchange.bytes_out,
        )
        self._pending.append(json_line(values))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        """Write out what has been recorded."""
        lines, self._pending = "".join(self._pending), []
        try:
            self._stream.write(lines)
            self._stream.flush()
        except (OSError, ValueError):  # stdout closed: losing a line must not fail a request
            pass
