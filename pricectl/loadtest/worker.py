"""One loader process: its clients, the epoll that reads them, the ramp, the window, the report.

A worker (:class:`_Worker`, started by :func:`worker_entry` in a forked process) runs
one asyncio loop holding a few thousand :class:`~pricectl.loadtest.client.Client`
objects. asyncio connects their sockets and runs the timers; the worker reads all of
them itself from one epoll (:meth:`_Worker.pump`, the loader's hot loop) and hands
each read to its client. It is the :class:`~pricectl.loadtest.client.ClientHost` of
its clients. The loader's CPU per event is measured in docs/benchmarks.md;
``python -m benchmarks.loader_bench`` times the per-event Python path alone. Linux
only (epoll).

It talks to the parent (:mod:`pricectl.loadtest.runner`) over a pipe: ``progress``
twice a second, ``ready`` once the ramp has settled, then, after the window the parent
sent and the drain, one ``final`` with everything in :class:`WorkerStats` (or
``failed`` naming what went wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from pricectl.core.histogram import Histogram
from pricectl.loadtest.client import Client
from pricectl.loadtest.plan import FD_MARGIN, Plan, raise_nofile_limit
from pricectl.loadtest.wire import FrameMemo

__all__ = ["Window", "WorkerStats", "worker_entry"]

_PROGRESS_EVERY = 0.5
_NO_WINDOW = 1 << 62
#: Ready sockets read per :meth:`_Worker.pump` call before the event loop gets a turn...
_PUMP_BATCH = 1024
#: ... or after this many seconds: an overloaded worker (reads full of backlog) still
#: runs its timers, answers the parent and sends its report on time.
_PUMP_BUDGET = 0.02
#: The budget is checked every this many sockets (not per socket: that costs per event).
_PUMP_SLICE = 64
_monotonic = time.monotonic
#: One read takes whatever is there up to this; one event is a few hundred bytes.
_RECV_SIZE = 65536


@dataclass
class WorkerStats:
    """Counts of one loader process; everything here adds up across processes."""

    attempted: int = 0
    established: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    server_closes: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    events: int = 0
    events_window: int = 0
    events_pre: int = 0
    snapshots: int = 0
    window: Histogram = field(default_factory=Histogram)
    interval: Histogram = field(default_factory=Histogram)
    connect_ms: Histogram = field(default_factory=Histogram)
    snapshot_ms: Histogram = field(default_factory=Histogram)
    storm_ms: Histogram = field(default_factory=Histogram)
    silence_ms: Histogram = field(default_factory=Histogram)
    #: (pair, epoch) -> [lowest, highest] seq seen in the window by any client here.
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        """Count one failed connection attempt by ``reason``."""
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def error(self, reason: str) -> None:
        """Count one error on an open stream by ``reason``."""
        self.errors[reason] = self.errors.get(reason, 0) + 1


class Window:
    """The measurement window shared by a worker's clients (wall-clock ns)."""

    __slots__ = ("stopping", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = _NO_WINDOW  # nothing is "in the window" before the parent says so
        self.t1 = _NO_WINDOW
        self.stopping = False


class _Worker:
    """One loader process: its clients, the ramp, the window, progress messages."""

    def __init__(self, plan: Plan, first: int, count: int, conn: Connection) -> None:
        self.plan = plan
        self.first = first
        self.count = count
        self.conn = conn
        self.stats = WorkerStats()
        self.window = Window()
        self.memo = FrameMemo()
        self.loop = asyncio.get_running_loop()
        #: Every open client socket, read by :meth:`pump` when this epoll says so.
        self.epoll = select.epoll()
        self.by_fd: dict[int, Client] = {}
        #: ``(family, sockaddr)`` of the server, resolved once in :meth:`main`.
        self.address: tuple[int, Any] = (socket.AF_INET, (plan.host, plan.port))
        self.clients: list[Client] = []
        self.pending_settle: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.window_set = asyncio.Event()
        self.parent_gone = asyncio.Event()
        self.ready_sent = False
        self.cpu_window = 0.0
        self.wall_window = 0.0
        self.window_late = False
        self._prev_window: list[int] = [0] * len(self.stats.window.counts)

    # -- reading every client's socket --

    def attach(self, client: Client, sock: socket.socket) -> None:
        """Start reading ``client``'s newly connected socket."""
        fd = sock.fileno()
        self.by_fd[fd] = client
        self.epoll.register(fd, select.EPOLLIN)

    def pause(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` (a slow reader) but keep it open."""
        with contextlib.suppress(OSError):  # already paused
            self.epoll.unregister(sock.fileno())

    def detach(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` and close it."""
        fd = sock.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError):  # paused: not registered
            self.epoll.unregister(fd)
        sock.close()

    def pump(self) -> None:
        """Read every socket that has data and hand the bytes to its client.

        The hot loop of the loader, one call per wake-up of the event loop for all ready
        sockets (at most ``_PUMP_BUDGET`` seconds of them): a ``recv`` and a
        :meth:`Client.data_received` per ready socket, nothing per socket in asyncio (no
        transport, no handle, no selector key). The kernel's receive path is most of what
        an event costs the loader (docs/benchmarks.md).
        """
        by_fd = self.by_fd
        deadline = _monotonic() + _PUMP_BUDGET
        ready = self.epoll.poll(0, _PUMP_BATCH)
        for start in range(0, len(ready), _PUMP_SLICE):
            if start and _monotonic() > deadline:
                return  # let the loop run timers and control messages; the rest stay ready
            for fd, _mask in ready[start : start + _PUMP_SLICE]:
                client = by_fd.get(fd)
                if client is None or client.sock is None:
                    continue
                try:
                    data = client.sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    client.lost(exc)
                    continue
                if data:
                    client.data_received(data)
                else:
                    client.lost(None)

    def launch(self, client: Client) -> None:
        """Start (or restart) ``client``'s connection attempt, keeping the task referenced."""
        if self.window.stopping:
            return
        task = self.loop.create_task(client.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def settled(self, client: Client) -> None:
        """``client``'s attempt ended (established or failed): counts toward ``ready``."""
        self.pending_settle.discard(client.index)

    def _on_control(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(self.conn.fileno())
            self.parent_gone.set()
            return
        if msg[0] == "window":
            self.window.t0, self.window.t1 = msg[1], msg[2]
            self.window_late = time.time_ns() > msg[1]
            self.window_set.set()
        elif msg[0] == "stop":
            self.parent_gone.set()

    def _send(self, *msg: Any) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(msg)

    def _progress(self) -> None:
        s = self.stats
        connected = sum(1 for c in self.clients if c.sock is not None and not c.slow)
        self._send(
            "progress",
            {
                "t": time.monotonic(),
                "connected": connected,
                "attempted": s.attempted,
                "established": s.established,
                "failed": sum(s.failed.values()),
                "errors": sum(s.errors.values()) + s.server_closes,
                "events": s.events,
                "interval": self._interval(),
            },
        )

    def _interval(self) -> dict[str, object]:
        """Latencies since the last progress message: pre-window ones plus the window's delta."""
        s = self.stats
        h = s.interval
        counts = s.window.counts
        prev = self._prev_window
        if s.window.count:
            low = min(h.min, s.window.min) if h.count else s.window.min
            for i, (a, b) in enumerate(zip(counts, prev, strict=True)):
                if a != b:
                    h.counts[i] += a - b
                    h.count += a - b
            h.max = max(h.max, s.window.max)
            h.min = low
        self._prev_window = list(counts)
        out = h.to_dict()
        h.reset()
        return out

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_EVERY)
            self._progress()

    async def _ramp(self) -> None:
        plan = self.plan
        rate = max(plan.ramp / plan.processes, 1e-3)
        start = self.loop.time()
        issued = 0
        while issued < self.count:
            due = min(self.count, int((self.loop.time() - start) * rate) + 1)
            while issued < due:
                client = Client(self.first + issued, self)
                self.clients.append(client)
                self.pending_settle.add(client.index)
                self.launch(client)
                issued += 1
            await asyncio.sleep(0.001 if rate > 1000 else min(1.0 / rate, 0.05))

    async def main(self) -> None:
        """Ramp, window, drain; then always one ``final`` (or ``failed``) to the parent.

        The report goes out whatever happened: the window ran and drained, the drain
        timed out with clients behind (an overloaded loader), the parent asked to stop
        early, or something here raised (then ``failed`` names it).
        """
        plan = self.plan
        with contextlib.suppress(OSError):  # unresolvable: every connect fails and says so
            infos = await self.loop.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
            self.address = (infos[0][0], infos[0][4])
        self.loop.add_reader(self.epoll.fileno(), self.pump)
        self.loop.add_reader(self.conn.fileno(), self._on_control)
        ticker = self.loop.create_task(self._ticker())
        actions: list[asyncio.TimerHandle] = []
        try:
            try:
                await self._phases(actions)
            finally:
                for a in actions:
                    a.cancel()
                ticker.cancel()
            self._progress()
            self._send("final", self.final())
        except Exception as exc:  # reported by the parent as this worker's failure
            self._send("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.window.stopping = True
            for c in self.clients:
                c.close()
            for t in list(self.tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.conn.fileno())
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()

    async def _phases(self, actions: list[asyncio.TimerHandle]) -> None:
        plan = self.plan
        slow_every = _slow_selector(plan.slow_share)
        ramp_end = self.loop.time() + self.count / max(plan.ramp / plan.processes, 1e-3)
        ramp = self.loop.create_task(self._ramp())
        self.tasks.add(ramp)
        ramp.add_done_callback(self.tasks.discard)
        deadline = ramp_end + plan.ready_timeout
        while not self.parent_gone.is_set():
            if ramp.done() and not self.pending_settle:
                break
            if self.loop.time() > deadline:
                break
            await asyncio.sleep(0.01)
        if self.parent_gone.is_set():
            return
        await ramp
        self._send("ready", {"established": self.stats.established})
        await _first(self.window_set.wait(), self.parent_gone.wait())
        if self.parent_gone.is_set():
            return
        w = self.window
        start_in = max(0.0, (w.t0 - time.time_ns()) / 1e9)
        if plan.slow_share > 0:
            slow = [c for c in self.clients if slow_every(c.index)]
            actions.append(self.loop.call_later(start_in + plan.slow_at, _each, slow, "pause"))
        if plan.drop_at is not None:
            fast = [c for c in self.clients if not slow_every(c.index)]
            actions.append(self.loop.call_later(start_in + plan.drop_at, _each, fast, "drop"))
        await _first(asyncio.sleep(start_in), self.parent_gone.wait())
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        await _first(asyncio.sleep((w.t1 - time.time_ns()) / 1e9), self.parent_gone.wait())
        self.cpu_window = _cpu_seconds() - cpu0
        self.wall_window = time.monotonic() - wall0
        drain_end = self.loop.time() + plan.drain_timeout
        while self.loop.time() < drain_end and not self.parent_gone.is_set():
            if not self._behind():
                break
            await asyncio.sleep(0.05)

    def _behind(self) -> int:
        """Reading clients that have not yet seen an update ingested after the window."""
        return sum(
            1
            for c in self.clients
            if not c.slow and c.sock is not None and len(c.caught_up) < c.npairs
        )

    def final(self) -> dict[str, Any]:
        """Everything the parent adds up into the report."""
        s = self.stats
        for c in self.clients:
            if c.max_silence and not c.slow:
                s.silence_ms.record(c.max_silence // 1_000_000)
        seq = {"gaps": 0, "missing": 0, "duplicates": 0, "resyncs": 0, "epoch_changes": 0}
        fast = slow = fast_events = slow_events = open_at_end = 0
        for c in self.clients:
            st = c.tracker.stats
            seq["gaps"] += st.gaps
            seq["missing"] += st.missing
            seq["duplicates"] += st.duplicates
            seq["resyncs"] += st.resyncs
            seq["epoch_changes"] += st.epoch_changes
            if c.slow:
                slow += 1
                slow_events += c.events_window
            else:
                fast += 1
                fast_events += c.events_window
                if c.sock is not None:
                    open_at_end += 1
        fast += self.count - len(self.clients)  # clients the ramp never reached
        # Reading clients per pair (with per-client pair sets they differ from pair to
        # pair): what a pair's published updates are multiplied by for the expected count.
        pair_clients: dict[str, int] = {}
        for c in self.clients:
            if not c.slow:
                for pair in c.pairs:
                    pair_clients[pair] = pair_clients.get(pair, 0) + 1
        for index in range(self.first + len(self.clients), self.first + self.count):
            for pair in self.plan.pairs_of(index):
                pair_clients[pair] = pair_clients.get(pair, 0) + 1
        return {
            "attempted": s.attempted,
            "established": s.established,
            "failed": dict(s.failed),
            "server_closes": s.server_closes,
            "reconnects": s.reconnects,
            "errors": dict(s.errors),
            "events": s.events,
            "events_window": s.events_window,
            "events_pre": s.events_pre,
            "snapshots": s.snapshots,
            "latency": s.window.to_dict(),
            "connect_ms": s.connect_ms.to_dict(),
            "snapshot_ms": s.snapshot_ms.to_dict(),
            "storm_ms": s.storm_ms.to_dict(),
            "silence_ms": s.silence_ms.to_dict(),
            "ranges": [[p, e, r[0], r[1]] for (p, e), r in s.ranges.items()],
            "sequence": seq,
            "fast_clients": fast,
            "slow_clients": slow,
            "fast_events_window": fast_events,
            "pair_clients": pair_clients,
            # Each reading client's window count, so a caller can hold every client to
            # what was published for its own pairs (``Plan.pairs_of``).
            "client_events": [[c.index, c.events_window] for c in self.clients if not c.slow],
            "slow_events_window": slow_events,
            "open_at_end": open_at_end,
            "cpu_s": _cpu_seconds(),
            "cpu_window_s": self.cpu_window,
            "window_late": self.window_late,
            # reading clients still behind the window's end when this was sent: their
            # last events of the window were not read (loader or server overloaded)
            "behind": self._behind() if self.window.t1 < _NO_WINDOW else 0,
            "stopped": self.parent_gone.is_set(),
            "wall_window_s": self.wall_window,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def _each(clients: list[Client], action: str) -> None:
    for c in clients:
        getattr(c, action)()


def _slow_selector(share: float) -> Callable[[int], bool]:
    """Spread ``share`` of clients evenly by index (client i is slow when i*share crosses 1)."""
    if share <= 0:
        return lambda i: False
    return lambda i: int((i + 1) * share) > int(i * share)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker_entry(plan: Plan, first: int, count: int, conn: Connection) -> None:
    """A loader process: raise the fd limit, run the clients, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if plan.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, plan.cpus)
    raise_nofile_limit(count + FD_MARGIN)

    async def go() -> None:
        await _Worker(plan, first, count, conn).main()

    try:
        asyncio.run(go())
    finally:
        conn.close()
