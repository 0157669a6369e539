"""The health rule (docs/protocol.md, "Health") shared by serve and `pricectl health
--redis`."""

from __future__ import annotations

from pricectl.core.health import judge, pair_state
from pricectl.core.ticks import PriceUpdate


def _u(source: str = "ws", stale: bool = False, ingest_s: float = 100.0) -> PriceUpdate:
    return PriceUpdate(
        pair="BTC/USD",
        symbol="BTCUSDT",
        price="1.0",
        source=source,
        stale=stale,
        ingest_ns=int(ingest_s * 1e9),
    )


def test_pair_state_flips_at_stale_after() -> None:
    """A pair is stale once its age passes stale_after, or when ingest marked it."""
    assert pair_state(_u(), 30.0, now=130.0)["stale"] is False
    assert pair_state(_u(), 30.0, now=130.001)["stale"] is True
    assert pair_state(_u(stale=True), 30.0, now=100.0)["stale"] is True
    assert pair_state(None, 30.0, now=0.0) == {
        "age_s": None,
        "source": None,
        "stale": True,
        "price": None,
    }


def test_judge_ok_degraded_down() -> None:
    """All live is ok; a stale or REST pair degrades; no fresh data or no bus is down."""
    live = pair_state(_u(), 30.0, now=101.0)
    rest = pair_state(_u(source="rest"), 30.0, now=101.0)
    stale = pair_state(_u(), 30.0, now=200.0)
    assert judge({"A": live, "B": live}, bus_connected=True) == ("ok", [])
    assert judge({"A": live, "B": rest}, bus_connected=True) == ("degraded", ["not live: B"])
    assert judge({"A": live, "B": stale}, bus_connected=True) == ("degraded", ["stale: B"])
    assert judge({"A": stale}, bus_connected=True) == ("down", ["no fresh data"])
    assert judge({"A": live}, bus_connected=False) == ("down", ["bus unreachable"])
    assert judge({"A": live}, bus_connected=True, leader=False)[0] == "degraded"


def test_a_missing_pair_list_is_degraded_with_its_reason() -> None:
    """Live pinned pairs but no exchangeInfo yet: degraded, the reason given as is."""
    live = pair_state(_u(), 30.0, now=101.0)
    why = "the exchange's list of pairs is not loaded yet"
    assert judge({"A": live}, bus_connected=True, universe_missing=why) == ("degraded", [why])
    assert judge({"A": live}, bus_connected=True, universe_missing=None) == ("ok", [])


def test_a_bus_slow_to_ping_is_down() -> None:
    """A bus connected but not answering a PING within 1 s makes health down."""
    live = pair_state(_u(), 30.0, now=101.0)
    assert judge({"A": live}, bus_connected=True, bus_responsive=False) == (
        "down",
        ["bus did not answer a PING within 1s"],
    )


def test_no_message_and_no_heartbeat_is_degraded() -> None:
    """A lease holder that sends neither updates nor heartbeats for 3 s: degraded; either
    one recent enough keeps it ok; no holder at all is degraded whatever the ages."""
    live = pair_state(_u(), 30.0, now=101.0)
    pairs = {"A": live}
    assert judge(pairs, bus_connected=True, message_age=0.5, heartbeat_age=9.0)[0] == "ok"
    assert judge(pairs, bus_connected=True, message_age=9.0, heartbeat_age=0.5)[0] == "ok"
    assert judge(pairs, bus_connected=True, message_age=3.5, heartbeat_age=None) == (
        "degraded",
        ["no bus message and no leader heartbeat for 3s"],
    )
    assert judge(pairs, bus_connected=True, leader=False, message_age=0.1, heartbeat_age=0.1) == (
        "degraded",
        ["no ingest leader holds the lease"],
    )


def test_serve_marks_a_quiet_pair_stale() -> None:
    """quiet (serve has had nothing for stale_after) makes a pair stale whatever its stamp."""
    assert pair_state(_u(), 30.0, now=101.0, quiet=True)["stale"] is True
