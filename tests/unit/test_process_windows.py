"""The process-memory rate-limit counter against its oracle, ``limits``' own memory store
with its sliding window counter strategy: for any sequence of requests, keys, quotas and
pauses, both give the same verdict, the same remaining count and the same reset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import limits.storage.memory
import limits.strategies
import pytest
from hypothesis import given
from hypothesis import strategies as st
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from iap.adapters.ratelimit import ProcessWindows
from iap.domain.ratelimit import Verdict

_EPOCH = 1_800_000_000.0  # a wall-clock second in 2027; eighths of a second add exactly


class _Clock:
    def __init__(self) -> None:
        self.now = _EPOCH

    def __call__(self) -> float:
        return self.now


@contextmanager
def _oracle(clock: _Clock) -> Iterator[SlidingWindowCounterRateLimiter]:
    """``limits``' memory store and strategy, reading ``clock`` instead of the wall clock."""
    fake_time = SimpleNamespace(time=clock)
    with (
        mock.patch.object(limits.storage.memory, "time", fake_time),
        mock.patch.object(limits.strategies, "time", fake_time),
    ):
        storage = MemoryStorage()
        try:
            yield SlidingWindowCounterRateLimiter(storage)
        finally:
            storage.timer.cancel()


_steps = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"])),  # (pause in 1/8 s, key)
    max_size=80,
)


@given(capacity=st.integers(1, 6), window=st.integers(1, 4), steps=_steps)
def test_every_verdict_is_the_one_limits_gives(
    capacity: int, window: int, steps: list[tuple[int, str]]
) -> None:
    clock = _Clock()
    ours = ProcessWindows(clock)
    item = RateLimitItemPerSecond(capacity, window)
    with _oracle(clock) as theirs:
        for eighths, key in steps:
            clock.now += eighths / 8
            would = ours.test(key, capacity, window)
            assert would == theirs.test(item, key)
            verdict = ours.hit(key, capacity, window)
            allowed = theirs.hit(item, key)
            stats = theirs.get_window_stats(item, key)
            assert verdict.allowed is allowed is would
            assert verdict.remaining == stats.remaining
            assert verdict.reset_after == pytest.approx(stats.reset_time - clock.now, abs=1e-6)
            assert not verdict.store_error


def test_capacity_then_refusal_then_the_weighted_previous_window() -> None:
    clock = _Clock()
    clock.now += 2.5  # a quarter into a 10 s window
    windows = ProcessWindows(clock)
    verdicts = [windows.hit("k", 3, 10) for _ in range(4)]
    assert [(v.allowed, v.remaining) for v in verdicts] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert verdicts[-1].reset_after == 7.5  # when this window becomes the previous one
    # Half-way into the next window the previous 3 weigh 1.5, so two more fit; the next
    # slot frees when the previous window's weight drops by one (5 s % 10/3 s).
    clock.now += 12.5
    assert windows.hit("k", 3, 10) == Verdict(True, 1, pytest.approx(5 / 3))
    assert windows.hit("k", 3, 10) == Verdict(True, 0, pytest.approx(5 / 3))
    assert not windows.hit("k", 3, 10).allowed


def test_keys_and_quotas_count_apart() -> None:
    windows = ProcessWindows(_Clock())
    assert windows.hit("a", 1, 60).allowed
    assert not windows.hit("a", 1, 60).allowed
    assert windows.hit("b", 1, 60).allowed
    assert windows.hit("a", 2, 60).allowed  # the route's limit changed: counts start afresh


def test_counters_older_than_the_previous_window_are_dropped() -> None:
    clock = _Clock()
    windows = ProcessWindows(clock)
    for client in range(100):
        windows.hit(f"client-{client}", 5, 2)
    assert len(windows) == 100
    clock.now += 4  # two windows later: nothing left to weigh
    windows.hit("late", 5, 2)
    assert len(windows) == 1
    assert windows.hit("client-0", 5, 2).remaining == 4  # a fresh count, not a stale one
