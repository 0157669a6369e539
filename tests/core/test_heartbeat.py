"""Idle connections and stale pairs: the flips happen exactly at the threshold."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.heartbeat import HeartbeatPolicy, IdleDetector, Staleness


def test_idle_detector_counts_from_start_then_from_each_frame() -> None:
    """Idle once idle_timeout has passed since started() or the last seen() frame."""
    d = IdleDetector(30.0)
    assert not d.is_idle(1000.0)  # not started: nothing to be idle about
    d.started(0.0)
    assert not d.is_idle(29.9) and d.is_idle(30.0)
    d.seen(25.0)
    assert d.last_seen == 25.0 and d.deadline() == 55.0
    assert not d.is_idle(54.9) and d.is_idle(55.0)


def test_staleness_of_unknown_and_seen_pairs() -> None:
    """A never-seen pair is stale with no age; a seen one has an age and flips at stale_after."""
    s = Staleness(30.0)
    assert s.is_stale("BTC/USD", 0.0) and s.age("BTC/USD", 0.0) is None
    s.seen("BTC/USD", 5.0)
    assert s.age("BTC/USD", 20.0) == 15.0
    assert not s.is_stale("BTC/USD", 34.999)
    assert s.is_stale("BTC/USD", 35.0)
    assert s.stale_pairs(["ETH/USD", "BTC/USD"], 20.0) == ["ETH/USD"]
    assert s.stale_pairs(["ETH/USD", "BTC/USD"], 35.0) == ["ETH/USD", "BTC/USD"]


def test_a_new_update_makes_a_stale_pair_fresh() -> None:
    """seen() after going stale makes the pair fresh again."""
    s = Staleness(10.0)
    s.seen("BTC/USD", 0.0)
    assert s.is_stale("BTC/USD", 10.0)
    s.seen("BTC/USD", 10.0)
    assert not s.is_stale("BTC/USD", 10.0) and s.stale_at("BTC/USD") == 20.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_limits_must_be_positive_and_finite(bad: float) -> None:
    """A zero, negative, infinite or NaN limit is refused."""
    with pytest.raises(ValueError):
        Staleness(bad)
    with pytest.raises(ValueError):
        IdleDetector(bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_policy_limits_must_be_positive_and_finite(bad: float) -> None:
    """HeartbeatPolicy refuses the same limits, naming the field."""
    with pytest.raises(ValueError, match="heartbeat idle_timeout must be"):
        HeartbeatPolicy(idle_timeout=bad)
    with pytest.raises(ValueError, match="heartbeat stale_after must be"):
        HeartbeatPolicy(stale_after=bad)
    assert HeartbeatPolicy() == HeartbeatPolicy(idle_timeout=30.0, stale_after=30.0)


_times = st.floats(min_value=0.0, max_value=1e9)
_limits = st.floats(min_value=1e-3, max_value=1e6)


@given(last=_times, limit=_limits)
def test_staleness_flips_exactly_at_the_threshold(last: float, limit: float) -> None:
    """Property: fresh one float-step before last+stale_after, stale exactly at it."""
    s = Staleness(limit)
    s.seen("BTC/USD", last)
    threshold = last + limit
    assert s.is_stale("BTC/USD", threshold)
    before = math.nextafter(threshold, -math.inf)
    if before >= last:
        assert not s.is_stale("BTC/USD", before)


@given(last=_times, limit=_limits)
def test_idle_flips_exactly_at_the_threshold(last: float, limit: float) -> None:
    """Property: not idle one float-step before last+idle_timeout, idle exactly at it."""
    d = IdleDetector(limit)
    d.seen(last)
    threshold = last + limit
    assert d.is_idle(threshold)
    assert not d.is_idle(math.nextafter(threshold, -math.inf))


@given(
    updates=st.lists(st.tuples(st.sampled_from(["A/B", "C/D"]), _times), max_size=30),
    now=_times,
    limit=_limits,
)
def test_stale_pairs_agrees_with_is_stale(
    updates: list[tuple[str, float]], now: float, limit: float
) -> None:
    """Property: stale_pairs is exactly the pairs for which is_stale holds."""
    s = Staleness(limit)
    for pair, t in updates:
        s.seen(pair, t)
    pairs = ["A/B", "C/D", "E/F"]
    assert s.stale_pairs(pairs, now) == [p for p in pairs if s.is_stale(p, now)]
