"""The breaker state machine: transitions at exact times, and the one-probe invariant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.breaker import Breaker, BreakerPolicy, BreakerState

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def _opened(threshold: int = 2, cooldown: float = 10.0) -> Breaker:
    """A breaker opened at t=1 by ``threshold`` failures."""
    b = Breaker(BreakerPolicy(failure_threshold=threshold, cooldown=cooldown))
    for _ in range(threshold):
        b.record_failure(now=1.0)
    return b


def test_closed_breaker_allows_everything() -> None:
    """A fresh breaker is closed and lets every call through."""
    b = Breaker()
    assert b.state is CLOSED
    assert all(b.allow(now=float(t)) for t in range(100))


def test_opens_after_threshold_consecutive_failures() -> None:
    """failure_threshold consecutive failures open the breaker; one fewer does not."""
    b = Breaker(BreakerPolicy(failure_threshold=3, cooldown=10.0))
    b.record_failure(0.0)
    b.record_failure(1.0)
    assert b.state is CLOSED and b.failures == 2
    b.record_failure(2.0)
    assert b.state is OPEN and b.opened_at == 2.0
    assert not b.allow(2.5)


def test_success_resets_the_failure_count() -> None:
    """A success between failures means they are no longer consecutive."""
    b = Breaker(BreakerPolicy(failure_threshold=2, cooldown=10.0))
    b.record_failure(0.0)
    b.record_success(1.0)
    b.record_failure(2.0)
    assert b.state is CLOSED and b.failures == 1


def test_allows_exactly_one_probe_after_cooldown() -> None:
    """Open breaker lets exactly one call through once the cooldown ends."""
    b = _opened(threshold=2, cooldown=10.0)
    assert not b.allow(now=10.99)
    assert b.allow(now=11.0)
    assert b.state is HALF_OPEN and b.probe_outstanding
    assert not b.allow(now=11.5)
    assert not b.allow(now=100.0)


def test_successful_probe_closes() -> None:
    """A successful probe closes the breaker and clears the count."""
    b = _opened()
    assert b.allow(11.0)
    b.record_success(12.0)
    assert b.state is CLOSED and b.failures == 0 and b.opened_at is None
    assert b.allow(12.0) and b.allow(12.0)


def test_failed_probe_reopens_with_fresh_cooldown() -> None:
    """A failed probe reopens the breaker and the cooldown starts again from that failure."""
    b = _opened(cooldown=10.0)
    assert b.allow(11.0)
    b.record_failure(12.0)
    assert b.state is OPEN and b.opened_at == 12.0
    assert not b.allow(21.9)
    assert b.allow(22.0)


def test_late_failure_while_open_does_not_extend_cooldown() -> None:
    """A straggler's failure reported while open leaves the cooldown where it was."""
    b = _opened(cooldown=10.0)
    b.record_failure(5.0)
    assert b.opened_at == 1.0
    assert b.allow(11.0)


def test_state_at_reports_half_open_after_cooldown_without_changing_state() -> None:
    """state_at shows HALF_OPEN once the cooldown ends, while the stored state stays OPEN."""
    b = _opened(cooldown=10.0)
    assert b.state_at(10.0) is OPEN
    assert b.state_at(11.0) is HALF_OPEN
    assert b.state is OPEN


def test_retry_in_counts_down_the_cooldown() -> None:
    """retry_in says how long until allow may succeed."""
    b = _opened(cooldown=10.0)
    assert b.retry_in(4.0) == 7.0
    assert b.retry_in(20.0) == 0.0
    assert Breaker().retry_in(0.0) == 0.0


def test_on_transition_reports_every_change() -> None:
    """The callback sees closed->open->half_open->open->half_open->closed in order."""
    seen: list[tuple[str, str]] = []
    b = Breaker(
        BreakerPolicy(failure_threshold=1, cooldown=5.0),
        on_transition=lambda old, new: seen.append((old.value, new.value)),
    )
    b.record_failure(0.0)
    b.allow(5.0)
    b.record_failure(6.0)
    b.allow(11.0)
    b.record_success(12.0)
    assert seen == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_validation() -> None:
    """A zero threshold and a negative or infinite cooldown are refused, each by name."""
    with pytest.raises(ValueError, match=r"^breaker failure_threshold must be at least 1$"):
        BreakerPolicy(failure_threshold=0)
    with pytest.raises(ValueError, match=r"breaker cooldown must be >= 0, got -1.0"):
        BreakerPolicy(cooldown=-1.0)
    with pytest.raises(ValueError, match=r"breaker cooldown must be finite, got inf"):
        BreakerPolicy(cooldown=float("inf"))


@given(
    threshold=st.integers(min_value=1, max_value=5),
    cooldown=st.floats(min_value=0.0, max_value=50.0),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["allow", "success", "failure"]), st.floats(min_value=0, max_value=20)
        ),
        max_size=300,
    ),
)
def test_never_two_probes_while_half_open(
    threshold: int, cooldown: float, ops: list[tuple[str, float]]
) -> None:
    """Property: between entering half-open and the probe's result, allow() says yes once."""
    b = Breaker(BreakerPolicy(failure_threshold=threshold, cooldown=cooldown))
    now = 0.0
    granted_in_half_open = 0
    for op, step in ops:
        now += step
        if op == "allow":
            was_closed = b.state is CLOSED
            if b.allow(now) and not was_closed:
                granted_in_half_open += 1
                assert b.state is HALF_OPEN
            assert granted_in_half_open <= 1
        elif op == "success":
            b.record_success(now)
            granted_in_half_open = 0
        else:
            b.record_failure(now)
            if b.state is OPEN:
                granted_in_half_open = 0
        assert b.state is not HALF_OPEN or b.probe_outstanding
