"""The simulator as a whole: admin endpoints, state(), its config and its package."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from dataclasses import asdict

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricectl.simulator import Faults, Simulator, SimulatorConfig
from tests.simulator.client import get, recv_json, reply, ws_connect
from tests.waiting import UNIT, until


async def test_admin_server_shutdown_warns_then_cuts(sim: Simulator) -> None:
    """POST /admin/shutdown sends serverShutdown now and cuts every connection after after_s."""
    async with ws_connect(sim.ws_url + "/ws/btcusdt@ticker") as ws:
        await until(lambda: sim.connections == 1, 5, "connection")
        async with aiohttp.ClientSession() as session:
            r = await session.post(sim.rest_url + "/admin/shutdown", json={"after_s": 0.2})
            assert r.status == 200
        while (await recv_json(ws)).get("e") != "serverShutdown":
            pass
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
    await until(lambda: sim.connections == 0, 5, "connections closed")


async def test_admin_rejects_unknown_faults(sim: Simulator) -> None:
    """An unknown fault name is a 400 naming it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.rest_url + "/admin/fault", json={"explode": True}) as r,
    ):
        assert r.status == 400 and "explode" in (await r.json())["error"]


async def test_admin_state_counts_connections_and_messages(sim: Simulator) -> None:
    """GET /admin/state reports connections held, total connects and messages received."""
    async with ws_connect(sim.ws_url + "/ws") as ws:
        await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        async with aiohttp.ClientSession() as session:
            _, state, _ = await get(session, sim.rest_url + "/admin/state")
    assert state["connections"] == 1 and state["total_connects"] == 1
    assert state["messages_received"] == 1 and state["subscriptions"] == [[]]


async def test_set_fault_from_code_shows_in_state(sim: Simulator) -> None:
    """set_fault from code takes effect at once and shows in state(); clear resets every fault."""
    assert sim.connections == 0 and sim.state()["connections"] == 0
    async with aiohttp.ClientSession() as session:
        assert (await get(session, sim.rest_url + "/api/v3/ping"))[:2] == (200, {})
        sim.set_fault(rest500=True, garbage=2)
        assert sim.state()["faults"] == {
            "stall": False,
            "garbage": 2.0,
            "refuse": False,
            "rest429": False,
            "rest500": True,
            "rest418": False,
            "clock_skew_ms": 0,
            "feed_delay_ms": 0,
        }
        assert (await get(session, sim.rest_url + "/api/v3/ping"))[0] == 500
        sim.set_fault(clear=True)
        assert sim.state()["faults"] == asdict(Faults())
        assert (await get(session, sim.rest_url + "/api/v3/ping"))[:2] == (200, {})


def test_state_has_no_replay_without_a_recording() -> None:
    """A simulator walking its market reports replay None and every counter at zero."""
    state = Simulator(SimulatorConfig()).state()
    assert state["replay"] is None and state["subscriptions"] == []
    assert state["total_connects"] == 0 and state["rest_requests"] == 0


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


def test_importing_the_package_loads_no_server() -> None:
    """Importing pricectl.simulator and its pure modules loads no aiohttp and starts no thread."""
    probe = (
        "import sys, threading\n"
        "import pricectl.simulator, pricectl.simulator.market, pricectl.simulator.control\n"
        "print(json.dumps({'aiohttp': 'aiohttp' in sys.modules,"
        " 'threads': threading.active_count()}))\n"
        "from pricectl.simulator import Simulator, SimulatorConfig, symbols_for_pairs\n"
        "print(json.dumps({'names': [Simulator.__name__, SimulatorConfig.__name__,"
        " symbols_for_pairs.__name__]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first == {"aiohttp": False, "threads": 1}
    assert second == {"names": ["Simulator", "SimulatorConfig", "symbols_for_pairs"]}


def test_simulate_command_takes_the_limits() -> None:
    """simulate's --max-streams, --all-trading, --refuse-unlisted, --max-url-length and
    --max-control-bytes reach the exchange."""
    from websockets.sync.client import connect

    limits = ["--max-streams", "2", "--all-trading", "--refuse-unlisted", "--max-url-length", "500"]
    limits += ["--max-control-bytes", "100"]
    cmd = [sys.executable, "-m", "pricectl.cli", "simulate", "--port", "0", "--pairs", "BTC/USD"]
    with subprocess.Popen(
        [*cmd, *limits], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("BINANCE_WS_URL=ws://127.0.0.1:"), line
            ws_url = line.strip().partition("=")[2]
            rest_url = proc.stdout.readline().strip().partition("=")[2]
            with urllib.request.urlopen(rest_url + "/api/v3/exchangeInfo", timeout=10) as r:
                assert {e["status"] for e in json.load(r)["symbols"]} == {"TRADING"}
            for path, status in (
                ("/stream?streams=btcusdt@trade/ethusdt@trade/bnbusdt@trade", 400),
                ("/ws/xrpxrp@trade", 400),
                ("/ws/" + "a" * 500 + "@trade", 414),
            ):
                with pytest.raises(InvalidStatus) as info:
                    connect(ws_url + path, open_timeout=5).close()
                assert info.value.response.status_code == status, path
            with connect(ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
                assert json.loads(ws.recv(timeout=5))["stream"] in (
                    "btcusdt@trade",
                    "ethusdt@trade",
                )
                too_big = {"method": "UNSUBSCRIBE", "params": ["x" * 100 + "@trade"], "id": 1}
                ws.send(json.dumps(too_big))
                ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                while "id" not in (answer := json.loads(ws.recv(timeout=5))):
                    pass
                assert answer["id"] == 2  # the UNSUBSCRIBE over 100 bytes got no answer
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
