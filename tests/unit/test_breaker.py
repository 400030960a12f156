"""Circuit breaker: closed → open → half-open → closed/open, on an injected fake clock."""

from __future__ import annotations

import pytest

from streams.core.breaker import BreakerState, CircuitBreaker

COOL_DOWN_S = 30.0


class FakeClock:
    """A monotonic clock that only moves when a test advances it (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would otherwise narrow it across clock advances.
    return breaker.state


def make(threshold: int = 3) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, COOL_DOWN_S, clock), clock


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN


def test_starts_closed_and_allows_calls():
    breaker, _ = make()
    assert state_of(breaker) is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(10))


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_opens_after_threshold_consecutive_failures(threshold):
    breaker, _ = make(threshold)
    for _ in range(threshold - 1):
        breaker.record_failure()
        assert state_of(breaker) is BreakerState.CLOSED
        assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_success_resets_the_consecutive_failure_count():
    breaker, _ = make(3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN


def test_open_refuses_every_call_until_the_cool_down_has_passed():
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(COOL_DOWN_S - 0.001)
    assert state_of(breaker) is BreakerState.OPEN
    assert not any(breaker.allow() for _ in range(5))
    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_half_open_allows_exactly_one_trial():
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(COOL_DOWN_S)
    assert breaker.allow()
    # The trial is in flight: everyone else is refused for a cool-down (after that the
    # trial counts as lost: test_a_lost_trial_is_replaced_after_another_cool_down).
    assert not breaker.allow()
    clock.advance(COOL_DOWN_S - 0.1)
    assert not breaker.allow()
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_trial_success_closes_and_needs_a_full_run_of_failures_to_reopen():
    breaker, clock = make(3)
    open_breaker(breaker)
    clock.advance(COOL_DOWN_S)
    assert breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(5))
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN


def test_trial_failure_reopens_with_a_fresh_cool_down():
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(COOL_DOWN_S + 5)
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    # The cool-down counts from the failed trial, not from the first opening.
    clock.advance(COOL_DOWN_S - 0.001)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()


def test_state_does_not_depend_on_wall_time():
    # Nothing moves unless the injected clock moves.
    breaker, _ = make(1)
    breaker.record_failure()
    assert [state_of(breaker) for _ in range(3)] == [BreakerState.OPEN] * 3


def test_a_lost_trial_is_replaced_after_another_cool_down():
    # The trial's caller was cancelled and never reported: the breaker must not refuse
    # calls for good.
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(COOL_DOWN_S)
    assert breaker.allow()  # the trial, whose outcome is never recorded
    clock.advance(COOL_DOWN_S - 0.1)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()  # a new trial
    assert not breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
