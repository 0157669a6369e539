"""`pricectl serve --workers 2` on a Redis bus: one port, two processes, each its own
subscription; clients spread over both and all get every update; SIGTERM stops all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pricectl.bus import keys
from pricectl.bus.base import Fence
from pricectl.bus.redis import RedisBus
from pricectl.loadtest.spawn import free_port
from tests.redis_server import RedisServer
from tests.server.harness import SSEConn, tick
from tests.server.serve_process import serve_env
from tests.waiting import UNIT, until

STREAM = "/api/market-data/stream?pairs=BTC/USD,ETH/USD"
CLIENTS = 24
TOKEN = "test-leader-1"
EPOCH = 7


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tcp_rows() -> list[list[str]]:
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(name).read_text().splitlines()[1:]]
    return rows


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _listeners(port: int) -> int:
    """How many sockets listen on ``port`` (state 0A = LISTEN)."""
    return sum(1 for r in _tcp_rows() if _port_of(r[1]) == port and r[3] == "0A")


def _owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The worker pid whose fd table holds the server end of the connection from client_port."""
    inodes = {
        r[9] for r in _tcp_rows() if _port_of(r[1]) == server_port and _port_of(r[2]) == client_port
    }
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    return None


@contextlib.asynccontextmanager
async def workers_process(redis_url: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`pricectl serve --workers 2` on the Redis bus; killed (with its workers) if left running."""
    env = serve_env(
        PRICECTL_BUS__URL=redis_url,
        PRICECTL_PAIRS="[BTC/USD, ETH/USD]",
        PRICECTL_EXCHANGE__CHECK_SYMBOLS="false",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pricectl.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            for child in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(120)
async def test_two_workers_share_the_port_each_delivers_every_update_sigterm_stops_both(
    redis_server: RedisServer,
) -> None:
    """Clients on one port land on both workers, each gets every update; SIGTERM ends all."""
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.set(keys.leader(""), TOKEN, px=120_000)
    await raw.set(keys.epoch(""), str(EPOCH))
    await raw.aclose()
    bus = RedisBus(redis_server.url)
    await bus.start()
    fence = Fence(TOKEN, EPOCH)
    ticker = tick(EPOCH)
    await bus.publish([ticker("BTC/USD", "1"), ticker("ETH/USD", "1")], fence)
    port = free_port()
    clients: list[SSEConn] = []
    try:
        async with workers_process(redis_server.url, port) as proc:
            await until(lambda: _listeners(port) == 2, 30, "two workers listening on one port")
            workers = _children(proc.pid)
            assert len(workers) == 2
            for _ in range(CLIENTS):
                clients.append(await SSEConn.open(port, STREAM))
            assert all(c.status == 200 for c in clients)

            async def snapshots() -> bool:
                for c in clients:
                    if sum(e.event == "snapshot" for e in c.events) < 2:
                        with contextlib.suppress(AssertionError):
                            await c.wait_events(len(c.events) + 1, timeout=0.2)
                        return False
                return True

            await until(snapshots, 30, "every client's snapshot of both pairs")

            owners = {
                _owner(port, c.writer.get_extra_info("sockname")[1], workers)  # type: ignore[union-attr]
                for c in clients
            }
            assert owners == set(workers), f"clients not spread over both workers: {owners}"

            published = []
            for i in range(10):
                published.append(ticker("BTC/USD", f"{100 + i}"))
                published.append(ticker("ETH/USD", f"{200 + i}"))
            await bus.publish(published, fence)
            want = {(u.pair, u.seq) for u in published}
            for c in clients:

                async def got_all(c: SSEConn = c) -> bool:
                    have = {
                        (o["pair"], o["seq"])
                        for o in (json.loads(e.data) for e in c.events if e.event == "price")
                    }
                    if want <= have:
                        return True
                    with contextlib.suppress(AssertionError):
                        await c.wait_events(len(c.events) + 1, timeout=0.5)
                    return False

                await until(got_all, 20, "every update on every client")
                prices = [json.loads(e.data) for e in c.events if e.event == "price"]
                assert len(prices) == len(published), "a duplicate event"
                assert [e.id for e in c.events if e.event == "price"] == [
                    f"{EPOCH}-{u.gseq}" for u in published
                ]

            proc.send_signal(signal.SIGTERM)
            for c in clients:
                await c.read_until_closed(timeout=15)
            assert all(b"retry: " in c.body[-200:] for c in clients)
            assert await asyncio.wait_for(proc.wait(), 20 * UNIT) == 0
            assert not any(Path(f"/proc/{w}").exists() for w in workers)
            assert _listeners(port) == 0
    finally:
        for c in clients:
            c.close()
        await bus.close()
