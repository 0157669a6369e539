"""The simulator's WebSocket side over real sockets: control methods, connection rules, faults."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricectl.simulator import Simulator
from tests.simulator.client import admin, first_of, recv_json, reply, start_sim, ws_connect
from tests.waiting import UNIT, until


async def test_subscribe_list_unsubscribe_on_bare_ws(sim: Simulator) -> None:
    """Bare /ws + SUBSCRIBE starts raw frames; LIST and UNSUBSCRIBE reply as documented."""
    async with ws_connect(sim.ws_url + "/ws") as ws:
        assert await reply(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 1}
        ) == {"result": None, "id": 1}
        frame = await recv_json(ws)
        assert frame["e"] == "aggTrade" and "stream" not in frame
        assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
            "result": ["btcusdt@aggTrade", "btcusdt@depth"],
            "id": 3,
        }
        assert await reply(
            ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@depth"], "id": 312}
        ) == {"result": None, "id": 312}
        assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": "abc"}) == {
            "result": ["btcusdt@aggTrade"],
            "id": "abc",
        }


async def test_set_and_get_property_switch_the_envelope(sim: Simulator) -> None:
    """SET_PROPERTY combined true wraps later frames; GET_PROPERTY reports it."""
    async with ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        assert await reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
            "result": False,
            "id": 2,
        }
        assert await reply(
            ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}
        ) == {"result": None, "id": 5}
        data = await first_of(ws, "btcusdt@trade")
        assert data["e"] == "trade"
        assert (await reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 6}))[
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
    async with ws_connect(sim.ws_url + "/ws") as ws:
        got = await reply(ws, request_)
    assert set(got) == {"error", "id"} and got["id"] == rid
    assert got["error"]["code"] == code
    assert got["error"]["msg"].startswith(msg_start)


async def test_stream_cap_refuses_extra_subscriptions() -> None:
    """SUBSCRIBE past max_streams is refused with an error and changes nothing."""
    s = await start_sim(max_streams=3)
    try:
        async with ws_connect(s.ws_url + "/stream?streams=a@trade/b@trade") as ws:
            got = await reply(
                ws, {"method": "SUBSCRIBE", "params": ["c@trade", "d@trade"], "id": 1}
            )
            assert got["error"]["code"] == 4
            listed = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert listed["result"] == ["a@trade", "b@trade"]
    finally:
        await s.stop()


async def test_connection_attempts_over_the_limit_are_refused() -> None:
    """Past max_connects handshakes per window from one IP the server answers 429."""
    s = await start_sim(max_connects=2, connect_window_s=60.0)
    try:
        for _ in range(2):
            async with ws_connect(s.ws_url + "/ws"):
                pass
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(s.ws_url + "/ws"):
                pass
        assert info.value.response.status_code == 429
        assert s.stats.total_connects == 2 and s.stats.refused == 1
    finally:
        await s.stop()


async def test_server_pings_and_cuts_a_client_that_never_pongs() -> None:
    """Pings come every ping_interval; without a pong the server cuts after pong_timeout."""
    s = await start_sim(ping_interval=0.2, pong_timeout=0.5)
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
    s = await start_sim(ping_interval=0.25, pong_timeout=0.4)
    try:
        async with ws_connect(s.ws_url + "/ws") as ws:
            await until(lambda: s.stats.pongs_received >= 6, 5, "6 pongs")
            assert s.connections == 1
            assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
                "result": [],
                "id": 1,
            }
        assert s.stats.cut_pong_timeout == 0
    finally:
        await s.stop()


async def test_more_than_five_messages_per_second_disconnects(sim: Simulator) -> None:
    """A sixth incoming message within one second closes the connection."""
    async with ws_connect(sim.ws_url + "/ws") as ws:
        for i in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
    assert sim.stats.cut_rate_limit == 1


async def test_connection_age_cut_preceded_by_server_shutdown() -> None:
    """At max_connection_age the server closes, after a serverShutdown event (both forms)."""
    s = await start_sim(max_connection_age=1.0, shutdown_notice=0.5)
    try:
        for path, combined in (("/ws", False), ("/stream", True)):
            async with ws_connect(s.ws_url + path) as ws:
                t0 = time.monotonic()
                event = await recv_json(ws)
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


async def test_fault_drop_closes_every_connection(sim: Simulator) -> None:
    """drop aborts every client connection at once; the count falls to zero."""
    async with (
        ws_connect(sim.ws_url + "/ws/btcusdt@trade") as a,
        ws_connect(sim.ws_url + "/ws") as b,
    ):
        await until(lambda: sim.connections == 2, 5, "two connections")
        await admin(sim, drop=True)
        for ws in (a, b):
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5 * UNIT)
    await until(lambda: sim.connections == 0, 5, "connections dropped")
    assert sim.stats.total_connects == 2


async def test_fault_refuse_answers_non_101(sim: Simulator) -> None:
    """refuse makes the WS handshake fail with 503; clearing it lets clients in again."""
    await admin(sim, refuse=True)
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sim.ws_url + "/ws"):
            pass
    assert info.value.response.status_code == 503
    state = await admin(sim, clear=True)
    assert state["refused"] == 1 and state["faults"]["refuse"] is False
    async with ws_connect(sim.ws_url + "/ws"):
        await until(lambda: sim.connections == 1, 5, "connection after clear")


async def test_fault_stall_keeps_socket_but_sends_nothing() -> None:
    """stall stops frames and pings while the socket stays open; clearing resumes them."""
    s = await start_sim(trade_rate=50.0, ping_interval=0.1, pong_timeout=0.3)
    try:
        async with ws_connect(s.ws_url + "/ws/btcusdt@trade") as ws:
            await recv_json(ws)
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
            assert (await recv_json(ws))["e"] == "trade"
    finally:
        await s.stop()
