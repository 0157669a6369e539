"""Binance's connection limits over real sockets: replies, HTTP statuses, close codes, counters."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricectl.simulator import Simulator
from pricectl.simulator.control import MAX_URL_LENGTH
from tests.simulator.client import get, recv_json, reply, start_sim, ws_connect
from tests.waiting import UNIT, until


async def _closed_by_server(ws: object) -> ConnectionClosed:
    """Read until the server closes; the close it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 5 * UNIT)  # type: ignore[attr-defined]
    except ConnectionClosed as closed:
        return closed


async def test_sixth_message_in_a_second_closes_with_1008_too_many_requests(sim: Simulator) -> None:
    """Pings and control messages count alike; the sixth in a second is a 1008 close."""
    async with ws_connect(sim.ws_url + "/ws") as ws:
        for _ in range(3):
            await ws.ping()
        for i in range(3):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        closed = await _closed_by_server(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "Too many requests")
    assert sim.stats.cut_rate_limit == 1 and sim.stats.peak_messages_per_s == 6


async def test_state_reports_each_connections_streams_and_messages(sim: Simulator) -> None:
    """/admin/state gives per connection its stream count, messages received and peak per second."""
    async with (
        ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade") as a,
        ws_connect(sim.ws_url + "/ws") as b,
    ):
        await until(lambda: sim.connections == 2, 5, "two connections")
        for i in range(4):
            await a.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        await reply(b, {"method": "SUBSCRIBE", "params": ["xrpxrp@trade"], "id": 1})
        await until(lambda: sim.stats.control_messages == 5, 5, "five control messages")
        async with aiohttp.ClientSession() as session:
            _, state, _ = await get(session, sim.rest_url + "/admin/state")
    first, second = state["per_connection"]
    assert (first["number"], first["path"], first["combined"]) == (1, "/stream", True)
    assert (first["streams"], first["messages_received"], first["control_messages"]) == (2, 4, 4)
    assert first["peak_messages_per_s"] == 4 and first["unfed_streams"] == 0
    assert (second["number"], second["streams"], second["unfed_streams"]) == (2, 1, 1)
    assert (state["peak_streams_per_connection"], state["peak_messages_per_s"]) == (2, 4)
    assert state["unfed_subscribes"] == 1 and state["control_errors"] == 0


async def test_subscribe_past_1024_streams_is_code_4() -> None:
    """1,024 streams fit one connection in one SUBSCRIBE; the 1,025th is code 4 and nothing else."""
    s = await start_sim(trade_rate=0.0, ticker_interval=60.0)
    try:
        names = [f"{sym.lower()}@miniTicker" for sym in sorted(s.market.specs)[:1025]]
        async with ws_connect(s.ws_url + "/stream") as ws:
            assert await reply(ws, {"method": "SUBSCRIBE", "params": names[:1024], "id": 1}) == {
                "result": None,
                "id": 1,
            }
            over = await reply(ws, {"method": "SUBSCRIBE", "params": names[1024:], "id": 2})
            assert over == {"error": {"code": 4, "msg": "Too many subscriptions"}, "id": 2}
            listed = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
            assert listed["result"] == names[:1024]
            assert s.connections == 1 and s.stats.peak_streams_per_connection == 1024
    finally:
        await s.stop()


async def test_combined_url_with_more_than_1024_streams_is_refused_at_the_handshake() -> None:
    """A URL naming 1,025 streams is HTTP 400 (given a URL limit that lets it through)."""
    s = await start_sim(trade_rate=0.0, max_url_length=100_000)
    try:
        names = [f"{sym.lower()}@trade" for sym in sorted(s.market.specs)[:1025]]
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(s.ws_url + "/stream?streams=" + "/".join(names)):
                pass
        assert info.value.response.status_code == 400
        async with ws_connect(s.ws_url + "/stream?streams=" + "/".join(names[:1024])) as ws:
            listed = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert len(listed["result"]) == 1024 and s.stats.refused_urls == 1
    finally:
        await s.stop()


async def test_url_longer_than_the_limit_is_414(sim: Simulator) -> None:
    """A request target of MAX_URL_LENGTH characters connects; one more is HTTP 414."""
    name = "a" * (MAX_URL_LENGTH - len("/ws/") - len("@trade")) + "@trade"
    async with ws_connect(sim.ws_url + "/ws/" + name) as ws:
        assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}))["result"] == [name]
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sim.ws_url + "/ws/a" + name):
            pass
    assert info.value.response.status_code == 414
    assert sim.stats.refused_urls == 1 and sim.stats.total_connects == 1


@pytest.mark.parametrize(
    "name", ["btcusdt@depth7", "BTCUSDT@trade", "!ticker@arr", "btcusdt@kline_2m"]
)
async def test_invalid_stream_in_a_url_is_400(sim: Simulator, name: str) -> None:
    """A URL naming a stream the exchange would never feed is refused with HTTP 400."""
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade/" + name):
            pass
    assert info.value.response.status_code == 400


@pytest.mark.parametrize(
    "name", ["btcusdt@depth7", "BTCUSDT@trade", "!ticker@arr", "!bookTicker", "ethusdt@ticker_2h"]
)
async def test_invalid_stream_in_subscribe_is_the_invalid_stream_error(
    sim: Simulator, name: str
) -> None:
    """SUBSCRIBE naming a stream the exchange would never feed gets code 2 and adds nothing."""
    async with ws_connect(sim.ws_url + "/ws") as ws:
        got = await reply(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade", name], "id": 9})
        assert got == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 9}
        assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 10}))["result"] == []
    assert sim.stats.control_errors == 1


async def test_unlisted_symbol_is_accepted_silently_and_counted() -> None:
    """A stream of a symbol not in the list is acknowledged, never fed, and shows as unfed."""
    s = await start_sim(trade_rate=200.0, symbols=())
    try:
        async with ws_connect(s.ws_url + "/stream") as ws:
            got = await reply(
                ws, {"method": "SUBSCRIBE", "params": ["xrpxrp@trade", "btcusdt@trade"], "id": 1}
            )
            assert got == {"result": None, "id": 1}
            streams = {(await recv_json(ws))["stream"] for _ in range(100)}
            assert streams == {"btcusdt@trade"}
            assert s.state()["per_connection"][0]["unfed_streams"] == 1
        assert "XRPXRP" not in s.market.states and s.stats.unfed_subscribes == 1
    finally:
        await s.stop()


async def test_refuse_unlisted_refuses_unlisted_symbols() -> None:
    """With refuse_unlisted an unlisted symbol's stream is refused: code 2, or 400 in a URL."""
    s = await start_sim(refuse_unlisted=True)
    try:
        async with ws_connect(s.ws_url + "/ws") as ws:
            got = await reply(ws, {"method": "SUBSCRIBE", "params": ["xrpxrp@trade"], "id": 1})
            assert got["error"]["code"] == 2
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(s.ws_url + "/ws/xrpxrp@trade"):
                pass
        assert info.value.response.status_code == 400
    finally:
        await s.stop()


async def test_control_frames_over_max_control_bytes_get_no_answer() -> None:
    """With max_control_bytes set, a bigger SUBSCRIBE is dropped unanswered; small ones work."""
    s = await start_sim(max_control_bytes=4096, trade_rate=0.0)
    try:
        names = [f"{sym.lower()}@aggTrade" for sym in sorted(s.market.specs)[:300]]
        big = json.dumps({"method": "SUBSCRIBE", "params": names, "id": 1})
        assert len(big) > 4096
        async with ws_connect(s.ws_url + "/ws") as ws:
            await ws.send(big)
            # The first answer is the LIST's: the SUBSCRIBE got none and changed nothing.
            assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2}) == {
                "result": [],
                "id": 2,
            }
            small = {"method": "SUBSCRIBE", "params": names[:150], "id": 3}
            assert len(json.dumps(small)) <= 4096
            assert await reply(ws, small) == {"result": None, "id": 3}
        assert s.stats.control_ignored == 1
    finally:
        await s.stop()
