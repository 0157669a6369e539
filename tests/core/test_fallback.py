"""The per-pair cascade WS -> REST -> CACHE, driven by events at explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.fallback import Cascade, FallbackPolicy, Source

BTC, ETH = "BTC/USD", "ETH/USD"
POLICY = FallbackPolicy(rest_poll_interval=2.0, rest_failures_before_cache=3)


def _live(now: float = 0.0) -> Cascade:
    """A cascade with WS healthy and both pairs updated at ``now``."""
    c = Cascade([BTC, ETH], POLICY)
    c.ws_state(True, now)
    c.ws_update(BTC, now)
    c.ws_update(ETH, now)
    return c


def test_start_up_polls_rest_for_every_pair() -> None:
    """Before any WS data, every pair is on REST, stale, and due for a poll at once."""
    c = Cascade([BTC, ETH], POLICY)
    assert c.sources(0.0) == {BTC: Source.REST, ETH: Source.REST}
    assert c.is_stale(BTC, 0.0)
    assert c.rest_due(0.0) == [BTC, ETH]
    assert c.rest_due(1.0) == []
    assert c.rest_due(2.0) == [BTC, ETH]


def test_healthy_ws_serves_fresh_pairs_and_needs_no_polling() -> None:
    """With WS healthy and updates flowing, pairs are WS, fresh, and nothing is due."""
    c = _live()
    assert c.source(BTC, 10.0) is Source.WS
    assert not c.is_stale(BTC, 10.0)
    assert c.rest_due(10.0) == [] and c.cache_due(10.0) == []


def test_ws_drop_moves_every_pair_to_rest_immediately() -> None:
    """When WS goes unhealthy, every pair is REST and due for a poll at once."""
    c = _live()
    c.ws_state(False, 5.0)
    assert c.sources(5.0) == {BTC: Source.REST, ETH: Source.REST}
    assert not c.is_stale(BTC, 5.0)  # the WS price of t=0 is still fresh
    assert c.rest_due(5.0) == [BTC, ETH]


def test_a_pair_silent_on_a_healthy_ws_falls_to_rest_alone() -> None:
    """A pair with no WS update for stale_after leaves WS alone: published stale at once,
    polled on REST, and back to fresh on REST's first answer; the others stay on WS."""
    c = _live()
    c.ws_update(ETH, 20.0)
    assert c.source(BTC, 29.9) is Source.WS
    assert c.source(BTC, 30.0) is Source.CACHE and c.is_stale(BTC, 30.0)
    assert c.source(ETH, 30.0) is Source.WS
    assert c.rest_due(30.0) == [BTC]
    assert c.cache_due(30.0) == [BTC]
    c.rest_success(BTC, 30.2)
    assert c.source(BTC, 30.2) is Source.REST and not c.is_stale(BTC, 30.2)


def test_rest_success_keeps_the_pair_fresh() -> None:
    """REST successes keep a pair fresh on REST beyond the WS staleness window."""
    c = _live()
    c.ws_state(False, 1.0)
    for t in range(1, 60, 2):
        assert c.rest_due(float(t)) == [BTC, ETH]
        c.rest_success(BTC, float(t))
        c.rest_success(ETH, float(t))
    assert c.source(BTC, 60.0) is Source.REST and not c.is_stale(BTC, 60.0)
    assert c.is_stale(BTC, 89.0)


def test_three_rest_failures_fall_to_cache_and_a_success_recovers() -> None:
    """After rest_failures_before_cache failed polls the pairs are CACHE and stale; one success
    brings them back to REST."""
    c = _live()
    c.ws_state(False, 5.0)
    for t in (5.0, 7.0):
        assert c.rest_due(t) == [BTC, ETH]
        c.rest_failure(t)
        assert c.source(BTC, t) is Source.REST
    assert c.rest_due(9.0) == [BTC, ETH]
    c.rest_failure(9.0)
    assert c.rest_failures == 3
    assert c.source(BTC, 9.0) is Source.CACHE
    assert c.is_stale(BTC, 9.0)  # no working source: never shown as live
    c.rest_success(BTC, 11.0)
    assert c.sources(11.0) == {BTC: Source.REST, ETH: Source.REST}
    assert not c.is_stale(BTC, 11.0)


def test_cache_republishes_at_most_once_per_poll_interval() -> None:
    """CACHE pairs are due for a stale re-publish at once, then every rest_poll_interval."""
    c = _live()
    c.ws_state(False, 0.0)
    for _ in range(3):
        c.rest_failure(0.0)
    assert c.cache_due(0.0) == [BTC, ETH]
    assert c.cache_due(1.9) == []
    assert c.cache_due(2.0) == [BTC, ETH]
    # REST keeps being tried at the same pace, so recovery is noticed.
    assert c.rest_due(2.0) == [BTC, ETH]


def test_ws_coming_back_takes_over_from_cache() -> None:
    """When WS is healthy again and updates arrive, pairs leave CACHE for WS."""
    c = _live()
    c.ws_state(False, 0.0)
    for _ in range(3):
        c.rest_failure(0.0)
    c.ws_state(True, 40.0)
    c.ws_update(BTC, 40.0)
    assert c.source(BTC, 40.0) is Source.WS and c.source(ETH, 40.0) is Source.CACHE
    assert c.cache_due(40.0) == [ETH]
    assert c.rest_due(40.0) == [ETH]


def test_retry_after_pauses_rest_polling() -> None:
    """A rate-limit Retry-After stops REST polls until it has passed."""
    c = Cascade([BTC], POLICY)
    assert c.rest_due(0.0) == [BTC]
    c.rest_failure(0.0, retry_after=10.0)
    assert c.rest_due(5.0) == []
    assert c.next_due(5.0) == 10.0
    assert c.rest_due(10.0) == [BTC]


def test_next_due_points_at_the_next_decision() -> None:
    """next_due is the WS staleness flip when live, and the next poll when on REST."""
    c = _live(now=0.0)
    assert c.next_due(1.0) == 30.0
    c.ws_state(False, 1.0)
    assert c.next_due(1.0) == 1.0  # polls due now
    c.rest_due(1.0)
    c.rest_success(BTC, 1.5)
    c.rest_success(ETH, 1.5)
    assert c.next_due(1.5) == 3.0


def test_unknown_pair_is_an_error() -> None:
    """Events about a pair the cascade does not track raise KeyError naming the pairs."""
    c = Cascade([BTC], POLICY)
    with pytest.raises(KeyError, match="BTC/USD"):
        c.ws_update("DOGE/USD", 0.0)


def test_stale_after_comes_beside_the_policy() -> None:
    """stale_after (the heartbeat's) decides when a quiet WS pair leaves WS; default 30 s."""
    assert Cascade([BTC], POLICY).stale_after == 30.0
    c = Cascade([BTC], POLICY, stale_after=12.0)
    c.ws_state(True, 0.0)
    c.ws_update(BTC, 0.0)
    assert c.source(BTC, 11.9) is Source.WS and not c.is_stale(BTC, 11.9)
    assert c.source(BTC, 12.0) is Source.CACHE and c.is_stale(BTC, 12.0)
    assert c.next_due(0.0) == 12.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rest_poll_interval": 0.0}, "^fallback rest_poll_interval must be greater than 0$"),
        ({"rest_poll_interval": float("inf")}, "rest_poll_interval must be finite, got inf"),
        ({"rest_failures_before_cache": 0}, "^fallback rest_failures_before_cache must be at"),
    ],
)
def test_policy_validation(kwargs: dict[str, float], message: str) -> None:
    """A zero or infinite poll interval and a zero failure count are refused by name."""
    with pytest.raises(ValueError, match=message):
        FallbackPolicy(**kwargs)


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["ws_up", "ws_down", "ws", "ok", "fail", "rest_due", "cache_due"]),
            st.sampled_from([BTC, ETH]),
            st.floats(min_value=0.0, max_value=5.0),
        ),
        max_size=200,
    )
)
def test_polls_and_republishes_are_spaced_by_the_interval(
    ops: list[tuple[str, str, float]],
) -> None:
    """Property: no pair is handed out for REST or cache twice within rest_poll_interval,
    a WS pair is never polled, and next_due is never in the past."""
    c = Cascade([BTC, ETH], POLICY)
    last_poll: dict[str, float] = {}
    last_cache: dict[str, float] = {}
    now = 0.0
    for op, pair, step in ops:
        now += step
        if op == "ws_up":
            c.ws_state(True, now)
        elif op == "ws_down":
            c.ws_state(False, now)
        elif op == "ws":
            c.ws_update(pair, now)
        elif op == "ok":
            c.rest_success(pair, now)
        elif op == "fail":
            c.rest_failure(now)
        elif op == "rest_due":
            for p in c.rest_due(now):
                assert c.source(p, now) is not Source.WS
                assert p not in last_poll or now - last_poll[p] >= POLICY.rest_poll_interval
                last_poll[p] = now
        else:
            for p in c.cache_due(now):
                assert c.source(p, now) is Source.CACHE
                assert p not in last_cache or now - last_cache[p] >= POLICY.rest_poll_interval
                last_cache[p] = now
        assert c.next_due(now) >= now


def test_a_pair_is_published_stale_at_stale_after_whatever_rest_does() -> None:
    """WS down and REST paused by a long Retry-After (a 418 ban): the pair turns CACHE, due
    for a stale re-publish, exactly at stale_after after its last fresh update."""
    c = _live()  # BTC and ETH fresh from WS at t=0
    c.ws_state(False, 1.0)
    assert c.rest_due(1.0) == [BTC, ETH]
    c.rest_failure(1.2, retry_after=60.0)
    assert c.rest_due(3.0) == []  # paused
    assert c.source(BTC, 29.9) is Source.REST and c.cache_due(29.9) == []
    assert c.next_due(3.0) == 30.0
    assert c.source(BTC, 30.0) is Source.CACHE and c.is_stale(BTC, 30.0)
    assert c.cache_due(30.0) == [BTC, ETH]
    assert c.next_due(30.0) == 32.0  # re-published every rest_poll_interval while stale
    assert c.cache_due(32.0) == [BTC, ETH]


def test_rest_covers_a_pair_while_its_websocket_is_down() -> None:
    """Three drops in a row: REST is due the moment the WebSocket goes down each time and
    every rest_poll_interval while it stays down, so no pair waits for the breaker."""
    c = _live()
    for down in (5.0, 10.0, 15.0):
        c.ws_state(False, down)
        assert c.rest_due(down) == [BTC, ETH]
        c.rest_success(BTC, down)
        c.rest_success(ETH, down)
        assert c.next_due(down) == down + 2.0
        assert c.rest_due(down + 2.0) == [BTC, ETH]
        c.ws_state(True, down + 2.5)
        c.ws_update(BTC, down + 2.5)
        c.ws_update(ETH, down + 2.5)
        assert c.sources(down + 2.5) == {BTC: Source.WS, ETH: Source.WS}


def test_set_pairs_keeps_kept_pairs_and_forgets_removed_ones() -> None:
    """Pairs kept keep their state; an added pair's first poll is one interval away (the
    caller fetched its snapshot); a removed pair is unknown, and re-added starts afresh."""
    c = _live()
    sol = "SOL/USD"
    assert c.set_pairs([BTC, sol], 1.0) == ([sol], [ETH])
    assert c.pairs == (BTC, sol) and c.known == frozenset({BTC, sol})
    assert c.source(BTC, 1.0) is Source.WS
    assert c.rest_due(1.0) == [] and c.rest_due(3.0) == [sol]
    with pytest.raises(KeyError):
        c.source(ETH, 1.0)
    assert c.set_pairs([BTC, sol], 3.5) == ([], [])
    c.set_pairs([BTC, sol, ETH], 4.0)
    assert c.age(ETH, 4.0) is None and c.source(ETH, 4.0) is Source.REST


def test_a_pair_whose_own_connection_is_down_leaves_ws_at_once() -> None:
    """Several connections share the pairs: one down takes only its pairs off WS."""
    c = _live()
    c.ws_state(True, 1.0, down=frozenset({ETH}))
    assert c.source(BTC, 1.0) is Source.WS and c.source(ETH, 1.0) is Source.REST
    assert c.rest_due(1.0) == [ETH]
    c.ws_state(True, 2.0)
    c.ws_update(ETH, 2.0)
    assert c.source(ETH, 2.0) is Source.WS
