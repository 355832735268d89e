"""Correlation ids (SPEC §2 step 2).

Invariant: an incoming ``X-Correlation-ID`` is kept only when the peer is a trusted
proxy and the value is short and made of safe characters (it lands in logs, spans and
headers); otherwise the edge generates a UUIDv4.
"""

from __future__ import annotations

import re
import uuid

_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def choose(incoming: str | None, *, trusted: bool) -> str:
    """The correlation id for this request."""
    if trusted and incoming and _SAFE.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())
