"""iap.domain.circuit: a breaker driven by an injected clock."""

from __future__ import annotations

import pytest

from iap.domain.circuit import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failures=3, cooldown=10.0, clock=clock)


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.failed()


def test_closed_allows(breaker: CircuitBreaker) -> None:
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(10))


def test_stays_closed_below_threshold(breaker: CircuitBreaker) -> None:
    _fail(breaker, 2)
    assert not breaker.is_open
    assert breaker.allow()


def test_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    _fail(breaker, 2)
    breaker.succeeded()
    _fail(breaker, 2)
    assert not breaker.is_open
    assert breaker.allow()


def test_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    _fail(breaker, 3)
    assert breaker.is_open
    assert not breaker.allow()


def test_refuses_for_the_whole_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _fail(breaker, 3)
    clock.now += 9.999
    assert breaker.is_open
    assert not breaker.allow()


def test_one_half_open_trial_after_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()


def test_trial_success_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert not breaker.is_open
    assert breaker.allow()
    assert breaker.allow()
    _fail(breaker, 2)
    assert breaker.allow()


def test_trial_failure_reopens_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _fail(breaker, 3)
    clock.now += 15.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 9.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()
    assert not breaker.allow()


def test_threshold_of_one(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=5.0, clock=clock)
    breaker.failed()
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()


def test_retry_after_is_the_rest_of_the_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    assert breaker.retry_after() == 0.0
    _fail(breaker, 3)
    assert breaker.retry_after() == 10.0
    clock.now += 7.5
    assert breaker.retry_after() == 2.5
    clock.now += 5
    assert breaker.retry_after() == 0.0  # half-open: a trial may go now
