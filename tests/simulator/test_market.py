"""The market model with no socket and no loop: lazy symbols, the walk, every stream's payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pricectl.simulator.market import BLOCK_TRADE_EVERY, Market, kline_bounds

DATA = Path(__file__).resolve().parent.parent / "data" / "binance"
REAL = DATA / "real" / "cryptofeed-binance-spot-2021-10-12-allstreams.jsonl"
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


def _real(stream_part: str) -> Any:
    """The data of the first real recorded frame whose stream contains ``stream_part``."""
    for line in REAL.read_text().splitlines():
        frame = json.loads(line)
        if stream_part in frame["stream"]:
            return frame["data"]
    raise AssertionError(stream_part)


def _walk(market: Market, symbol: str, n: int, start: int = T0, dt: int = 100) -> int:
    for i in range(n):
        market.step(symbol, start + i * dt)
    return start + n * dt


def test_symbols_get_state_only_when_used() -> None:
    """A new market holds no symbol state; a step makes the state of that symbol alone."""
    market = Market(0)
    assert len(market.specs) > 1500 and market.states == {}
    market.step("ETHBTC", T0)
    assert list(market.states) == ["ETHBTC"]


def test_the_walk_of_a_seed_is_pinned() -> None:
    """Seed 0's first BTCUSDT trades are what they have always been (price, qty, time, book)."""
    market = Market(0)
    got = [
        (t["p"], t["q"], t["T"], b["b"], b["a"], b["u"])
        for t, _, b in (market.trade("BTCUSDT", T0 + i) for i in range(3))
    ]
    assert got == [
        ("43650.56000000", "0.00058000", T0 - 2, "43650.54000000", "43650.56000000", 1580534478),
        ("43656.63000000", "0.00549000", T0 + 1, "43656.63000000", "43656.65000000", 1580534481),
        ("43657.19000000", "0.00098000", T0 + 2, "43657.19000000", "43657.20000000", 1580534484),
    ]


def test_other_payloads_do_not_change_the_walk() -> None:
    """Asking for klines, windows, depth or averages draws nothing from the walk's generator."""
    plain, busy = Market(3), Market(3)
    for i in range(200):
        now = T0 + i * 50
        plain.step("BTCUSDT", now)
        busy.step("BTCUSDT", now)
        busy.kline("BTCUSDT", "1s", None, now)
        busy.rolling_ticker("BTCUSDT", "1h", now)
        busy.partial_depth("BTCUSDT", 20)
        busy.depth_update("BTCUSDT", 100, now)
        busy.avg_price("BTCUSDT", now)
        busy.reference_price("BTCUSDT", now)
        busy.block_trade("BTCUSDT", now)
        assert busy.trade_event("BTCUSDT", now) == plain.trade_event("BTCUSDT", now)


def test_trade_keeps_its_payloads() -> None:
    """trade() is a step plus its trade, aggTrade and bookTicker payloads, as before."""
    market = Market(1)
    trade, agg, book = market.trade("BTCUSDT", T0)
    assert (trade["e"], agg["e"], book["s"]) == ("trade", "aggTrade", "BTCUSDT")
    assert trade["t"] == agg["f"] == agg["l"] and trade["p"] == agg["p"]
    assert trade["T"] == agg["T"] <= T0


def test_kline_has_the_recorded_shape_and_counts_trades() -> None:
    """A kline has the real frame's keys in order; it counts the trades since it started."""
    market = Market(0)
    market.step("BTCUSDT", T0)
    first = market.kline("BTCUSDT", "1m", None, T0 + 1)
    assert [list(e) for e in first] == [list(_real("@kline_1m"))]
    assert list(first[0]["k"]) == list(_real("@kline_1m")["k"])
    assert first[0]["k"]["n"] == 0 and first[0]["k"]["f"] == -1
    _walk(market, "BTCUSDT", 10, T0 + 10)
    k = market.kline("BTCUSDT", "1m", None, T0 + 2000)[0]["k"]
    st = market.state("BTCUSDT")
    assert k["n"] == 10 and k["L"] == st.trade_id and k["L"] - k["f"] == 9
    assert k["c"] == st.p(st.last) and k["x"] is False
    assert (k["t"], k["T"]) == kline_bounds("1m", None, T0)


def test_kline_closes_then_starts_the_next() -> None:
    """Past its close time a kline is sent once with x true, then the new one at its close price."""
    market = Market(0)
    market.step("BTCUSDT", T0)
    market.kline("BTCUSDT", "1s", None, T0)
    _walk(market, "BTCUSDT", 5, T0 + 100)
    closed, current = market.kline("BTCUSDT", "1s", None, T0 + 1500)
    assert closed["k"]["x"] is True and closed["k"]["n"] == 5
    assert current["k"]["x"] is False and current["k"]["o"] == closed["k"]["c"]
    assert current["k"]["t"] == closed["k"]["T"] + 1
    assert len(market.kline("BTCUSDT", "1s", None, T0 + 1600)) == 1


def test_kline_bounds() -> None:
    """Intervals start on their multiples since the epoch, weeks on Monday, months on the 1st,
    and +08:00 klines on that timezone's boundaries."""
    assert kline_bounds("1m", None, 61_500) == (60_000, 119_999)
    assert kline_bounds("3m", None, T0) == (T0 - T0 % 180_000, T0 - T0 % 180_000 + 179_999)
    assert kline_bounds("1w", None, T0) == (1_699_833_600_000, 1_700_438_399_999)  # Mon 13 Nov
    assert kline_bounds("1M", None, T0) == (1_698_796_800_000, 1_701_388_799_999)  # November
    assert kline_bounds("1M", None, 1_703_980_800_000)[1] == 1_704_067_199_999  # 31 Dec 2023
    start, end = kline_bounds("1d", "+08:00", T0)
    assert (start, end - start) == (1_699_977_600_000, 86_399_999)  # 16:00 UTC
    assert (start + 8 * 3_600_000) % 86_400_000 == 0


def test_rolling_tickers_have_the_documented_shape() -> None:
    """ticker_1h/4h/1d have the documented 17 keys in order and their window's event type."""
    doc = json.loads((DATA / "ws-ticker-1h.json").read_text())
    market = Market(0)
    now = _walk(market, "ETHUSDT", 20)
    for window in ("1h", "4h", "1d"):
        event = market.rolling_ticker("ETHUSDT", window, now)
        assert list(event) == list(doc) and event["e"] == f"{window}Ticker"
        assert event["C"] == now and event["O"] % 60_000 == 0


def test_day_window_is_the_24h_statistics() -> None:
    """ticker_1d carries the figures of @ticker (same open, high, low, last, volume, ids)."""
    market = Market(0)
    now = _walk(market, "ETHUSDT", 20)
    day = market.rolling_ticker("ETHUSDT", "1d", now)
    full = market.ticker("ETHUSDT", now)
    assert [day[k] for k in "pPohlcwvqFLn"] == [full[k] for k in "pPohlcwvqFLn"]


def test_hour_window_counts_from_first_use_and_restarts_when_full() -> None:
    """A 1 h window counts trades from its first use; after an hour it starts again."""
    market = Market(0)
    _walk(market, "ETHUSDT", 3)
    first = market.rolling_ticker("ETHUSDT", "1h", T0 + 1000)
    assert first["n"] == 0 and first["v"] == "0.00000000"
    now = _walk(market, "ETHUSDT", 7, T0 + 2000)
    counted = market.rolling_ticker("ETHUSDT", "1h", now)
    assert counted["n"] == 7 and counted["O"] == first["O"]
    later = market.rolling_ticker("ETHUSDT", "1h", first["O"] + 3_600_000)
    assert later["n"] == 0 and later["O"] == first["O"] + 3_600_000
    assert later["o"] == counted["c"]


def test_average_and_reference_price_shapes() -> None:
    """avgPrice has the documented keys and REST's figure; referencePrice has e, s, r, t."""
    doc = json.loads((DATA / "ws-avgPrice.json").read_text())
    market = Market(0)
    now = _walk(market, "BTCUSDT", 5)
    event = market.avg_price("BTCUSDT", now)
    assert list(event) == list(doc) and event["i"] == "5m"
    assert event["w"] == market.rest_avg_price("BTCUSDT", now)["price"]
    assert event["T"] == market.state("BTCUSDT").trade_time
    assert list(market.reference_price("BTCUSDT", now)) == ["e", "s", "r", "t"]


def test_partial_depth_levels_step_out_from_the_best_prices() -> None:
    """depth<N> has N bids below the best bid and N asks above the best ask, one tick apart."""
    market = Market(0)
    _walk(market, "BTCUSDT", 5)
    st = market.state("BTCUSDT")
    book = market.partial_depth("BTCUSDT", 10)
    assert list(book) == ["lastUpdateId", "bids", "asks"] and book["lastUpdateId"] == st.book_id
    assert book["bids"][0] == [st.p(st.bid), st.q(st.bid_qty)]
    assert book["asks"][0] == [st.p(st.ask), st.q(st.ask_qty)]
    assert [b[0] for b in book["bids"]] == [st.p(st.bid - k * st.tick) for k in range(10)]
    assert [a[0] for a in book["asks"]] == [st.p(st.ask + k * st.tick) for k in range(10)]


def test_depth_updates_chain_and_wait_for_a_change() -> None:
    """Diff-depth events have the recorded keys; each U is the last u + 1; none if no change."""
    market = Market(0)
    _walk(market, "BTCUSDT", 1)
    first = market.depth_update("BTCUSDT", 1000, T0)
    assert first is not None and list(first) == list(_real("@depth@100ms"))
    assert market.depth_update("BTCUSDT", 1000, T0 + 1) is None
    _walk(market, "BTCUSDT", 3, T0 + 2)
    second = market.depth_update("BTCUSDT", 1000, T0 + 10)
    assert second is not None and second["U"] == first["u"] + 1 <= second["u"]
    fast = market.depth_update("BTCUSDT", 100, T0 + 10)  # each speed chains on its own
    assert fast is not None and fast["u"] == second["u"]


def test_block_trades_come_every_fiftieth_trade() -> None:
    """A block trade is due on every BLOCK_TRADE_EVERY-th trade id, with its own rising id."""
    market = Market(0)
    seen = []
    for i in range(3 * BLOCK_TRADE_EVERY):
        market.step("BTCUSDT", T0 + i)
        event = market.block_trade("BTCUSDT", T0 + i)
        if event is not None:
            seen.append(event)
    assert len(seen) == 3
    assert [list(e) for e in seen] == [["e", "E", "s", "t", "p", "q", "T", "m"]] * 3
    assert seen[1]["t"] == seen[0]["t"] + 1


def test_changed_symbols_are_those_stepped_since_the_last_take() -> None:
    """take_changed lists the symbols moved since the last call, once each, then none."""
    market = Market(0)
    for symbol in ("ETHUSDT", "BTCUSDT", "ETHUSDT"):
        market.step(symbol, T0)
    assert market.take_changed() == ["ETHUSDT", "BTCUSDT"]
    assert market.take_changed() == []
    market.step("BTCUSDT", T0 + 1)
    assert market.take_changed() == ["BTCUSDT"]
