"""Test support for the simulator tests: a simulator on port 0 and the client side of its wire."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from pricectl.simulator import Simulator, SimulatorConfig
from tests.waiting import UNIT

__all__ = [
    "AGG_KEYS",
    "BOOK_KEYS",
    "MINI_KEYS",
    "TICKER_KEYS",
    "TRADE_KEYS",
    "admin",
    "first_of",
    "get",
    "recv_json",
    "reply",
    "start_sim",
    "ws_connect",
]

#: The documented keys of each stream kind, in the documented order.
TICKER_KEYS = list("eEspPwxcQbBaAohlvqOCFLn")
MINI_KEYS = list("eEscohlvq")
BOOK_KEYS = list("usbBaA")
AGG_KEYS = list("eEsapqflTmM")
TRADE_KEYS = list("eEstpqTmM")


async def start_sim(**kw: Any) -> Simulator:
    """A started simulator with these :class:`SimulatorConfig` knobs; the caller stops it."""
    sim = Simulator(SimulatorConfig(**kw))
    await sim.start("127.0.0.1", 0)
    return sim


def ws_connect(url: str) -> Any:
    """A websockets client that sends no pings of its own (they count toward 5 msg/s)."""
    return connect(url, ping_interval=None, open_timeout=5 * UNIT)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout * UNIT))


async def reply(ws: ClientConnection, request: dict[str, Any] | str) -> Any:
    """Send a control request and return the first frame that carries an ``id``."""
    await ws.send(request if isinstance(request, str) else json.dumps(request))
    deadline = time.monotonic() + 5 * UNIT
    while time.monotonic() < deadline:
        msg = await recv_json(ws)
        if isinstance(msg, dict) and "id" in msg:
            return msg
    raise AssertionError("no control reply")


async def first_of(ws: ClientConnection, stream: str) -> Any:
    """The data of the first combined frame of ``stream``."""
    while True:
        msg = await recv_json(ws)
        if msg.get("stream") == stream:
            return msg["data"]


async def get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any, Any]:
    """GET ``url``: its status, JSON body and headers."""
    async with session.get(url, params=params) as r:
        return r.status, await r.json(), r.headers


async def admin(sim: Simulator, **body: Any) -> dict[str, Any]:
    """``POST /admin/fault`` with ``body``; the state it answers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.rest_url + "/admin/fault", json=body) as r,
    ):
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result
