"""Any listed symbol on demand, over real sockets: every accepted stream is fed, and only those."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

import aiohttp

from pricectl.core.binance import STREAM_TYPES, parse_stream
from tests.simulator.client import get, recv_json, reply, start_sim, ws_connect
from tests.waiting import UNIT, until

#: One stream of every type, and the event each carries (None: no ``e``, a book).
EVERY_TYPE: dict[str, str | None] = {
    "btcusdt@trade": "trade",
    "btcusdt@aggTrade": "aggTrade",
    "btcusdt@blockTrade": "blockTrade",
    "btcusdt@bookTicker": None,
    "btcusdt@ticker": "24hrTicker",
    "btcusdt@miniTicker": "24hrMiniTicker",
    "btcusdt@ticker_1h": "1hTicker",
    "btcusdt@ticker_4h": "4hTicker",
    "btcusdt@ticker_1d": "1dTicker",
    "btcusdt@avgPrice": "avgPrice",
    "btcusdt@referencePrice": "referencePrice",
    "btcusdt@kline_1s": "kline",
    "btcusdt@kline_1m": "kline",
    "btcusdt@kline_4h@+08:00": "kline",
    "btcusdt@depth": "depthUpdate",
    "btcusdt@depth@100ms": "depthUpdate",
    "btcusdt@depth5": None,
    "btcusdt@depth10@100ms": None,
    "!miniTicker@arr": "24hrMiniTicker",
    "!ticker_1h@arr": "1hTicker",
}


async def _collect(ws: Any, wanted: set[str], timeout: float) -> dict[str, list[Any]]:
    """Combined frames by stream until every stream in ``wanted`` has had one."""
    seen: dict[str, list[Any]] = {}
    deadline = time.monotonic() + timeout * UNIT
    while not wanted <= seen.keys():
        assert time.monotonic() < deadline, f"no frame yet for {sorted(wanted - seen.keys())}"
        msg = await recv_json(ws)
        if "stream" in msg:
            seen.setdefault(msg["stream"], []).append(msg["data"])
    return seen


async def test_every_accepted_stream_type_is_fed() -> None:
    """One SUBSCRIBE of a stream of every documented type: each one delivers its event."""
    assert {parse_stream(n).type for n in EVERY_TYPE} == set(STREAM_TYPES)
    s = await start_sim(trade_rate=100.0, ticker_interval=0.2, symbols=())
    try:
        async with ws_connect(s.ws_url + "/stream") as ws:
            params = list(EVERY_TYPE)
            assert await reply(ws, {"method": "SUBSCRIBE", "params": params, "id": 1}) == {
                "result": None,
                "id": 1,
            }
            seen = await _collect(ws, set(EVERY_TYPE), 10)
    finally:
        await s.stop()
    for name, event in EVERY_TYPE.items():
        data = seen[name][0]
        first = data[0] if isinstance(data, list) else data
        assert first.get("e") == event, name
        assert first.get("s", "BTCUSDT") == "BTCUSDT", name
    assert seen["btcusdt@kline_4h@+08:00"][0]["k"]["i"] == "4h"
    assert len(seen["btcusdt@depth5"][0]["bids"]) == 5
    assert len(seen["btcusdt@depth10@100ms"][0]["asks"]) == 10
    assert len(seen["btcusdt@depth@100ms"]) > 2 * len(seen["btcusdt@depth"])


class _Reader:
    """Everything one connection receives, read as it comes (so nothing queues up)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: dict[str, int] = {}
        self.symbols_ok = True
        self.replies: dict[int, Any] = {}

    async def run(self) -> None:
        async for text in self.ws:
            msg = json.loads(text)
            if "stream" in msg:
                stream = msg["stream"]
                self.frames[stream] = self.frames.get(stream, 0) + 1
                self.symbols_ok &= msg["data"]["s"] == stream.split("@")[0].upper()
            else:
                self.replies[msg["id"]] = msg

    def has_all(self, names: list[str]) -> bool:
        """Whether a frame of every one of ``names`` has come."""
        return all(n in self.frames for n in names)

    async def ask(self, request: dict[str, Any]) -> Any:
        await self.ws.send(json.dumps(request))
        return await until(lambda: self.replies.get(request["id"]), 5, f"reply {request['id']}")


async def test_1500_symbols_over_two_connections() -> None:
    """1,500 symbols, 750 per connection in one SUBSCRIBE each: every stream gets its frames,
    on its own connection only; an unsubscribed symbol gets none and does not walk."""
    s = await start_sim(trade_rate=1.0, ticker_interval=1.0, symbols=())
    try:
        symbols = sorted(s.market.specs)
        names = [f"{sym.lower()}@miniTicker" for sym in symbols[:1500]]
        halves = (names[:750], names[750:])
        async with (
            ws_connect(s.ws_url + "/stream") as a,
            ws_connect(s.ws_url + "/stream") as b,
            asyncio.TaskGroup() as tg,
        ):
            readers = (_Reader(a), _Reader(b))
            tasks = [tg.create_task(r.run()) for r in readers]
            for i, (reader, half) in enumerate(zip(readers, halves, strict=True)):
                got = await reader.ask({"method": "SUBSCRIBE", "params": half, "id": i})
                assert got == {"result": None, "id": i}
            assert [c["streams"] for c in s.state()["per_connection"]] == [750, 750]
            assert s.state()["walking"] == 1500
            for reader, half in zip(readers, halves, strict=True):
                await until(functools.partial(reader.has_all, half), 15, "every stream")
                assert reader.frames.keys() == set(half) and reader.symbols_ok
            assert symbols[1500] not in s.market.states

            # Unsubscribed: after the reply, no more of its frames, and it stops walking.
            gone, first = halves[0][0], readers[0]
            got = await first.ask({"method": "UNSUBSCRIBE", "params": [gone], "id": 9})
            assert got == {"result": None, "id": 9}
            assert s.state()["walking"] == 1499
            before = dict(first.frames)
            await until(
                lambda: all(first.frames[n] > before[n] for n in halves[0][1:]),
                15,
                "a frame of every other stream after the UNSUBSCRIBE",
            )
            assert first.frames[gone] == before[gone]
            # Stopping closes both connections; each reader reads up to the close and ends.
            await s.stop()
        assert all(task.done() for task in tasks)
    finally:
        await s.stop()


async def test_exchange_info_lists_every_symbol() -> None:
    """exchangeInfo lists the whole symbol list; with all_trading every status is TRADING."""
    for all_trading, statuses in ((False, {"TRADING", "BREAK"}), (True, {"TRADING"})):
        s = await start_sim(all_trading=all_trading)
        try:
            async with aiohttp.ClientSession() as session:
                status, body, _ = await get(session, s.rest_url + "/api/v3/exchangeInfo")
        finally:
            await s.stop()
        assert status == 200 and len(body["symbols"]) == len(s.market.specs) > 1500
        assert {e["status"] for e in body["symbols"]} == statuses
        btc = next(e for e in body["symbols"] if e["symbol"] == "BTCUSDT")
        assert (btc["baseAsset"], btc["quoteAsset"]) == ("BTC", "USDT")
        price_filter = next(f for f in btc["filters"] if f["filterType"] == "PRICE_FILTER")
        assert price_filter["tickSize"] == "0.01000000"


async def test_url_encoded_names_are_read_decoded() -> None:
    """A URL-encoded stream list (Binance supports them) subscribes the decoded names."""
    s = await start_sim(trade_rate=50.0)
    try:
        async with ws_connect(s.ws_url + "/stream?streams=btcusdt%40trade%2Fethusdt%40trade") as ws:
            listed = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
            assert listed["result"] == ["btcusdt@trade", "ethusdt@trade"]
            assert (await recv_json(ws))["stream"] in listed["result"]
    finally:
        await s.stop()
