"""Demand: pinned plus wanted pairs, idle grace, the cap with eviction, activation rates."""

from __future__ import annotations

import pytest

from pricectl.core.demand import Activations, Demand, DemandPolicy

PINNED = ("BTC/USD", "ETH/USD")


def test_active_is_pinned_then_wanted() -> None:
    """Pinned pairs are always active; a wanted pair joins them."""
    d = Demand(PINNED, DemandPolicy(idle_grace=10.0, refresh=2.0))
    assert d.active(now=0.0) == PINNED
    assert d.want(["SOL/USD", "BTC/USD"], now=1.0) == ["SOL/USD"]
    assert d.want(["SOL/USD"], now=2.0) == []
    assert d.active(now=2.0) == (*PINNED, "SOL/USD")


def test_idle_grace_drops_a_pair_nobody_wants() -> None:
    """A pair last wanted ``idle_grace`` ago is no longer active, and expire forgets it."""
    d = Demand(PINNED, DemandPolicy(idle_grace=10.0, refresh=2.0))
    d.want(["SOL/USD"], now=0.0)
    assert "SOL/USD" in d.active(now=9.9)
    assert "SOL/USD" not in d.active(now=10.0)
    assert d.expire(now=10.0) == ["SOL/USD"]
    assert d.wanted == {}


def test_cap_evicts_the_least_recently_wanted() -> None:
    """Over max_pairs, the oldest wanted pairs are left out; pinned ones never."""
    d = Demand(PINNED, DemandPolicy(idle_grace=100.0, refresh=2.0, max_pairs=4))
    d.want(["A/USD"], now=1.0)
    d.want(["B/USD"], now=2.0)
    d.want(["C/USD"], now=3.0)
    assert d.active(now=3.0) == (*PINNED, "B/USD", "C/USD")
    d.want(["A/USD"], now=4.0)  # wanted again: the newest now
    assert d.active(now=4.0) == (*PINNED, "A/USD", "C/USD")


def test_admit_refuses_only_when_every_slot_is_watched() -> None:
    """A new pair may evict an idle one, never a pair watched now."""
    policy = DemandPolicy(idle_grace=100.0, refresh=2.0, max_pairs=3)
    d = Demand(PINNED, policy)
    d.want(["A/USD"], now=0.0)
    assert d.admit("B/USD", now=1.0) is not None  # A/USD is watched: no room
    assert "exchange.max_pairs" in (d.admit("B/USD", now=1.0) or "")
    assert d.admit("A/USD", now=1.0) is None  # already wanted
    assert d.admit("BTC/USD", now=1.0) is None  # pinned
    later = policy.busy_window + 0.5  # A/USD no longer refreshed: idle, may be evicted
    assert d.admit("B/USD", now=later) is None


def test_a_pair_still_renewed_never_drops_out_however_short_idle_grace_is() -> None:
    """idle_grace shorter than a renewal round: a pair wanted within busy_window stays
    active (a serve renews it every refresh), and drops out once the renewals stop."""
    policy = DemandPolicy(idle_grace=0.001, refresh=0.0005)
    assert policy.expiry == policy.busy_window > policy.idle_grace
    d = Demand(PINNED, policy)
    d.want(["ETH/BTC"], now=100.0)
    # The leader reads the set a whole refresh (and a late one) after the renewal.
    for later in (0.001, 0.01, 0.5, policy.busy_window - 0.01):
        assert "ETH/BTC" in d.active(now=100.0 + later)
        assert d.expire(now=100.0 + later) == []
    assert "ETH/BTC" not in d.active(now=100.0 + policy.busy_window)
    assert d.expire(now=100.0 + policy.busy_window) == ["ETH/BTC"]
    # A long grace is the expiry itself.
    assert DemandPolicy(idle_grace=60.0, refresh=5.0).expiry == 60.0


def test_replace_takes_the_cluster_set_without_pinned() -> None:
    """The bus's whole set replaces ours; pinned pairs are not wanted entries."""
    d = Demand(PINNED, DemandPolicy())
    d.replace({"BTC/USD": 5.0, "X/USD": 4.0})
    assert d.wanted == {"X/USD": 4.0}


def test_policy_refuses_bad_values() -> None:
    """Bad policies are refused with the field named."""
    with pytest.raises(ValueError, match="idle_grace"):
        DemandPolicy(idle_grace=0.0)
    with pytest.raises(ValueError, match="max_pairs"):
        DemandPolicy(max_pairs=0)
    with pytest.raises(ValueError, match="refresh"):
        DemandPolicy(idle_grace=5.0, refresh=6.0)


def test_activations_per_ip_and_total() -> None:
    """Per address and per process, within a sliding window; all or nothing."""
    a = Activations(DemandPolicy(per_ip=3, total=5, window=10.0))
    assert a.allow("1.1.1.1", 2, now=0.0) is None
    assert a.allow("1.1.1.1", 2, now=1.0) is not None  # 4 > 3, nothing taken
    assert a.allow("1.1.1.1", 1, now=1.0) is None
    why = a.allow("1.1.1.1", 1, now=2.0)
    assert why is not None and "1.1.1.1" in why and "activations_per_ip" in why
    assert a.allow("2.2.2.2", 2, now=2.0) is None
    why = a.allow("3.3.3.3", 1, now=3.0)
    assert why is not None and "on this server" in why
    assert a.refused == {"per_ip": 2, "total": 1}
    assert a.retry_after("1.1.1.1", now=3.0) == pytest.approx(7.0)
    assert a.allow("1.1.1.1", 1, now=10.5) is None  # the first two have left the window
    a.prune(now=100.0)
    assert a.allow("9.9.9.9", 0, now=100.0) is None
