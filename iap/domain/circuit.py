"""A per-upstream circuit breaker with an injected clock.

Invariants:
- ``failures`` consecutive connection failures open the circuit for ``cooldown``
  seconds; while open, requests are refused (503) without touching the network.
- After the cooldown one trial request is let through (half-open); its success
  closes the circuit, its failure opens it again for another cooldown.
"""

from __future__ import annotations

from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold and self._clock() < self._open_until

    def retry_after(self) -> float:
        """Seconds until the circuit lets a trial through (0 when it would now)."""
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a request may go out now."""
        if self._failures < self._threshold:
            return True
        if self._clock() < self._open_until or self._trial_running:
            return False
        self._trial_running = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._trial_running = False

    def abandoned(self) -> None:
        """The request that was let through ended without a verdict (e.g. cancelled)."""
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        self._trial_running = False
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
