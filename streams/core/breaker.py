"""A circuit breaker with an injected clock (pure; the Triton adapter wraps calls in it).

States: ``closed`` (calls pass; consecutive failures are counted), ``open`` (calls are
refused until ``reset_after`` has passed), ``half_open`` (one trial call decides: success
closes, failure re-opens). A trial whose outcome is never recorded (its caller was
cancelled, or gave up on a backstop timeout) is taken as lost after another
``reset_after``, and the next call becomes the trial: otherwise the breaker would refuse
every call for good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Circuit-breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Counts failures and refuses calls while a dependency is down.

    Args:
        failure_threshold: Consecutive failures that open the circuit.
        reset_after_seconds: How long the circuit stays open before a trial call.
        clock: Monotonic clock in seconds (injected so tests advance time).
    """

    failure_threshold: int
    reset_after_seconds: float
    clock: Callable[[], float]
    _failures: int = field(default=0, init=False)
    _opened_at: float | None = field(default=None, init=False)
    _trial_started_at: float | None = field(default=None, init=False)

    @property
    def state(self) -> BreakerState:
        """Current state (open turns half-open once the cool-down has passed)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self._opened_at >= self.reset_after_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open state only one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self.clock()
        started = self._trial_started_at
        if started is None or now - started >= self.reset_after_seconds:
            self._trial_started_at = now
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        self._failures = 0
        self._opened_at = None
        self._trial_started_at = None

    def record_failure(self) -> None:
        """A call failed: count it, and open (or re-open) the circuit when due."""
        self._trial_started_at = None
        if self._opened_at is not None:
            self._opened_at = self.clock()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._opened_at = self.clock()
