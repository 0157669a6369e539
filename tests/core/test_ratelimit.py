"""Rate limits of the exchange, enforced on our side: pure, no clock, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pricectl.core.ratelimit import SlidingWindow, WeightBudget


def test_sliding_window_allows_limit_then_waits_for_oldest():
    """Four sends per second go out at once; the fifth waits until the first is 1 s old."""
    w = SlidingWindow(4, 1.0)
    assert all(w.try_acquire(0.0) for _ in range(4))
    assert not w.try_acquire(0.5)
    assert w.wait_time(0.5) == pytest.approx(0.5)
    assert all(w.try_acquire(1.0) for _ in range(4))
    assert not w.try_acquire(1.5)


def test_per_second_rounds_down_and_handles_slow_rates():
    """4.5/s becomes 4 per second; 0.5/s becomes one per two seconds."""
    assert (SlidingWindow.per_second(4.5).limit, SlidingWindow.per_second(4.5).window) == (4, 1.0)
    slow = SlidingWindow.per_second(0.5)
    assert slow.try_acquire(0.0) and not slow.try_acquire(1.9) and slow.try_acquire(2.0)


def test_per_second_slack_widens_the_window():
    """Slack absorbs arrival jitter: the next burst waits 1 s plus the slack."""
    w = SlidingWindow.per_second(4.0, slack=0.25)
    assert all(w.try_acquire(0.0) for _ in range(4))
    assert not w.try_acquire(1.0)
    assert w.wait_time(1.0) == pytest.approx(0.25)


def test_connects_limit_300_per_5_minutes():
    """300 connection attempts in 5 minutes, then the 301st waits for the window to slide."""
    w = SlidingWindow(300, 300.0)
    for i in range(300):
        assert w.try_acquire(i * 0.1)
    assert w.wait_time(30.0) == pytest.approx(270.0)
    assert w.count(30.0) == 300
    assert w.try_acquire(300.0)


def test_invalid_limits_are_refused():
    """A zero limit or a non-positive window is a programming error."""
    with pytest.raises(ValueError):
        SlidingWindow(0, 1.0)
    with pytest.raises(ValueError):
        SlidingWindow(1, 0.0)
    with pytest.raises(ValueError):
        SlidingWindow.per_second(0.0)


@given(
    limit=st.integers(1, 10),
    window=st.floats(0.1, 10.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
@example(limit=1, window=1.0, gaps=[2.1510260103889139e-181, 1.0])
def test_never_more_than_limit_in_any_window(limit: int, window: float, gaps: list[float]):
    """Whatever the attempt times, accepted events never exceed the limit in any window."""
    w = SlidingWindow(limit, window)
    now = 0.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap
        wait = w.wait_time(now)
        if w.try_acquire(now):
            assert wait == 0.0
            accepted.append(now)
        else:
            assert wait > 0.0
    for i, t in enumerate(accepted):
        # The limiter's own definition: ``u`` still counts at ``t`` while u + window > t
        # (``u > t - window`` can differ by a rounding error).
        in_window = [u for u in accepted[: i + 1] if u + window > t]
        assert len(in_window) <= limit


@given(
    limit=st.integers(1, 10),
    window=st.floats(0.1, 10.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=100),
)
@example(limit=1, window=3.5, gaps=[0.24282403989171414, 1.3835163025177308])
def test_waiting_the_wait_time_is_always_enough(limit: int, window: float, gaps: list[float]):
    """An adapter that sleeps ``wait_time`` then tries again always gets through."""
    w = SlidingWindow(limit, window)
    now = 0.0
    for gap in gaps:
        now += gap
        now += w.wait_time(now)
        assert w.try_acquire(now)


def test_weight_budget_blocks_until_next_minute():
    """A request that would take the minute past the budget waits for the next minute."""
    b = WeightBudget(100)
    b.record_used(90, wall=120.5)
    assert b.wait_time(10, wall=121.0) == 0.0
    assert b.wait_time(20, wall=121.0) == pytest.approx(59.0)
    assert b.wait_time(20, wall=180.0) == 0.0
    assert b.used_at(180.0) == 0


@given(used=st.integers(0, 200), wall=st.floats(0.0, 1e9), weight=st.integers(1, 50))
def test_weight_budget_wait_is_always_enough(used: int, wall: float, weight: int):
    """Waiting the returned time always lands in a minute where the request fits."""
    b = WeightBudget(100)
    b.record_used(used, wall)
    later = wall + b.wait_time(weight, wall)
    assert b.wait_time(weight, later) == 0.0


def test_weight_budget_charges_before_the_header_arrives():
    """Charged weight counts at once; the header's higher figure replaces it."""
    b = WeightBudget(10)
    b.charge(4, wall=0.0)
    b.charge(4, wall=1.0)
    assert b.wait_time(4, wall=2.0) > 0
    b.record_used(3, wall=2.0)
    assert b.used == 8
    b.record_used(9, wall=2.0)
    assert b.used == 9


def test_retry_after_pauses_every_request():
    """After a 429/418 nothing may go out until Retry-After has passed."""
    b = WeightBudget(1000)
    b.pause(120.0, wall=10.0)
    assert b.wait_time(1, wall=10.0) == pytest.approx(120.0)
    assert b.wait_time(1, wall=129.0) == pytest.approx(1.0)
    assert b.wait_time(1, wall=130.0) == 0.0
    assert b.paused_until == 130.0


def test_request_heavier_than_budget_goes_at_minute_start():
    """A request heavier than the whole budget is not blocked forever."""
    b = WeightBudget(10)
    assert b.wait_time(40, wall=0.0) == 0.0
    b.charge(40, wall=0.0)
    assert b.wait_time(40, wall=1.0) == pytest.approx(59.0)


def test_weight_budget_window_can_be_shorter_than_a_minute():
    """With window_s=10 the weight resets every 10 wall-clock seconds, not every minute."""
    b = WeightBudget(10, window_s=10.0)
    b.charge(8, wall=21.0)
    assert b.window_end(21.0) == 30.0
    assert b.wait_time(4, wall=25.0) == pytest.approx(5.0)
    assert b.used_at(30.0) == 0 and b.wait_time(4, wall=30.0) == 0.0
    with pytest.raises(ValueError):
        WeightBudget(10, window_s=0.0)
