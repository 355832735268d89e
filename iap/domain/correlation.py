"""Correlation ids (SPEC §2 step 2).

Invariant: an incoming ``X-Correlation-ID`` is kept only when the peer is a trusted
proxy and the value is short and made of safe characters (it lands in logs, spans and
headers); otherwise the edge generates a UUIDv4.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BATCH = 256


def _uuid4_strings(random: Callable[[int], bytes]) -> Iterator[str]:
    """RFC 9562 version-4 UUID strings, as ``str(uuid.uuid4())`` gives, from ``random`` read
    256 at a time: one getrandom(2) and one hex conversion per batch, not per request."""
    while True:
        pool = bytearray(random(16 * _BATCH))
        for offset in range(0, len(pool), 16):
            pool[offset + 6] = (pool[offset + 6] & 0x0F) | 0x40  # version 4
            pool[offset + 8] = (pool[offset + 8] & 0x3F) | 0x80  # RFC 9562 variant
        text = pool.hex()
        for at in range(0, len(text), 32):
            yield (
                f"{text[at : at + 8]}-{text[at + 8 : at + 12]}-{text[at + 12 : at + 16]}-"
                f"{text[at + 16 : at + 20]}-{text[at + 20 : at + 32]}"
            )


class CorrelationIds:
    """Chooses each request's correlation id; fresh ids come from ``random`` (``os.urandom``,
    given by the gateway), so this module reads no entropy of its own."""

    __slots__ = ("_fresh",)

    def __init__(self, random: Callable[[int], bytes]) -> None:
        self._fresh = _uuid4_strings(random)

    def choose(self, incoming: str | None, *, trusted: bool) -> str:
        """The correlation id for this request."""
        if trusted and incoming and _SAFE.fullmatch(incoming):
            return incoming
        return next(self._fresh)
