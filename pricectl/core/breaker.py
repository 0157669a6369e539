"""Circuit breaker around exchange connects: closed, open, half-open with one probe
(docs/architecture.md, "The resilience core").

::

    CLOSED --failure_threshold consecutive failures--> OPEN
    OPEN   --cooldown elapsed, allow() lets ONE probe through--> HALF_OPEN
    HALF_OPEN --probe succeeds--> CLOSED
    HALF_OPEN --probe fails--> OPEN (fresh cooldown)

Why a breaker on top of backoff: backoff spaces out attempts, the breaker *stops* them
for a whole cooldown after repeated failures and reports the state (``/health`` shows
``upstream.breaker``), and half-open makes sure exactly one attempt tests the water, so a
recovering exchange is not hit by every waiting caller at once.

Contract for callers: every ``allow(now) == True`` must be followed by exactly one
``record_success`` or ``record_failure`` (count a cancellation as a failure, e.g. in a
``finally``). While a half-open probe is outstanding, ``allow`` refuses everybody else.

Pure: time is ``now`` (monotonic seconds); no logging here, an optional
``on_transition(old, new)`` callback lets the adapter log or count transitions::

    b = Breaker(BreakerPolicy(failure_threshold=2, cooldown=10.0))
    b.record_failure(now=0.0); b.record_failure(now=1.0)   # -> OPEN
    b.allow(now=5.0)    # False: cooling down
    b.allow(now=11.0)   # True: the probe (-> HALF_OPEN)
    b.allow(now=11.5)   # False: the probe is still out
    b.record_success(now=12.0)                               # -> CLOSED
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from pricectl.core.duration import duration
from pricectl.core.policy import Rules

__all__ = ["Breaker", "BreakerPolicy", "BreakerState"]


class BreakerState(enum.Enum):
    """The three breaker states; values are what ``/health`` reports."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """Open after ``failure_threshold`` consecutive failures; probe after ``cooldown`` seconds.

    Config ``resilience.breaker``. Requires a threshold of at least 1 and a finite cooldown.
    """

    failure_threshold: int = 5
    cooldown: float = duration(30.0)

    def __post_init__(self) -> None:
        rules = Rules(self)
        rules.require(
            self.failure_threshold >= 1, "failure_threshold", "must be at least 1", got=False
        )
        rules.require(self.cooldown >= 0, "cooldown", "must be >= 0")
        rules.finite("cooldown")
        rules.check()


#: Called with ``(old, new)`` on every state change.
TransitionCallback = Callable[[BreakerState, BreakerState], None]


class Breaker:
    """One breaker's state machine; see the module docstring for the call pattern."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.policy = policy if policy is not None else BreakerPolicy()
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        """The stored state: an OPEN breaker whose cooldown ended stays OPEN until ``allow``."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (``None`` while closed)."""
        return self._opened_at

    @property
    def probe_outstanding(self) -> bool:
        """True while the half-open probe has been let through and not yet reported."""
        return self._probe_out

    def state_at(self, now: float) -> BreakerState:
        """The state as seen at ``now``: OPEN reads as HALF_OPEN once the cooldown is over.

        Does not change anything; use it for reporting.
        """
        if self._state is BreakerState.OPEN and self._cooldown_over(now):
            return BreakerState.HALF_OPEN
        return self._state

    def retry_in(self, now: float) -> float:
        """Seconds until ``allow`` may say yes (0 when it may now): how long an adapter sleeps."""
        if self._state is BreakerState.OPEN and self._opened_at is not None:
            return max(0.0, self._opened_at + self.policy.cooldown - now)
        return 0.0

    def allow(self, now: float) -> bool:
        """May a call go out at ``now``? A True while half-open *is* the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if not self._cooldown_over(now):
                return False
            self._set(BreakerState.HALF_OPEN)
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def record_success(self, now: float) -> None:
        """A call succeeded at ``now``: close and forget past failures."""
        self._failures = 0
        self._opened_at = None
        self._probe_out = False
        self._set(BreakerState.CLOSED)

    def record_failure(self, now: float) -> None:
        """A call failed at ``now``: count it; open at the threshold, reopen a failed probe."""
        self._failures += 1
        reached = self._failures >= self.policy.failure_threshold
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and reached
        ):
            self._open(now)
        # Already OPEN: a late failure of a call let through before opening; the cooldown
        # is not extended, or stragglers could keep the breaker shut indefinitely.

    def _cooldown_over(self, now: float) -> bool:
        return self._opened_at is not None and now >= self._opened_at + self.policy.cooldown

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_out = False
        self._set(BreakerState.OPEN)

    def _set(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self._on_transition is not None:
            self._on_transition(old, new)
