"""Load shedding (``limits.max_in_flight``): a process answers 503 at once rather than queue
work it cannot take on.

Invariants:
- The count is of the public listener's requests being handled in this process, open
  WebSockets included; the edge owns it, so a reload that swaps the gateway keeps it.
- A request is shed after the request-bounds checks and before any auth work: no IdP,
  store or upstream call is made for it. The admin listener (health, readiness, metrics)
  is never counted nor shed.
"""

from __future__ import annotations

from typing import Protocol

from iap.errors import Overloaded


class Counter(Protocol):
    def inc(self) -> None: ...


class Load:
    """Requests in flight against their limit; the edge counts, the gateway admits."""

    __slots__ = ("_shed", "in_flight", "limit")

    def __init__(self, limit: int, shed: Counter | None) -> None:
        """``shed`` is the counter of shed requests (``iap_requests_shed_total``)."""
        self.limit = limit
        self.in_flight = 0
        self._shed = shed

    def admit(self) -> None:
        """Raise :class:`Overloaded` when more than ``limit`` requests are in flight (the
        caller's own included)."""
        if self.in_flight > self.limit:
            if self._shed is not None:
                self._shed.inc()
            raise Overloaded(f"{self.in_flight} requests in flight, limit {self.limit}")
