"""The reconnect schedule: exact sequences with a pinned ``rand``, and its invariants."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.backoff import Backoff, BackoffPolicy, delays
from pricectl.core.policy import PolicyError


def _seq(values: list[float]) -> Callable[[], float]:
    """A ``rand`` that returns ``values`` in turn, then repeats the last forever."""
    it: Iterator[float] = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


def test_delays_with_max_jitter_double_up_to_the_cap() -> None:
    """At the top of the jitter range the delays are 1, 2, 4, ... and stop growing at 60 s."""
    got = list(itertools.islice(delays(BackoffPolicy(), rand=lambda: 1.0), 9))
    assert got == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_delays_scale_each_cap_by_rand() -> None:
    """Full jitter: delay n is rand() * cap(n), with rand injected."""
    rand = _seq([0.5, 0.25, 0.0, 0.75])
    got = list(itertools.islice(delays(BackoffPolicy(initial=2.0, max=10.0), rand), 5))
    assert got == [1.0, 1.0, 0.0, 7.5, 7.5]


def test_backoff_next_delay_follows_the_schedule_and_counts_attempts() -> None:
    """Backoff.next_delay walks the same schedule and counts attempts."""
    b = Backoff(BackoffPolicy(initial=1.0, max=8.0), rand=lambda: 0.5)
    got = [b.next_delay(now=float(t)) for t in range(6)]
    assert got == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.attempt == 6


def test_healthy_period_restarts_the_schedule() -> None:
    """A connection up for at least reset_after makes the next drop start from initial."""
    b = Backoff(BackoffPolicy(reset_after=60.0), rand=lambda: 0.5)
    assert [b.next_delay(0.0), b.next_delay(1.0), b.next_delay(3.0)] == [0.5, 1.0, 2.0]
    b.connected(now=10.0)
    assert b.next_delay(now=70.0) == 0.5
    assert b.attempt == 1


def test_short_lived_connection_keeps_growing_the_delay() -> None:
    """A connection that drops before reset_after does not reset the schedule."""
    b = Backoff(BackoffPolicy(reset_after=60.0), rand=lambda: 0.5)
    b.next_delay(0.0)
    b.next_delay(1.0)
    b.connected(now=10.0)
    assert b.next_delay(now=69.9) == 2.0
    assert b.connected_at is None


def test_reset_restarts_from_initial() -> None:
    """reset() makes the next delay the first one again."""
    b = Backoff(BackoffPolicy(), rand=lambda: 0.5)
    for t in range(5):
        b.next_delay(float(t))
    b.reset()
    assert b.attempt == 0
    assert b.next_delay(10.0) == 0.5


def test_huge_attempt_counts_do_not_overflow() -> None:
    """Thousands of attempts stay at the cap instead of overflowing the float."""
    policy = BackoffPolicy(initial=1.0, max=60.0, multiplier=10.0)
    assert policy.cap(5000) == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"initial": 0.0},
        {"max": -1.0},
        {"max": 0.5},
        {"multiplier": 0.5},
        {"max": float("nan")},
        {"max": float("inf")},
        {"reset_after": float("nan")},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """Zero, negative, shrinking, infinite or NaN parameters are refused at construction."""
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_policy_names_each_refused_field() -> None:
    """Every broken rule is named with its field; max is compared with initial."""
    with pytest.raises(PolicyError) as err:
        BackoffPolicy(initial=2.0, max=0.5, multiplier=0.0)
    assert str(err.value) == (
        "backoff max must be at least initial (2s), got 500ms; "
        "backoff multiplier must be >= 1, got 0.0"
    )


@st.composite
def _policies(draw: st.DrawFn) -> BackoffPolicy:
    """Any valid policy: 0 < initial <= max, multiplier >= 1."""
    initial = draw(st.floats(min_value=0.0, max_value=1e6, exclude_min=True))
    return BackoffPolicy(
        initial=initial,
        max=draw(st.floats(min_value=initial, max_value=1e6)),
        multiplier=draw(st.floats(min_value=1.0, max_value=1e3)),
        reset_after=draw(st.floats(min_value=0.0, max_value=1e6)),
    )


_rands = st.lists(
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1, max_size=50
)


@given(policy=_policies(), values=_rands, steps=st.integers(min_value=1, max_value=300))
def test_delays_never_negative_never_above_cap(
    policy: BackoffPolicy, values: list[float], steps: int
) -> None:
    """Property: every delay of any policy and rand sequence is within [0, max]."""
    for d in itertools.islice(delays(policy, _seq(values)), steps):
        assert 0.0 <= d <= policy.max


@given(
    policy=_policies(),
    values=_rands,
    events=st.lists(
        st.tuples(st.sampled_from(["drop", "up", "reset"]), st.floats(0.0, 1e4)), max_size=200
    ),
)
def test_backoff_never_negative_never_above_cap(
    policy: BackoffPolicy, values: list[float], events: list[tuple[str, float]]
) -> None:
    """Property: any interleaving of drops, connects and resets yields delays in [0, max]."""
    b = Backoff(policy, _seq(values))
    now = 0.0
    for kind, step in events:
        now += step
        if kind == "drop":
            assert 0.0 <= b.next_delay(now) <= policy.max
        elif kind == "up":
            b.connected(now)
        else:
            b.reset()


@given(out_of_range=st.floats(allow_nan=False))
def test_a_misbehaving_rand_still_respects_the_cap(out_of_range: float) -> None:
    """Property: even a rand outside [0, 1) cannot push a delay outside [0, max]."""
    b = Backoff(BackoffPolicy(), rand=lambda: out_of_range)
    for t in range(10):
        assert 0.0 <= b.next_delay(float(t)) <= 60.0
