"""The local exchange over real sockets: WS streams, control methods, limits, REST, faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricectl.core.binance import FrameParser, PriceEvent
from pricectl.core.pairs import PairMap
from pricectl.simulator import Faults, Simulator, SimulatorConfig
from tests.waiting import UNIT, until

REAL = Path(__file__).resolve().parent.parent / "data" / "binance" / "real"

TICKER_KEYS = list("eEspPwxcQbBaAohlvqOCFLn")
MINI_KEYS = list("eEscohlvq")
BOOK_KEYS = list("usbBaA")
AGG_KEYS = list("eEsapqflTmM")
TRADE_KEYS = list("eEstpqTmM")


async def _sim(**kw: Any) -> Simulator:
    sim = Simulator(SimulatorConfig(**kw))
    await sim.start("127.0.0.1", 0)
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = await _sim(trade_rate=20.0)
    try:
        yield s
    finally:
        await s.stop()


def _ws(url: str) -> Any:
    """A websockets client that sends no pings of its own (they count toward 5 msg/s)."""
    return connect(url, ping_interval=None, open_timeout=5 * UNIT)


async def _recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout * UNIT))


async def _reply(ws: ClientConnection, request: dict[str, Any] | str) -> Any:
    """Send a control request and return the first frame that carries an ``id``."""
    await ws.send(request if isinstance(request, str) else json.dumps(request))
    deadline = time.monotonic() + 5 * UNIT
    while time.monotonic() < deadline:
        msg = await _recv_json(ws)
        if isinstance(msg, dict) and "id" in msg:
            return msg
    raise AssertionError("no control reply")


async def _first_of(ws: ClientConnection, stream: str) -> Any:
    """The data of the first combined frame of ``stream``."""
    while True:
        msg = await _recv_json(ws)
        if msg.get("stream") == stream:
            return msg["data"]


# -- streams -------------------------------------------------------------------------------


async def test_raw_ticker_has_all_23_fields_every_second(sim: Simulator) -> None:
    """/ws/btcusdt@ticker sends bare 24hrTicker events with the 23 fields, 1000 ms apart."""
    async with _ws(sim.ws_url + "/ws/btcusdt@ticker") as ws:
        first = await _recv_json(ws)
        second = await _recv_json(ws)
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
    async with _ws(sim.ws_url + "/stream?streams=" + "/".join(names)) as ws:
        seen: dict[str, Any] = {}
        while len(seen) < len(names):
            msg = await _recv_json(ws)
            assert set(msg) == {"stream", "data"}
            seen.setdefault(msg["stream"], msg["data"])
    assert list(seen["ethusdt@bookTicker"]) == BOOK_KEYS
    assert list(seen["ethusdt@aggTrade"]) == AGG_KEYS
    assert list(seen["ethusdt@trade"]) == TRADE_KEYS
    assert list(seen["ethusdt@miniTicker"]) == MINI_KEYS
    assert seen["ethusdt@trade"]["s"] == "ETHUSDT"


async def test_trade_rate_is_the_configured_rate() -> None:
    """bookTicker frames arrive at about trade_rate per second per symbol."""
    s = await _sim(trade_rate=50.0)
    try:
        async with _ws(s.ws_url + "/ws/btcusdt@bookTicker") as ws:
            await _recv_json(ws)
            t0 = time.monotonic()
            for _ in range(50):
                await _recv_json(ws)
            elapsed = time.monotonic() - t0
    finally:
        await s.stop()
    assert 0.6 <= elapsed <= 1.6 * UNIT


async def test_simulated_frames_parse_into_updates(sim: Simulator) -> None:
    """The parser turns simulated ticker frames into updates for the subscribed pair."""
    parser = FrameParser(PairMap.build(["BTC/USD"], {"USD": "USDT"}), "ticker")
    async with _ws(sim.ws_url + "/stream?streams=btcusdt@ticker") as ws:
        events = parser.parse(await ws.recv(), time.time_ns())
    assert isinstance(events[0], PriceEvent) and events[0].update.pair == "BTC/USD"


async def test_mini_ticker_array_lists_changed_symbols() -> None:
    """!miniTicker@arr delivers an array of 24hrMiniTicker for the symbols that moved."""
    s = await _sim(symbols=("BTCUSDT", "ETHUSDT"), ticker_interval=0.2)
    try:
        async with _ws(s.ws_url + "/ws/!miniTicker@arr") as ws:
            arr = await _recv_json(ws)
    finally:
        await s.stop()
    assert isinstance(arr, list) and {m["s"] for m in arr} == {"BTCUSDT", "ETHUSDT"}
    assert all(list(m) == MINI_KEYS for m in arr)


# -- control methods -----------------------------------------------------------------------


async def test_subscribe_list_unsubscribe_on_bare_ws(sim: Simulator) -> None:
    """Bare /ws + SUBSCRIBE starts raw frames; LIST and UNSUBSCRIBE reply as documented."""
    async with _ws(sim.ws_url + "/ws") as ws:
        assert await _reply(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 1}
        ) == {"result": None, "id": 1}
        frame = await _recv_json(ws)
        assert frame["e"] == "aggTrade" and "stream" not in frame
        assert await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
            "result": ["btcusdt@aggTrade", "btcusdt@depth"],
            "id": 3,
        }
        assert await _reply(
            ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@depth"], "id": 312}
        ) == {"result": None, "id": 312}
        assert await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": "abc"}) == {
            "result": ["btcusdt@aggTrade"],
            "id": "abc",
        }


async def test_set_and_get_property_switch_the_envelope(sim: Simulator) -> None:
    """SET_PROPERTY combined true wraps later frames; GET_PROPERTY reports it."""
    async with _ws(sim.ws_url + "/ws/btcusdt@trade") as ws:
        assert await _reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
            "result": False,
            "id": 2,
        }
        assert await _reply(
            ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}
        ) == {"result": None, "id": 5}
        data = await _first_of(ws, "btcusdt@trade")
        assert data["e"] == "trade"
        assert (await _reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 6}))[
            "result"
        ] is True


@pytest.mark.parametrize(
    ("request_", "code", "msg_start", "rid"),
    [
        ("{not json", 3, "Invalid JSON: expected value", None),
        ({"params": [], "id": 1}, 2, "Invalid request: missing field `method`", 1),
        ({"method": "SUBSCRIBE", "params": []}, 2, "Invalid request: request ID must be", None),
        ({"method": "SUBSCRIBE", "params": [], "id": True}, 2, "Invalid request: request ID", None),
        ({"method": "PING", "id": 7}, 2, "Invalid request: unknown variant `PING`", 7),
        (
            {"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 8},
            2,
            "Invalid request: too many",
            8,
        ),
        ({"method": "SET_PROPERTY", "params": ["colour", True], "id": 9}, 0, "Unknown property", 9),
        ({"method": "GET_PROPERTY", "params": ["colour"], "id": 9}, 0, "Unknown property", 9),
        (
            {"method": "SET_PROPERTY", "params": ["combined", 1], "id": 10},
            1,
            "Invalid value type",
            10,
        ),
        (
            {"method": "SET_PROPERTY", "params": [1, True], "id": 11},
            2,
            "Invalid request: property",
            11,
        ),
        ({"method": "GET_PROPERTY", "params": [], "id": 12}, 2, "Invalid request: property", 12),
        (
            {"method": "SET_PROPERTY", "params": ["combined", True, 1], "id": 13},
            2,
            "Invalid request: too many",
            13,
        ),
        (
            {"method": "SUBSCRIBE", "params": ["btcusdt"], "id": 14},
            2,
            "Invalid request: invalid stream",
            14,
        ),
    ],
)
async def test_control_errors(
    sim: Simulator, request_: dict[str, Any] | str, code: int, msg_start: str, rid: Any
) -> None:
    """Bad control requests get {"error":{"code","msg"},"id"} with the documented code."""
    async with _ws(sim.ws_url + "/ws") as ws:
        reply = await _reply(ws, request_)
    assert set(reply) == {"error", "id"} and reply["id"] == rid
    assert reply["error"]["code"] == code
    assert reply["error"]["msg"].startswith(msg_start)


async def test_stream_cap_refuses_extra_subscriptions() -> None:
    """SUBSCRIBE past max_streams is refused with an error and changes nothing."""
    s = await _sim(max_streams=3)
    try:
        async with _ws(s.ws_url + "/stream?streams=a@trade/b@trade") as ws:
            reply = await _reply(
                ws, {"method": "SUBSCRIBE", "params": ["c@trade", "d@trade"], "id": 1}
            )
            assert reply["error"]["code"] == 4
            listed = await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert listed["result"] == ["a@trade", "b@trade"]
    finally:
        await s.stop()


# -- connection rules ----------------------------------------------------------------------


async def test_connection_attempts_over_the_limit_are_refused() -> None:
    """Past max_connects handshakes per window from one IP the server answers 429."""
    s = await _sim(max_connects=2, connect_window_s=60.0)
    try:
        for _ in range(2):
            async with _ws(s.ws_url + "/ws"):
                pass
        with pytest.raises(InvalidStatus) as info:
            async with _ws(s.ws_url + "/ws"):
                pass
        assert info.value.response.status_code == 429
        assert s.stats.total_connects == 2 and s.stats.refused == 1
    finally:
        await s.stop()


async def test_server_pings_and_cuts_a_client_that_never_pongs() -> None:
    """Pings come every ping_interval; without a pong the server cuts after pong_timeout."""
    s = await _sim(ping_interval=0.2, pong_timeout=0.5)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(s.ws_url + "/ws", autoping=False) as ws,
        ):
            msg = await ws.receive(timeout=5 * UNIT)
            assert msg.type == aiohttp.WSMsgType.PING and msg.data
            t0 = time.monotonic()
            while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                msg = await ws.receive(timeout=5 * UNIT)
            assert time.monotonic() - t0 < 2 * UNIT
        assert s.stats.cut_pong_timeout == 1
    finally:
        await s.stop()


async def test_a_client_that_pongs_stays_connected() -> None:
    """A client answering pings with their payload outlives several pong timeouts."""
    # 4 pings/s: pongs count toward the 5 messages/s limit like anything else.
    s = await _sim(ping_interval=0.25, pong_timeout=0.4)
    try:
        async with _ws(s.ws_url + "/ws") as ws:
            await until(lambda: s.stats.pongs_received >= 6, 5, "6 pongs")
            assert s.connections == 1
            assert await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
                "result": [],
                "id": 1,
            }
        assert s.stats.cut_pong_timeout == 0
    finally:
        await s.stop()


async def test_more_than_five_messages_per_second_disconnects(sim: Simulator) -> None:
    """A sixth incoming message within one second closes the connection."""
    async with _ws(sim.ws_url + "/ws") as ws:
        for i in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
    assert sim.stats.cut_rate_limit == 1


async def test_connection_age_cut_preceded_by_server_shutdown() -> None:
    """At max_connection_age the server closes, after a serverShutdown event (both forms)."""
    s = await _sim(max_connection_age=1.0, shutdown_notice=0.5)
    try:
        for path, combined in (("/ws", False), ("/stream", True)):
            async with _ws(s.ws_url + path) as ws:
                t0 = time.monotonic()
                event = await _recv_json(ws)
                if combined:
                    assert event["stream"] == "!serverShutdown"
                    event = event["data"]
                assert event["e"] == "serverShutdown" and isinstance(event["E"], int)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5 * UNIT)
                assert 0.8 <= time.monotonic() - t0 + 0.5 <= 2 * UNIT
        assert s.stats.cut_age == 2
    finally:
        await s.stop()


async def test_admin_server_shutdown_warns_then_cuts(sim: Simulator) -> None:
    """POST /admin/shutdown sends serverShutdown now and cuts every connection after after_s."""
    async with _ws(sim.ws_url + "/ws/btcusdt@ticker") as ws:
        await until(lambda: sim.connections == 1, 5, "connection")
        async with aiohttp.ClientSession() as session:
            r = await session.post(sim.rest_url + "/admin/shutdown", json={"after_s": 0.2})
            assert r.status == 200
        while (await _recv_json(ws)).get("e") != "serverShutdown":
            pass
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
    await until(lambda: sim.connections == 0, 5, "connections closed")


# -- REST ----------------------------------------------------------------------------------


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any, Any]:
    async with session.get(url, params=params) as r:
        return r.status, await r.json(), r.headers


async def test_rest_endpoints_shapes_and_weights(sim: Simulator) -> None:
    """ping/time/exchangeInfo/ticker endpoints: shapes, object vs array, weight header."""
    api = sim.rest_url + "/api/v3"
    async with aiohttp.ClientSession() as session:
        status, body, headers = await _get(session, api + "/ping")
        assert (status, body, headers["X-MBX-USED-WEIGHT-1M"]) == (200, {}, "1")
        _, body, headers = await _get(session, api + "/time")
        assert abs(body["serverTime"] - time.time() * 1000) < 5000
        assert headers["X-MBX-USED-WEIGHT-1M"] == "2"

        _, body, headers = await _get(session, api + "/ticker/price", symbol="BTCUSDT")
        assert list(body) == ["symbol", "price"] and headers["X-MBX-USED-WEIGHT-1M"] == "4"
        _, body, headers = await _get(
            session, api + "/ticker/price", symbols='["BTCUSDT","ETHUSDT"]'
        )
        assert [x["symbol"] for x in body] == ["BTCUSDT", "ETHUSDT"]
        assert headers["X-MBX-USED-WEIGHT-1M"] == "8"

        _, body, _ = await _get(session, api + "/ticker/24hr", symbol="BTCUSDT")
        assert len(body) == 21 and body["symbol"] == "BTCUSDT"
        _, body, _ = await _get(session, api + "/ticker/24hr", symbol="BTCUSDT", type="MINI")
        assert len(body) == 12 and "bidPrice" not in body
        _, body, headers = await _get(session, api + "/ticker/24hr", symbols='["ETHUSDT"]')
        assert isinstance(body, list) and len(body[0]) == 21
        assert headers["X-MBX-USED-WEIGHT-1M"] == "14"
        _, body, _ = await _get(session, api + "/ticker/bookTicker", symbol="ETHUSDT")
        assert list(body) == ["symbol", "bidPrice", "bidQty", "askPrice", "askQty"]
        _, body, headers = await _get(session, api + "/ticker/bookTicker")
        assert len(body) == 1695 and headers["X-MBX-USED-WEIGHT-1M"] == "20"

        _, body, headers = await _get(session, api + "/exchangeInfo", symbol="BTCUSDT")
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
        _, body, _ = await _get(session, api + "/exchangeInfo")
        assert len(body["symbols"]) == 1695


async def test_rest_price_matches_the_stream(sim: Simulator) -> None:
    """The REST last price and the WS ticker come from the same walk."""
    async with _ws(sim.ws_url + "/ws/btcusdt@ticker") as ws, aiohttp.ClientSession() as session:
        ticker = await _recv_json(ws)
        _, body, _ = await _get(session, sim.rest_url + "/api/v3/ticker/price", symbol="BTCUSDT")
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
        got_status, body, _ = await _get(session, sim.rest_url + "/api/v3/ticker/price", **params)
    assert (got_status, body["code"]) == (status, code)
    assert isinstance(body["msg"], str)


async def test_rest_over_budget_gets_429_then_418() -> None:
    """Over the weight budget: 429 with Retry-After, then 418 (banned) if the client keeps on."""
    s = await _sim(weight_limit=5, ban_after=1, ban_s=30.0, weight_window_s=60.0)
    url = s.rest_url + "/api/v3/ticker/price"
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(5):
                status, body, headers = await _get(session, url, symbol="BTCUSDT")
                statuses.append(status)
                if status in (429, 418):
                    assert body["code"] == -1003 and int(headers["Retry-After"]) >= 1
            assert statuses == [200, 200, 429, 418, 418]
            assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
            status, _, headers = await _get(session, s.rest_url + "/api/v3/ping")
            assert status == 418 and 25 <= int(headers["Retry-After"]) <= 30
    finally:
        await s.stop()


# -- faults --------------------------------------------------------------------------------


async def _admin(sim: Simulator, **body: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.rest_url + "/admin/fault", json=body) as r,
    ):
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result


async def test_fault_drop_closes_every_connection(sim: Simulator) -> None:
    """drop aborts every client connection at once; the count falls to zero."""
    async with _ws(sim.ws_url + "/ws/btcusdt@trade") as a, _ws(sim.ws_url + "/ws") as b:
        await until(lambda: sim.connections == 2, 5, "two connections")
        await _admin(sim, drop=True)
        for ws in (a, b):
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5 * UNIT)
    await until(lambda: sim.connections == 0, 5, "connections dropped")
    assert sim.stats.total_connects == 2


async def test_fault_refuse_answers_non_101(sim: Simulator) -> None:
    """refuse makes the WS handshake fail with 503; clearing it lets clients in again."""
    await _admin(sim, refuse=True)
    with pytest.raises(InvalidStatus) as info:
        async with _ws(sim.ws_url + "/ws"):
            pass
    assert info.value.response.status_code == 503
    state = await _admin(sim, clear=True)
    assert state["refused"] == 1 and state["faults"]["refuse"] is False
    async with _ws(sim.ws_url + "/ws"):
        await until(lambda: sim.connections == 1, 5, "connection after clear")


async def test_fault_stall_keeps_socket_but_sends_nothing() -> None:
    """stall stops frames and pings while the socket stays open; clearing resumes them."""
    s = await _sim(trade_rate=50.0, ping_interval=0.1, pong_timeout=0.3)
    try:
        async with _ws(s.ws_url + "/ws/btcusdt@trade") as ws:
            await _recv_json(ws)
            s.set_fault(stall=True)
            await asyncio.sleep(0)  # let frames queued before the stall drain
            drained = 0
            with pytest.raises(TimeoutError):
                while True:
                    await asyncio.wait_for(ws.recv(), 0.5)
                    drained += 1
            pings = s.stats.pings_sent
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            assert s.stats.pings_sent == pings and s.connections == 1
            s.set_fault(stall=False)
            assert (await _recv_json(ws))["e"] == "trade"
    finally:
        await s.stop()


async def test_fault_garbage_frames_interleave_with_good_ones(sim: Simulator) -> None:
    """garbage:RATE sends bad frames the parser skips and counts while good ones flow."""
    parser = FrameParser(PairMap.build(["BTC/USD"], {"USD": "USDT"}), "trade")
    await _admin(sim, garbage=50)
    async with _ws(sim.ws_url + "/ws/btcusdt@trade") as ws:
        for _ in range(60):
            parser.parse(await asyncio.wait_for(ws.recv(), 5 * UNIT), time.time_ns())
    assert parser.counts["parsed:trade"] > 0
    bad = sum(n for k, n in parser.counts.items() if not k.startswith("parsed:"))
    assert bad > 0


async def test_fault_rest429_and_rest500() -> None:
    """rest429 and rest500 make every REST call fail that way until cleared."""
    s = await _sim(fault_retry_after_s=3)
    url = s.rest_url + "/api/v3/ticker/price"
    try:
        async with aiohttp.ClientSession() as session:
            await _admin(s, rest429=True)
            status, body, headers = await _get(session, url, symbol="BTCUSDT")
            assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "3")
            await _admin(s, rest429=False, rest500=True)
            status, body, _ = await _get(session, url, symbol="BTCUSDT")
            assert status == 500
            await _admin(s, clear=True)
            status, body, _ = await _get(session, url, symbol="BTCUSDT")
            assert status == 200 and body["symbol"] == "BTCUSDT"
    finally:
        await s.stop()


async def test_admin_rejects_unknown_faults(sim: Simulator) -> None:
    """An unknown fault name is a 400 naming it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.rest_url + "/admin/fault", json={"explode": True}) as r,
    ):
        assert r.status == 400 and "explode" in (await r.json())["error"]


async def test_set_fault_from_code_shows_in_state(sim: Simulator) -> None:
    """set_fault from code takes effect at once and shows in state(); clear resets every fault."""
    assert sim.connections == 0 and sim.state()["connections"] == 0
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, sim.rest_url + "/api/v3/ping"))[:2] == (200, {})
        sim.set_fault(rest500=True, garbage=2)
        assert sim.state()["faults"] == {
            "stall": False,
            "garbage": 2.0,
            "refuse": False,
            "rest429": False,
            "rest500": True,
        }
        assert (await _get(session, sim.rest_url + "/api/v3/ping"))[0] == 500
        sim.set_fault(clear=True)
        assert sim.state()["faults"] == asdict(Faults())
        assert (await _get(session, sim.rest_url + "/api/v3/ping"))[:2] == (200, {})


async def test_admin_state_counts_connections_and_messages(sim: Simulator) -> None:
    """GET /admin/state reports connections held, total connects and messages received."""
    async with _ws(sim.ws_url + "/ws") as ws:
        await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        async with aiohttp.ClientSession() as session:
            _, state, _ = await _get(session, sim.rest_url + "/admin/state")
    assert state["connections"] == 1 and state["total_connects"] == 1
    assert state["messages_received"] == 1 and state["subscriptions"] == [[]]


# -- replay --------------------------------------------------------------------------------


async def test_replay_plays_a_recording_to_subscribers() -> None:
    """--replay sends each recorded frame verbatim to connections subscribed to its stream."""
    path = REAL / "cryptofeed-binance-spot-2021-10-12-allstreams.jsonl"
    lines = path.read_text().splitlines()
    want = [line for line in lines if '"stream":"nknusdt@bookTicker"' in line]
    s = await _sim(replay=str(path), speed=0)
    try:
        async with _ws(s.ws_url + "/stream?streams=nknusdt@bookTicker") as ws:
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
    s = await _sim(replay=str(path), speed=4.0)
    try:
        async with _ws(s.ws_url + "/ws") as ws:
            t0 = time.monotonic()
            raw = [await asyncio.wait_for(ws.recv(), 5 * UNIT) for _ in range(n + 1)]
            elapsed = time.monotonic() - t0
    finally:
        await s.stop()
    assert 0.4 <= elapsed <= 1.5 * UNIT  # 2 s of recording at 4x
    first = json.loads(path.read_text().splitlines()[0])
    assert json.loads(raw[0]) == first["data"]  # raw connection: the bare payload


@pytest.mark.parametrize(
    "knob",
    [
        {"max_incoming_per_s": 0},
        {"max_connects": 0},
        {"weight_limit": 0},
        {"connect_window_s": 0.0},
        {"weight_window_s": float("inf")},
    ],
)
def test_config_refuses_limits_that_cannot_be_counted(knob: dict[str, float]) -> None:
    """A rate limit of zero events or a window of no (or endless) length is a ValueError."""
    (name,) = knob
    with pytest.raises(ValueError, match=name):
        SimulatorConfig(**knob)  # type: ignore[arg-type]
