"""`pricectl serve` as a real process, end to end with the simulator: live prices, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pricectl.simulator import Simulator
from tests.server.harness import SSEConn
from tests.server.serve_process import serve_process as serve_process_at
from tests.waiting import UNIT, until

STREAM = "/api/market-data/stream?pairs=BTC/USD,ETH/USD"


@contextlib.asynccontextmanager
async def serve_process(
    sim: Simulator, *args: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`pricectl serve --port 0` against the simulator; yields the process and its port."""
    with tempfile.TemporaryDirectory(prefix="pricectl-serve-") as tmp:
        async with serve_process_at(
            Path(tmp) / "serve.log",
            *args,
            env={
                "BINANCE_WS_URL": sim.ws_url,
                "BINANCE_REST_URL": sim.rest_url,
                "PRICECTL_PAIRS": "[BTC/USD, ETH/USD]",
                "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
                **env,
            },
        ) as serve:
            yield serve.proc, serve.port


async def test_embedded_serve_streams_simulator_prices_and_drains_on_sigterm():
    """One `pricectl serve` (memory://) streams live simulator prices; SIGTERM tells
    clients to come back later, closes every stream and exits 0."""
    sim = Simulator()
    await sim.start()
    try:
        async with serve_process(sim) as (proc, port):
            clients = [await SSEConn.open(port, STREAM) for _ in range(3)]
            for c in clients:
                # snapshots, then at least a few live price events
                async def live(c: SSEConn = c) -> bool:
                    await c.wait_events(len(c.events) + 1, timeout=10)
                    return sum(e.event == "price" for e in c.events) >= 3

                await until(live, 30, "live prices from the simulator")
                obj = json.loads(c.events[-1].data)
                assert obj["pair"] in ("BTC/USD", "ETH/USD")
                assert obj["source"] in ("ws", "rest")
            proc.send_signal(signal.SIGTERM)
            for c in clients:
                await c.read_until_closed(timeout=10)
            assert all(b": server restarting\nretry: " in c.body for c in clients)
            for c in clients:
                assert 1000 <= c.decoder.retry <= 2000
            code = await asyncio.wait_for(proc.wait(), 15 * UNIT)
            assert code == 0
            # stopped listening
            with pytest.raises(OSError):
                await SSEConn.open(port, STREAM)
    finally:
        await sim.stop()


async def test_workers_refused_with_memory_bus():
    """--workers 2 with memory:// is a usage error explaining why (exit 2)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pricectl.cli",
        "serve",
        "--workers",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20 * UNIT)
    assert proc.returncode == 2
    assert b"shared bus" in err and b"redis://" in err
