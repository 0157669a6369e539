"""Leader lease timing: renew cadence, step-down deadline, standby jitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.lease import LeaseClock, LeasePolicy
from pricectl.core.policy import PolicyError


def test_standby_has_nothing_to_renew_or_give_up() -> None:
    """Before acquiring, the clock neither renews nor steps down."""
    c = LeaseClock()
    assert not c.held and c.since is None
    assert not c.should_renew(100.0) and not c.must_step_down(100.0)
    assert c.next_wakeup(5.0) == 7.0


def test_leader_renews_every_retry_period() -> None:
    """After acquiring at t=0, renew is due at t=2, then 2 s after each attempt."""
    c = LeaseClock(LeasePolicy())
    c.acquired(0.0)
    assert c.held and c.since == 0.0
    assert not c.should_renew(1.99) and c.should_renew(2.0)
    c.renewed(2.0)
    assert not c.should_renew(3.0) and c.should_renew(4.0)
    c.renew_failed(4.0)
    assert not c.should_renew(5.0) and c.should_renew(6.0)


def test_steps_down_when_no_renewal_succeeds_within_the_deadline() -> None:
    """Failed renewals for renew_deadline since the last success mean step down, exactly then."""
    c = LeaseClock(LeasePolicy(ttl=15.0, renew_deadline=10.0, retry=2.0))
    c.acquired(0.0)
    c.renewed(2.0)
    for t in (4.0, 6.0, 8.0, 10.0):
        c.renew_failed(t)
    assert c.renew_failures == 4 and c.last_renew_ok == 2.0
    assert not c.must_step_down(11.99)
    assert c.must_step_down(12.0)
    assert c.step_down_at() == 12.0


def test_a_success_moves_the_deadline_and_clears_failures() -> None:
    """A successful renew resets the failure count and pushes the step-down deadline."""
    c = LeaseClock()
    c.acquired(0.0)
    c.renew_failed(2.0)
    c.renewed(4.0)
    assert c.renew_failures == 0
    assert not c.must_step_down(13.9) and c.must_step_down(14.0)


def test_next_wakeup_is_the_next_renew_or_the_deadline() -> None:
    """next_wakeup is the earlier of the next renew and the step-down deadline, never past."""
    c = LeaseClock()
    c.acquired(0.0)
    assert c.next_wakeup(0.5) == 2.0
    assert c.next_wakeup(3.0) == 3.0  # overdue renew: now


def test_released_goes_back_to_standby() -> None:
    """released() forgets the lease so nothing is renewed."""
    c = LeaseClock()
    c.acquired(0.0)
    c.released()
    assert not c.held and not c.should_renew(10.0) and not c.must_step_down(100.0)


def test_standby_delay_is_retry_plus_up_to_half() -> None:
    """standby_delay = retry * (1 + 0.5 * rand)."""
    c = LeaseClock(LeasePolicy(retry=2.0))
    assert c.standby_delay(lambda: 0.0) == 2.0
    assert c.standby_delay(lambda: 0.5) == 2.5


def test_policy_validation() -> None:
    """Impossible orderings, a zero retry and an infinite ttl are refused."""
    assert LeasePolicy().ttl_ms == 15000
    with pytest.raises(ValueError, match="shorter than ttl"):
        LeasePolicy(ttl=10.0, renew_deadline=10.0)
    with pytest.raises(ValueError, match="shorter than renew_deadline"):
        LeasePolicy(retry=10.0)
    with pytest.raises(ValueError, match=r"^lease retry must be greater than 0$"):
        LeasePolicy(retry=0.0)
    with pytest.raises(ValueError, match=r"^lease ttl must be finite, got inf$"):
        LeasePolicy(ttl=float("inf"))


def test_every_broken_step_of_the_chain_is_reported() -> None:
    """ttl > renew_deadline > retry: both broken steps, each with the value it is below."""
    with pytest.raises(PolicyError) as err:
        LeasePolicy(ttl=5.0, renew_deadline=10.0, retry=12.0)
    assert [(p.field, p.message("leader.")) for p in err.value.problems] == [
        ("renew_deadline", "must be shorter than leader.ttl (5s), got 10s"),
        ("retry", "must be shorter than leader.renew_deadline (10s), got 12s"),
    ]


@given(
    events=st.lists(st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=5.0)), max_size=100)
)
def test_never_leads_past_the_deadline(events: list[tuple[bool, float]]) -> None:
    """Property: at any time, must_step_down is true iff the last success is renew_deadline old."""
    policy = LeasePolicy()
    c = LeaseClock(policy)
    c.acquired(0.0)
    now, last_ok = 0.0, 0.0
    for ok, step in events:
        now += step
        assert c.must_step_down(now) == (now >= last_ok + policy.renew_deadline)
        assert c.next_wakeup(now) >= now
        if ok:
            c.renewed(now)
            last_ok = now
        else:
            c.renew_failed(now)


@given(r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_standby_delay_bounds(r: float) -> None:
    """Property: standby_delay stays within [retry, 1.5 * retry]."""
    c = LeaseClock()
    assert 2.0 <= c.standby_delay(lambda: r) <= 3.0


def test_may_publish_only_while_the_last_renew_is_recent() -> None:
    """A leader may publish until renew_deadline after its last success, never as standby."""
    c = LeaseClock(LeasePolicy())
    assert not c.may_publish(0.0)
    c.acquired(0.0)
    assert c.may_publish(9.99) and not c.may_publish(10.0)
    c.renewed(8.0)
    assert c.may_publish(17.99) and not c.may_publish(18.0)
    c.released()
    assert not c.may_publish(1.0)


def test_standbys_watch_often_and_jittered() -> None:
    """watch is 0.3 s by default (retry / 2 if shorter); the delay adds up to 50%."""
    assert LeasePolicy().watch == 0.3
    assert LeasePolicy(ttl=3, renew_deadline=2, retry=0.4).watch == 0.2
    c = LeaseClock(LeasePolicy())
    assert c.watch_delay(lambda: 0.0) == 0.3
    assert c.watch_delay(lambda: 1.0) == 0.3 * 1.5
