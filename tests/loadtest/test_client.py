"""One loader client, driven through the ClientHost protocol by a host of the test's own.

The client never reads a socket: its host hands it the bytes. So the bytes serve writes
go straight into :meth:`Client.data_received` here, and the host is a plain object with
what the protocol asks for, which also shows the protocol is all a client needs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from pricectl.loadtest.client import Client
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.wire import FrameMemo
from pricectl.loadtest.worker import Window, WorkerStats
from tests.loadtest.responses import EPOCH, HEAD, chunk, frame


class _Host:
    """A ClientHost that records what its clients ask of it instead of reading sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = Plan(
            host="127.0.0.1", port=1, pairs=("BTC/USD",), clients=1, ramp=1, duration=1, processes=1
        )
        self.stats = WorkerStats()
        self.window = Window()
        self.memo = FrameMemo()
        self.loop = loop
        self.address: tuple[int, Any] = (socket.AF_INET, ("127.0.0.1", 1))
        self.settled_clients: list[int] = []
        self.launched: list[int] = []

    def attach(self, client: Client, sock: socket.socket) -> None:
        raise AssertionError("no connection in these tests")

    def pause(self, sock: socket.socket) -> None:
        raise AssertionError("no connection in these tests")

    def detach(self, sock: socket.socket) -> None:
        raise AssertionError("no connection in these tests")

    def launch(self, client: Client) -> None:
        self.launched.append(client.index)

    def settled(self, client: Client) -> None:
        self.settled_clients.append(client.index)


async def test_events_are_counted_against_the_window() -> None:
    """Before the window: pre; in it: latency, delivery and seq range; after: caught up."""
    host = _Host(asyncio.get_running_loop())
    now = time.time_ns()
    host.window.t0, host.window.t1 = now, now + 10_000
    client = Client(0, host)
    client.data_received(HEAD)
    client.data_received(frame(1, now - 5, "snapshot"))
    assert host.stats.established == 1 and host.settled_clients == [0]
    assert host.stats.snapshots == 1 and host.stats.snapshot_ms.count == 1
    client.data_received(frame(2, now - 1))  # before the window
    for seq in (3, 4, 5):
        client.data_received(frame(seq, now + seq))  # in it
    client.data_received(frame(6, now + 20_000))  # after it
    s = host.stats
    assert (s.events, s.events_pre, s.events_window, client.events_window) == (5, 1, 3, 3)
    assert s.window.count == 3 and s.interval.count == 1
    assert s.ranges == {("BTC/USD", EPOCH): [3, 5]}
    assert client.caught_up == {"BTC/USD"}
    assert client.last_id == f"{EPOCH}-6"
    assert client.tracker.stats.gaps == 0 and client.tracker.stats.duplicates == 0


async def test_a_duplicate_is_not_delivered_twice() -> None:
    """The same (epoch, seq) again is an event received but not one more delivered."""
    host = _Host(asyncio.get_running_loop())
    host.window.t0, host.window.t1 = 0, 1 << 62
    client = Client(0, host)
    now = time.time_ns()
    client.data_received(HEAD + frame(1, now, "snapshot"))
    client.data_received(frame(2, now))
    client.data_received(frame(2, now))
    assert host.stats.events == 2 and host.stats.events_window == 1
    assert client.tracker.stats.duplicates == 1


async def test_a_refusal_is_a_failed_attempt_retried_after_retry_after() -> None:
    """503 with Retry-After: counted as http-503, settled, and retried after those seconds."""
    host = _Host(asyncio.get_running_loop())
    client = Client(4, host)
    client.data_received(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    )
    assert host.stats.failed == {"http-503": 1} and host.stats.established == 0
    assert host.settled_clients == [4]
    assert client.retry_ms == 7000 and host.stats.reconnects == 1


async def test_a_server_close_after_the_head_is_counted_and_retried() -> None:
    """The server ending the stream is a server close, not a failed attempt; then a retry."""
    host = _Host(asyncio.get_running_loop())
    client = Client(0, host)
    client.data_received(HEAD + chunk(b"retry: 1500\n\n"))
    client.lost(None)
    assert host.stats.server_closes == 1 and host.stats.failed == {}
    assert client.retry_ms == 1500 and host.stats.reconnects == 1
    host.window.stopping = True  # stopping: no more retries
    client.lost(None)
    assert host.stats.server_closes == 2 and host.stats.reconnects == 1


async def test_garbage_in_the_head_is_a_protocol_failure() -> None:
    """Bytes that are no HTTP response fail the attempt as "protocol"."""
    host = _Host(asyncio.get_running_loop())
    client = Client(0, host)
    client.data_received(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    assert host.stats.failed == {"protocol": 1} and host.settled_clients == [0]
