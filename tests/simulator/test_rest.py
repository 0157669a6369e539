"""The simulator's REST side over real sockets: endpoints, weights, errors, 429/418, faults."""

from __future__ import annotations

import time

import aiohttp
import pytest

from pricectl.simulator import Simulator
from tests.simulator.client import admin, get, recv_json, start_sim, ws_connect


async def test_rest_endpoints_shapes_and_weights(sim: Simulator) -> None:
    """ping/time/exchangeInfo/ticker endpoints: shapes, object vs array, weight header."""
    api = sim.rest_url + "/api/v3"
    async with aiohttp.ClientSession() as session:
        status, body, headers = await get(session, api + "/ping")
        assert (status, body, headers["X-MBX-USED-WEIGHT-1M"]) == (200, {}, "1")
        _, body, headers = await get(session, api + "/time")
        assert abs(body["serverTime"] - time.time() * 1000) < 5000
        assert headers["X-MBX-USED-WEIGHT-1M"] == "2"

        _, body, headers = await get(session, api + "/ticker/price", symbol="BTCUSDT")
        assert list(body) == ["symbol", "price"] and headers["X-MBX-USED-WEIGHT-1M"] == "4"
        _, body, headers = await get(
            session, api + "/ticker/price", symbols='["BTCUSDT","ETHUSDT"]'
        )
        assert [x["symbol"] for x in body] == ["BTCUSDT", "ETHUSDT"]
        assert headers["X-MBX-USED-WEIGHT-1M"] == "8"

        _, body, _ = await get(session, api + "/ticker/24hr", symbol="BTCUSDT")
        assert len(body) == 21 and body["symbol"] == "BTCUSDT"
        _, body, _ = await get(session, api + "/ticker/24hr", symbol="BTCUSDT", type="MINI")
        assert len(body) == 12 and "bidPrice" not in body
        _, body, headers = await get(session, api + "/ticker/24hr", symbols='["ETHUSDT"]')
        assert isinstance(body, list) and len(body[0]) == 21
        assert headers["X-MBX-USED-WEIGHT-1M"] == "14"
        _, body, _ = await get(session, api + "/ticker/bookTicker", symbol="ETHUSDT")
        assert list(body) == ["symbol", "bidPrice", "bidQty", "askPrice", "askQty"]
        _, body, headers = await get(session, api + "/ticker/bookTicker")
        assert len(body) == 1695 and headers["X-MBX-USED-WEIGHT-1M"] == "20"

        _, body, headers = await get(session, api + "/exchangeInfo", symbol="BTCUSDT")
        assert headers["X-MBX-USED-WEIGHT-1M"] == "40"
        (entry,) = body["symbols"]
        assert (entry["symbol"], entry["status"], entry["baseAsset"], entry["quoteAsset"]) == (
            "BTCUSDT",
            "TRADING",
            "BTC",
            "USDT",
        )
        assert entry["filters"][0]["tickSize"] == "0.01000000"
        assert body["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
        _, body, _ = await get(session, api + "/exchangeInfo")
        assert len(body["symbols"]) == 1695


async def test_rest_price_matches_the_stream(sim: Simulator) -> None:
    """The REST last price and the WS ticker come from the same walk."""
    async with (
        ws_connect(sim.ws_url + "/ws/btcusdt@ticker") as ws,
        aiohttp.ClientSession() as session,
    ):
        ticker = await recv_json(ws)
        _, body, _ = await get(session, sim.rest_url + "/api/v3/ticker/price", symbol="BTCUSDT")
    assert abs(float(body["price"]) - float(ticker["c"])) < 500


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"symbol": "NOPEUSDT"}, 400, -1121),
        ({"symbols": '["BTCUSDT","NOPEUSDT"]'}, 400, -1121),
        ({"symbols": '["btcusdt"]'}, 400, -1100),
        ({"symbols": '["BTCUSDT", "ETHUSDT"]'}, 400, -1100),
        ({"symbol": "btcusdt"}, 400, -1100),
        ({"symbols": '["BTCUSDT","BTCUSDT"]'}, 400, -1151),
        ({"symbol": "BTCUSDT", "symbols": '["BTCUSDT"]'}, 400, -1128),
        ({"symbol": "BTCUSDT", "symbolStatus": "BOGUS"}, 400, -1122),
        ({"symbol": "BTCUSDT", "symbolStatus": "HALT"}, 400, -1220),
    ],
)
async def test_rest_errors(sim: Simulator, params: dict[str, str], status: int, code: int) -> None:
    """Bad symbols and parameters give HTTP 400 with the documented error code."""
    async with aiohttp.ClientSession() as session:
        got_status, body, _ = await get(session, sim.rest_url + "/api/v3/ticker/price", **params)
    assert (got_status, body["code"]) == (status, code)
    assert isinstance(body["msg"], str)


async def test_rest_over_budget_gets_429_then_418() -> None:
    """Over the weight budget: 429 with Retry-After, then 418 (banned) if the client keeps on."""
    s = await start_sim(weight_limit=5, ban_after=1, ban_s=30.0, weight_window_s=60.0)
    url = s.rest_url + "/api/v3/ticker/price"
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(5):
                status, body, headers = await get(session, url, symbol="BTCUSDT")
                statuses.append(status)
                if status in (429, 418):
                    assert body["code"] == -1003 and int(headers["Retry-After"]) >= 1
            assert statuses == [200, 200, 429, 418, 418]
            assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
            status, _, headers = await get(session, s.rest_url + "/api/v3/ping")
            assert status == 418 and 25 <= int(headers["Retry-After"]) <= 30
    finally:
        await s.stop()


async def test_fault_rest429_and_rest500() -> None:
    """rest429 and rest500 make every REST call fail that way until cleared."""
    s = await start_sim(fault_retry_after_s=3)
    url = s.rest_url + "/api/v3/ticker/price"
    try:
        async with aiohttp.ClientSession() as session:
            await admin(s, rest429=True)
            status, body, headers = await get(session, url, symbol="BTCUSDT")
            assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "3")
            await admin(s, rest429=False, rest500=True)
            status, body, _ = await get(session, url, symbol="BTCUSDT")
            assert status == 500
            await admin(s, clear=True)
            status, body, _ = await get(session, url, symbol="BTCUSDT")
            assert status == 200 and body["symbol"] == "BTCUSDT"
    finally:
        await s.stop()
