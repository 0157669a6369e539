"""One loader process's epoll worker on real sockets: connect, read, pause, server closes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator

import pytest

from pricectl.loadtest.client import Client
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.worker import _Worker
from tests.loadtest.responses import HEAD, frame
from tests.waiting import until


class _Stream:
    """A listening socket on port 0 that answers every GET with serve's head, then holds."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        self.writers.append(writer)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def send(self, data: bytes, to: list[int] | None = None) -> None:
        """Write ``data`` to every open response (or to those at indexes ``to``)."""
        for i, w in enumerate(self.writers):
            if to is None or i in to:
                w.write(data)
                await w.drain()

    async def close_all(self) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def stream() -> AsyncIterator[_Stream]:
    """A stream server for the test, closed after it."""
    s = _Stream()
    await s.start()
    try:
        yield s
    finally:
        await s.close_all()


async def _worker(port: int, clients: int) -> tuple[_Worker, list[Client]]:
    pairs = ("BTC/USD",)
    plan = Plan("127.0.0.1", port, pairs, clients, ramp=1, duration=1, processes=1)
    parent, child = multiprocessing.Pipe()
    parent.close()  # no parent here: nothing is sent in these tests
    worker = _Worker(plan, 0, clients, child)
    worker.window.t0, worker.window.t1 = 0, 1 << 62
    worker.loop.add_reader(worker.epoll.fileno(), worker.pump)
    group = [Client(i, worker) for i in range(clients)]
    for c in group:
        worker.clients.append(c)
        worker.launch(c)
    return worker, group


def _stop(worker: _Worker) -> None:
    worker.window.stopping = True
    for c in worker.clients:
        c.close()
    for t in list(worker.tasks):
        t.cancel()
    worker.loop.remove_reader(worker.epoll.fileno())
    worker.epoll.close()
    worker.conn.close()


async def test_every_client_is_read_from_the_one_epoll(stream: _Stream) -> None:
    """Three clients connect, get their snapshot and events; the final report adds them up."""
    worker, group = await _worker(stream.port, 3)
    try:
        await until(lambda: worker.stats.established == 3, 10, "3 clients established")
        assert sorted(worker.by_fd) == sorted(c.sock.fileno() for c in group if c.sock)
        now = time.time_ns()
        await stream.send(frame(1, now, "snapshot"))
        for seq in (2, 3, 4):
            await stream.send(frame(seq, now))
        await until(lambda: worker.stats.events_window == 9, 10, "9 events in the window")
        final = worker.final()
        assert final["established"] == 3 and final["snapshots"] == 3
        assert final["fast_clients"] == 3 and final["fast_events_window"] == 9
        assert final["ranges"] == [["BTC/USD", 7, 2, 4]] and final["open_at_end"] == 3
        assert final["sequence"]["gaps"] == 0 and final["latency"]["count"] == 9
    finally:
        _stop(worker)


async def test_a_paused_socket_is_not_read_and_the_others_are(stream: _Stream) -> None:
    """A slow reader's socket leaves the epoll: its events wait in the kernel, others flow."""
    worker, group = await _worker(stream.port, 2)
    try:
        await until(lambda: len(stream.writers) == 2, 10, "2 requests")
        await until(lambda: worker.stats.established == 2, 10, "2 clients established")
        now = time.time_ns()
        await stream.send(frame(1, now, "snapshot"))
        await until(lambda: worker.stats.snapshots == 2, 10, "2 snapshots")
        group[0].pause()
        assert group[0].slow and group[0].sock is not None
        for seq in (2, 3):
            await stream.send(frame(seq, now))
        await until(lambda: group[1].events_window == 2, 10, "the reading client's 2 events")
        assert group[0].events_window == 0
        assert worker.final()["slow_clients"] == 1
    finally:
        _stop(worker)


async def test_the_server_closing_is_seen_by_the_pump(stream: _Stream) -> None:
    """The server closes every response: each is a server close and leaves the epoll."""
    worker, _group = await _worker(stream.port, 2)
    try:
        await until(lambda: worker.stats.established == 2, 10, "2 clients established")
        worker.window.stopping = True  # no reconnects: only the closes are counted
        for w in stream.writers:
            w.close()
        await until(lambda: worker.stats.server_closes == 2, 10, "2 server closes")
        assert worker.by_fd == {} and worker.final()["open_at_end"] == 0
    finally:
        _stop(worker)
