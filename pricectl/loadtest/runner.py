"""Many SSE clients over several processes: ramp, measurement window, drain, merge.

Each loader process runs one asyncio loop holding a few thousand :class:`Client`
objects. A client is a non-blocking socket, a byte-level
:class:`~pricectl.loadtest.wire.StreamReader` and a
:class:`~pricectl.core.sequence.SequenceTracker`: no HTTP client object, no transport,
no task and no queue per connection. asyncio connects the sockets and runs the timers;
the worker reads all of them itself from one epoll (:meth:`_Worker.pump`), and a read
holding one whole event, the usual case, is looked up by its bytes
(:class:`~pricectl.loadtest.wire.FrameMemo`) rather than parsed again for every client,
since the server writes the same bytes to all of them. The loader's CPU per event is
measured in docs/benchmarks.md; ``python -m benchmarks.loader_bench`` times the
per-event Python path alone. Linux only (epoll).

The phases, coordinated by the parent (:func:`run`), mirror ``shared/bench/sseload.c``:

1. *ramp*: each worker opens its share of the clients at its share of the ramp rate
   and reports ``ready`` once every client has connected or failed once;
2. *window*: when all workers are ready (or ``ready_timeout`` passed) the parent picks
   the window ``[t0, t1]`` in wall-clock nanoseconds; an event belongs to the window
   when its ``ingest_ns`` falls in it, so the window is defined at the publisher and
   events still in flight at ``t1`` are waited for rather than lost;
3. *drain*: after ``t1`` a worker waits until each reading client has seen an update
   ingested after ``t1`` on every pair (so everything before has arrived), at most
   ``drain_timeout``, then sends its final counts and exits.

Latency is ``receive wall time - ingest_ns`` (same host). Delivery is events received in
the window over events expected: per pair, the number of sequence numbers ``(epoch,
seq)`` that any client saw in the window, times the clients that should have seen them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import os
import resource
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any
from urllib.parse import quote

from pricectl.core.histogram import Histogram
from pricectl.core.sequence import SequenceTracker
from pricectl.loadtest.wire import (
    Event,
    FrameMemo,
    ProtocolError,
    StreamReader,
    StreamState,
    build_request,
    parse_block,
    price_fields,
)

__all__ = [
    "Plan",
    "Progress",
    "RunResult",
    "WorkerFate",
    "WorkerStats",
    "plan_processes",
    "raise_nofile_limit",
    "run",
    "stream_target",
]

STREAM_PATH = "/api/market-data/stream"
_FD_MARGIN = 64
_PROGRESS_EVERY = 0.5
#: The window opens this long after the parent decides, so every worker knows it before
#: the first event of the window can arrive (a late worker is reported, not mis-counted).
_WINDOW_LEAD_NS = 2_000_000_000
_time_ns = time.time_ns
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


def stream_target(pairs: list[str], path: str = STREAM_PATH) -> str:
    """The request target for ``pairs`` (``/api/market-data/stream?pairs=BTC/USD,ETH/USD``)."""
    return f"{path}?pairs={quote(','.join(pairs), safe='/,')}"


@dataclass(frozen=True)
class Plan:
    """What to run: the target, how many clients, and the scenario's client-side actions."""

    host: str
    port: int
    pairs: tuple[str, ...]
    clients: int
    ramp: float
    duration: float
    processes: int
    path: str = STREAM_PATH
    connect_timeout: float = 10.0
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0
    #: Share of clients (0..1) that stop reading at ``slow_at`` s into the window.
    slow_share: float = 0.0
    slow_at: float = 0.0
    #: Seconds into the window at which every client drops its connection and reconnects
    #: after the ``retry:`` the server gave it (reconnect storm); ``None``: never.
    drop_at: float | None = None
    #: Reconnect delay when the server gave no ``retry:`` (EventSource's default is 3 s).
    default_retry_ms: int = 3000
    #: CPUs the loader processes are pinned to (benchmarks: server on one core, loader on
    #: the other); ``None``: not pinned.
    cpus: tuple[int, ...] | None = None
    #: After the window and the drain, how long the parent waits for a worker's report
    #: before asking it to stop, and then how long for the report it sends on stopping.
    report_grace: float = 5.0

    @property
    def target(self) -> str:
        """The request target of every client."""
        return stream_target(list(self.pairs), self.path)


def raise_nofile_limit(needed: int) -> tuple[int, int, str | None]:
    """Raise this process's open-files soft limit to the hard limit.

    Returns ``(soft, hard, problem)``; ``problem`` says what could not be done when the
    hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            return soft, hard, f"cannot raise the open-files limit from {soft} to {target}: {exc}"
    if soft < needed:
        return soft, hard, f"open-files limit is {soft} (hard {hard}), below the {needed} needed"
    return soft, hard, None


def plan_processes(clients: int, requested: int) -> tuple[int, int, str | None]:
    """How many loader processes: ``requested`` (0 = core count), more if the fd limit needs.

    Returns ``(processes, per_process_limit, note)``; ``note`` says when the count was
    raised because one process may not hold that many sockets.
    """
    procs = requested if requested > 0 else (os.cpu_count() or 1)
    procs = max(1, min(procs, clients))
    soft, hard, _ = raise_nofile_limit(0)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    per_proc = max(1, limit - _FD_MARGIN)
    note = None
    need = -(-clients // per_proc)
    if need > procs:
        note = (
            f"open-files limit is {limit} per process: using {need} loader processes "
            f"instead of {procs}"
        )
        procs = need
    return procs, per_proc, note


# --- the worker side -----------------------------------------------------------------------


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


class _Window:
    """The measurement window shared by a worker's clients (wall-clock ns)."""

    __slots__ = ("stopping", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = _NO_WINDOW  # nothing is "in the window" before the parent says so
        self.t1 = _NO_WINDOW
        self.stopping = False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno-{exc.errno}").lower()
    return type(exc).__name__


class Client:
    """One SSE subscriber: a socket, a byte reader, a sequence tracker, a few counters.

    The worker reads every client's socket itself (:meth:`_Worker.pump`) and hands the
    bytes to :meth:`data_received`; asyncio only connects, sends the request and runs
    the timers. A client never has an asyncio transport.
    """

    __slots__ = (
        "_head_timer",
        "caught_up",
        "connect_started",
        "events_window",
        "fast",
        "frames",
        "index",
        "last_id",
        "last_rx",
        "max_silence",
        "npairs",
        "reader",
        "retry_ms",
        "slow",
        "snap_pending",
        "sock",
        "stats",
        "storm_started",
        "tracker",
        "win",
        "worker",
    )

    def __init__(self, index: int, worker: _Worker) -> None:
        self.index = index
        self.worker = worker
        self.stats = worker.stats
        self.win = worker.window
        self.tracker = SequenceTracker()
        self.npairs = len(worker.plan.pairs)
        #: The open connection (non-blocking, registered with the worker), or None.
        self.sock: socket.socket | None = None
        self.reader = StreamReader()
        #: True while the reader holds nothing (between events): a read that is exactly
        #: one whole event may then be looked up in ``frames`` instead of fed to it.
        self.fast = False
        self.frames: dict[bytes, Event] = {}
        self.last_id: str | None = None
        self.retry_ms = worker.plan.default_retry_ms
        self.connect_started = 0.0
        self.storm_started = 0.0
        self.snap_pending = self.npairs
        self.events_window = 0
        self.last_rx = 0
        self.max_silence = 0
        self.caught_up: set[str] = set()
        self.slow = False
        self._head_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle --

    async def connect(self) -> None:
        """Open the socket and send the request; failures are counted, then retried."""
        w = self.worker
        plan = w.plan
        loop = w.loop
        self.stats.attempted += 1
        self.connect_started = loop.time()
        self.reader = StreamReader()
        self.fast = False
        self.snap_pending = self.npairs
        family, address = w.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            request = build_request(plan.host, plan.port, plan.target, self.last_id)
            await asyncio.wait_for(self._open(sock, address, request), plan.connect_timeout)
        except (TimeoutError, OSError) as exc:
            sock.close()
            self.stats.fail(_reason(exc))
            w.settled(self)
            self._reconnect_later()
            return
        except BaseException:  # cancelled while stopping
            sock.close()
            raise
        self.sock = sock
        w.attach(self, sock)
        self._head_timer = loop.call_later(plan.connect_timeout, self._head_timeout)

    async def _open(self, sock: socket.socket, address: Any, request: bytes) -> None:
        loop = self.worker.loop
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, request)

    def close(self) -> None:
        """Close the socket (nothing more is read from it); no-op when there is none."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.worker.detach(sock)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.reader.state is StreamState.HEAD and self.sock is not None:
            self.stats.fail("timeout-head")
            self.worker.settled(self)
            self.close()
            self._reconnect_later()

    def lost(self, exc: OSError | None) -> None:
        """The server closed the connection (``exc`` None) or it failed: count, retry."""
        self.close()
        if self.reader.state is StreamState.HEAD:
            self.stats.fail(_reason(exc) if exc else "closed-before-response")
            self.worker.settled(self)
        else:
            self.stats.server_closes += 1
            if exc is not None:
                self.stats.error(_reason(exc))
        if not self.slow:
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self.win.stopping:
            return
        self.stats.reconnects += 1
        self.worker.loop.call_later(self.retry_ms / 1000.0, self.worker.launch, self)

    def pause(self) -> None:
        """Stop reading (a slow reader): the server must conflate, then close it."""
        self.slow = True
        if self.sock is not None:
            self.worker.pause(self.sock)

    def drop(self) -> None:
        """Drop the connection and come back after the server's ``retry:`` (storm)."""
        if self.sock is None:
            return
        self.storm_started = self.worker.loop.time()
        self.close()
        if not self.slow:
            self._reconnect_later()

    # -- the hot path --

    def data_received(self, data: bytes) -> None:
        now = _time_ns()
        if self.fast:
            event = self.frames.get(data)
            if event is None:
                event = self.worker.memo.parse(data, self.reader.chunked)
            if event is not None:
                self.last_id = event[1]
                self._event(event[0], event[2], event[3], event[4], event[5], now)
                return
        self._read(data, now)

    def _read(self, data: bytes, now: int) -> None:
        """The general path: anything but one whole event between events."""
        reader = self.reader
        head = reader.state is StreamState.HEAD
        try:
            blocks = reader.feed(data)
        except ProtocolError:
            self.fast = False
            self._protocol_error(head)
            return
        if head and reader.state is not StreamState.HEAD:
            memo = self.worker.memo
            self.frames = memo.chunked if reader.chunked else memo.plain
            if not self._head_done():
                return
        for block in blocks:
            event, ident, retry, payload = parse_block(block)
            if retry is not None:
                self.retry_ms = retry
            if payload is None:
                continue
            if ident is not None:
                self.last_id = ident.decode()
            try:
                pair, ingest_ns, epoch, seq = price_fields(payload)
            except (ValueError, UnicodeDecodeError):
                self.stats.error("bad-payload")
                continue
            self._event(event == b"snapshot", pair, ingest_ns, epoch, seq, now)
        self.fast = reader.at_boundary
        if reader.state is StreamState.DONE:  # the server ended the body (zero-size chunk)
            self.lost(None)

    def _event(
        self, snapshot: bool, pair: str, ingest_ns: int, epoch: int, seq: int, now: int
    ) -> None:
        """Account one price or snapshot event received at wall time ``now`` (ns)."""
        stats = self.stats
        if snapshot:
            self.tracker.check(pair, epoch, seq, snapshot=True)
            stats.snapshots += 1
            self.snap_pending -= 1
            if self.snap_pending == 0:
                t = self.worker.loop.time()
                stats.snapshot_ms.record(int((t - self.connect_started) * 1000))
            return
        stats.events += 1
        # False for a duplicate or a deposed leader's update: neither counts in the window
        deliver = self.tracker.live(pair, epoch, seq)
        last = self.last_rx
        if last and now - last > self.max_silence:
            self.max_silence = now - last
        self.last_rx = now
        win = self.win
        if ingest_ns < win.t0:
            stats.events_pre += 1
            stats.interval.record(now - ingest_ns)
            return
        if ingest_ns > win.t1:
            self.caught_up.add(pair)
            return
        if not deliver:
            return
        stats.window.record(now - ingest_ns)
        stats.events_window += 1
        self.events_window += 1
        r = stats.ranges.get((pair, epoch))
        if r is None:
            stats.ranges[(pair, epoch)] = [seq, seq]
        elif seq > r[1]:
            r[1] = seq
        elif seq < r[0]:
            r[0] = seq

    def _head_done(self) -> bool:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        reader = self.reader
        if not reader.event_stream:
            retry_after = reader.headers.get("retry-after", "")
            if retry_after.isdigit():
                self.retry_ms = int(retry_after) * 1000
            reason = f"http-{reader.status}" if reader.status != 200 else "not-event-stream"
            self.stats.fail(reason)
            self.worker.settled(self)
            self.close()
            if not self.slow:
                self._reconnect_later()
            return False
        self.stats.established += 1
        if self.storm_started:  # back after the drop: resumed (replay) or snapshot
            self.stats.storm_ms.record(int((self.worker.loop.time() - self.storm_started) * 1000))
            self.storm_started = 0.0
        self.stats.connect_ms.record(int((self.worker.loop.time() - self.connect_started) * 1000))
        self.worker.settled(self)
        if self.slow and self.sock is not None:
            self.worker.pause(self.sock)
        return True

    def _protocol_error(self, head: bool) -> None:
        if head:
            self.stats.fail("protocol")
            self.worker.settled(self)
        else:
            self.stats.error("protocol")
        self.close()
        if not self.slow:
            self._reconnect_later()


class _Worker:
    """One loader process: its clients, the ramp, the window, progress messages."""

    def __init__(self, plan: Plan, first: int, count: int, conn: Connection) -> None:
        self.plan = plan
        self.first = first
        self.count = count
        self.conn = conn
        self.stats = WorkerStats()
        self.window = _Window()
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


def _worker_entry(plan: Plan, first: int, count: int, conn: Connection) -> None:
    """A loader process: raise the fd limit, run the clients, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if plan.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, plan.cpus)
    raise_nofile_limit(count + _FD_MARGIN)

    async def go() -> None:
        await _Worker(plan, first, count, conn).main()

    try:
        asyncio.run(go())
    finally:
        conn.close()


# --- the parent side -----------------------------------------------------------------------


@dataclass
class Progress:
    """What the live display shows, refreshed twice a second."""

    target: int
    phase: str = "ramp"
    connected: int = 0
    established: int = 0
    failed: int = 0
    errors: int = 0
    events: int = 0
    events_per_s: float = 0.0
    p99_ms: float = 0.0
    elapsed: float = 0.0
    window_left: float = 0.0


@dataclass
class WorkerFate:
    """How one loader process ended, for the report when it was not on time."""

    index: int
    pid: int | None
    #: ``on time``; ``late`` (its report came only when asked to stop); ``failed`` (it
    #: raised: ``detail`` says what); ``lost`` (no report: ``detail`` has the exit status)
    status: str
    detail: str = ""


@dataclass
class RunResult:
    """The merged finals of every worker, with the window's timing."""

    plan: Plan
    finals: list[dict[str, Any]]
    t0_ns: int
    t1_ns: int
    ready_after_s: float
    lost_workers: int = 0
    workers: list[WorkerFate] = field(default_factory=list)


def run(
    plan: Plan,
    on_progress: Callable[[Progress], None] | None = None,
    on_window: Callable[[str, float], None] | None = None,
) -> RunResult:
    """Run the load test described by ``plan``; blocks until the workers are done.

    ``on_progress`` is called about twice a second; ``on_window(phase, seconds_into)`` lets
    the caller act on the server side (sample its CPU at ``"start"``/``"end"``, kill a
    leader at a scenario's time via ``"tick"``).

    Every worker sends one report. One that has not sent it ``plan.report_grace``
    seconds after the window and the drain is asked to stop (``on_window("overdue")``)
    and then sends what it has (it is marked *late*); one that sends nothing within
    another ``report_grace`` is killed and *lost*. :attr:`RunResult.workers` says which
    worker ended how, so the report can name it.
    """
    ctx = multiprocessing.get_context("fork")
    n = plan.processes
    conns: list[Connection] = []
    procs: list[Any] = []
    first = 0
    for i in range(n):
        count = plan.clients // n + (1 if i < plan.clients % n else 0)
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(
            target=_worker_entry,
            args=(plan, first, count, child_end),
            name=f"pricectl-loadtest-{i}",
            daemon=True,
        )
        p.start()
        child_end.close()
        conns.append(parent_end)
        procs.append(p)
        first += count
    started = time.monotonic()
    progress = Progress(target=plan.clients)
    latest: dict[int, dict[str, Any]] = {}
    rates: dict[int, float] = {}
    interval = Histogram()
    ready: set[int] = set()
    finals: dict[int, dict[str, Any]] = {}
    late: set[int] = set()
    failures: dict[int, str] = {}
    t0 = t1 = 0
    ready_after = -1.0
    ramp_time = plan.clients / plan.ramp
    ready_deadline = started + ramp_time + plan.ready_timeout + 5.0
    last_tick = started
    open_conns = {i: c for i, c in enumerate(conns)}
    # Until the window opens, the latest a report can be due; then the window's own end.
    report_due = ready_deadline + _WINDOW_LEAD_NS / 1e9 + plan.duration + plan.drain_timeout
    stop_sent: float | None = None
    try:
        while open_conns:
            now = time.monotonic()
            if stop_sent is None and now > report_due + plan.report_grace:
                stop_sent = now  # overdue: ask for what they have
                if on_window is not None:
                    on_window("overdue", (time.time_ns() - t0) / 1e9 if t0 else 0.0)
                for i in open_conns:
                    with contextlib.suppress(OSError):
                        conns[i].send(("stop",))
            if stop_sent is not None and now > stop_sent + plan.report_grace:
                break
            for c in wait(list(open_conns.values()), timeout=0.25):
                assert isinstance(c, Connection)
                i = conns.index(c)
                body: Any
                try:
                    kind, body = c.recv()
                except (EOFError, OSError):
                    open_conns.pop(i, None)
                    continue
                if kind == "progress":
                    prev = latest.get(i)
                    if prev is not None and body["t"] > prev["t"]:
                        rates[i] = (body["events"] - prev["events"]) / (body["t"] - prev["t"])
                    latest[i] = body
                    interval.merge(Histogram.from_dict(body["interval"]))
                elif kind == "ready":
                    ready.add(i)
                elif kind == "final":
                    body["worker"] = i
                    finals[i] = body
                    if stop_sent is not None:
                        late.add(i)
                    open_conns.pop(i, None)
                elif kind == "failed":
                    failures[i] = str(body)
            now = time.monotonic()
            if not t0 and (len(ready) == n or now > ready_deadline):
                ready_after = now - started
                t0 = time.time_ns() + _WINDOW_LEAD_NS
                t1 = t0 + int(plan.duration * 1e9)
                report_due = now + (t1 - time.time_ns()) / 1e9 + plan.drain_timeout
                for c in conns:
                    with contextlib.suppress(OSError):
                        c.send(("window", t0, t1))
                progress.phase = "window"
                if on_window is not None:
                    on_window("start", 0.0)
            if t0 and progress.phase == "window":
                into = (time.time_ns() - t0) / 1e9
                if on_window is not None and into >= 0:
                    on_window("tick", into)
                if into >= plan.duration:
                    progress.phase = "drain"
                    if on_window is not None:
                        on_window("end", into)
            if now - last_tick >= 0.5:
                progress.connected = sum(b["connected"] for b in latest.values())
                progress.established = sum(b["established"] for b in latest.values())
                progress.failed = sum(b["failed"] for b in latest.values())
                progress.errors = sum(b["errors"] for b in latest.values())
                progress.events = sum(b["events"] for b in latest.values())
                progress.events_per_s = sum(rates.values())
                progress.p99_ms = interval.quantile(0.99) / 1e6
                progress.elapsed = now - started
                progress.window_left = max(0.0, (t1 - time.time_ns()) / 1e9) if t1 else 0.0
                interval.reset()
                last_tick = now
                if on_progress is not None:
                    on_progress(progress)
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.send(("stop",))
        for i, p in enumerate(procs):
            if i in open_conns and p.is_alive():  # had its grace: no point waiting longer
                p.kill()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for c in conns:
            c.close()
    fates = []
    for i, p in enumerate(procs):
        if i in finals:
            status, detail = ("late", "") if i in late else ("on time", "")
        elif i in failures:
            status, detail = "failed", failures[i]
        else:
            status = "lost"
            code = p.exitcode
            detail = "killed: it did not stop when asked" if code == -9 else f"exit status {code}"
        fates.append(WorkerFate(i, p.pid, status, detail))
    return RunResult(
        plan=plan,
        finals=[finals[i] for i in sorted(finals)],
        t0_ns=t0,
        t1_ns=t1,
        ready_after_s=ready_after,
        lost_workers=n - len(finals),
        workers=fates,
    )
