"""The simulator's feed over real sockets: the walk's streams, garbage frames, replay."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from pricectl.core.binance import FrameParser, PriceEvent
from pricectl.core.pairs import PairMap
from pricectl.simulator import Simulator
from tests.simulator.client import (
    AGG_KEYS,
    BOOK_KEYS,
    MINI_KEYS,
    TICKER_KEYS,
    TRADE_KEYS,
    admin,
    recv_json,
    start_sim,
    ws_connect,
)
from tests.waiting import UNIT, until

REAL = Path(__file__).resolve().parent.parent / "data" / "binance" / "real"


async def test_raw_ticker_has_all_23_fields_every_second(sim: Simulator) -> None:
    """/ws/btcusdt@ticker sends bare 24hrTicker events with the 23 fields, 1000 ms apart."""
    async with ws_connect(sim.ws_url + "/ws/btcusdt@ticker") as ws:
        first = await recv_json(ws)
        second = await recv_json(ws)
    for event in (first, second):
        assert list(event) == TICKER_KEYS
        assert event["e"] == "24hrTicker" and event["s"] == "BTCUSDT"
        assert all(isinstance(event[k], str) for k in "pPwxcQbBaAohlvq")
        assert all(isinstance(event[k], int) for k in "EOCFLn")
        assert len(event["c"].split(".")[1]) == 8
        assert event["C"] - event["O"] == 86_400_000
    assert 800 <= second["E"] - first["E"] <= 1300


async def test_combined_streams_carry_every_documented_field(sim: Simulator) -> None:
    """A combined URL wraps each kind in the envelope; each kind has its documented keys."""
    names = ["ethusdt@bookTicker", "ethusdt@aggTrade", "ethusdt@trade", "ethusdt@miniTicker"]
    async with ws_connect(sim.ws_url + "/stream?streams=" + "/".join(names)) as ws:
        seen: dict[str, Any] = {}
        while len(seen) < len(names):
            msg = await recv_json(ws)
            assert set(msg) == {"stream", "data"}
            seen.setdefault(msg["stream"], msg["data"])
    assert list(seen["ethusdt@bookTicker"]) == BOOK_KEYS
    assert list(seen["ethusdt@aggTrade"]) == AGG_KEYS
    assert list(seen["ethusdt@trade"]) == TRADE_KEYS
    assert list(seen["ethusdt@miniTicker"]) == MINI_KEYS
    assert seen["ethusdt@trade"]["s"] == "ETHUSDT"


async def test_trade_rate_is_the_configured_rate() -> None:
    """bookTicker frames arrive at about trade_rate per second per symbol."""
    s = await start_sim(trade_rate=50.0)
    try:
        async with ws_connect(s.ws_url + "/ws/btcusdt@bookTicker") as ws:
            await recv_json(ws)
            t0 = time.monotonic()
            for _ in range(50):
                await recv_json(ws)
            elapsed = time.monotonic() - t0
    finally:
        await s.stop()
    assert 0.6 <= elapsed <= 1.6 * UNIT


async def test_simulated_frames_parse_into_updates(sim: Simulator) -> None:
    """The parser turns simulated ticker frames into updates for the subscribed pair."""
    parser = FrameParser(PairMap.build(["BTC/USD"], {"USD": "USDT"}), "ticker")
    async with ws_connect(sim.ws_url + "/stream?streams=btcusdt@ticker") as ws:
        events = parser.parse(await ws.recv(), time.time_ns())
    assert isinstance(events[0], PriceEvent) and events[0].update.pair == "BTC/USD"


async def test_mini_ticker_array_lists_changed_symbols() -> None:
    """!miniTicker@arr delivers an array of 24hrMiniTicker for the symbols that moved."""
    s = await start_sim(symbols=("BTCUSDT", "ETHUSDT"), ticker_interval=0.2)
    try:
        async with ws_connect(s.ws_url + "/ws/!miniTicker@arr") as ws:
            arr = await recv_json(ws)
    finally:
        await s.stop()
    assert isinstance(arr, list) and {m["s"] for m in arr} == {"BTCUSDT", "ETHUSDT"}
    assert all(list(m) == MINI_KEYS for m in arr)


async def test_fault_garbage_frames_interleave_with_good_ones(sim: Simulator) -> None:
    """garbage:RATE sends bad frames the parser skips and counts while good ones flow."""
    parser = FrameParser(PairMap.build(["BTC/USD"], {"USD": "USDT"}), "trade")
    await admin(sim, garbage=50)
    async with ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        for _ in range(60):
            parser.parse(await asyncio.wait_for(ws.recv(), 5 * UNIT), time.time_ns())
    assert parser.counts["parsed:trade"] > 0
    bad = sum(n for k, n in parser.counts.items() if not k.startswith("parsed:"))
    assert bad > 0


async def test_replay_plays_a_recording_to_subscribers() -> None:
    """--replay sends each recorded frame verbatim to connections subscribed to its stream."""
    path = REAL / "cryptofeed-binance-spot-2021-10-12-allstreams.jsonl"
    lines = path.read_text().splitlines()
    want = [line for line in lines if '"stream":"nknusdt@bookTicker"' in line]
    s = await start_sim(replay=str(path), speed=0)
    try:
        async with ws_connect(s.ws_url + "/stream?streams=nknusdt@bookTicker") as ws:
            got = [await asyncio.wait_for(ws.recv(), 5 * UNIT) for _ in want]
            await until(lambda: s.replay_done, 5, "replay done")
            assert s.state()["replay"] == {"sent": 265, "total": 265, "done": True}
    finally:
        await s.stop()
    assert got == want


async def test_replay_keeps_recorded_timing() -> None:
    """With its .recv_ts.txt the replay keeps the recorded gaps, scaled by speed."""
    path = REAL / "cryptofeed-binance-spot-2021-04-05.jsonl"
    times = [float(x) for x in path.with_name(path.stem + ".recv_ts.txt").read_text().split()]
    n = next(i for i, t in enumerate(times) if t - times[0] > 2.0)  # frames in the first 2 s
    s = await start_sim(replay=str(path), speed=4.0)
    try:
        async with ws_connect(s.ws_url + "/ws") as ws:
            t0 = time.monotonic()
            raw = [await asyncio.wait_for(ws.recv(), 5 * UNIT) for _ in range(n + 1)]
            elapsed = time.monotonic() - t0
    finally:
        await s.stop()
    assert 0.4 <= elapsed <= 1.5 * UNIT  # 2 s of recording at 4x
    first = json.loads(path.read_text().splitlines()[0])
    assert json.loads(raw[0]) == first["data"]  # raw connection: the bare payload
