"""How long the ``--workers`` parent waits before it starts a dead worker again.

Invariants:
- Pure: the caller passes how long the worker was up; no clock is read here.
- The delay doubles from :data:`INITIAL` up to :data:`CAP` while workers keep dying soon
  after they start (a worker that exits 2 on a config error cannot loop fast), and starts
  again from :data:`INITIAL` once a worker stayed up for :data:`STABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL = 0.5
"""Seconds before the first restart."""
CAP = 30.0
"""The longest wait, however often a worker died."""
STABLE = 10.0
"""A worker up for this many seconds counts as healthy: its next death waits :data:`INITIAL`."""


@dataclass
class Backoff:
    """The restart delays of one worker slot."""

    initial: float = INITIAL
    cap: float = CAP
    stable: float = STABLE
    _next: float | None = None

    def delay(self, uptime: float) -> float:
        """Seconds to wait before starting again a worker that died after ``uptime`` seconds."""
        if self._next is None or uptime >= self.stable:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay
