"""One SSE subscriber of the loader: a socket, a byte reader, a sequence tracker, counters.

A :class:`Client` is a non-blocking socket, a byte-level
:class:`~pricectl.loadtest.wire.StreamReader` and a
:class:`~pricectl.core.sequence.SequenceTracker`: no HTTP client object, no transport,
no task and no queue per connection, so one loader process holds thousands of them.
It owns its connection's life (connect, the response head, the server closing it,
reconnecting after the server's ``retry:`` with ``Last-Event-ID`` as EventSource
does, pausing as a slow reader, dropping in a reconnect storm) and the per-event
accounting against the measurement window (:meth:`Client.data_received`, the loader's
hot path).

A client does not read its own socket: the worker that hosts it does, for all its
clients from one epoll, and hands it the bytes. What a client needs from that worker
is the small :class:`ClientHost` protocol, not the worker class.

Latency is ``receive wall time - ingest_ns`` (same host). A read holding one whole
event, the usual case, is looked up by its bytes
(:class:`~pricectl.loadtest.wire.FrameMemo`) rather than parsed again for every
client, since the server writes the same bytes to all of them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from pricectl.core.sequence import SequenceTracker
from pricectl.loadtest.plan import Plan
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

if TYPE_CHECKING:
    from pricectl.loadtest.worker import Window, WorkerStats

__all__ = ["CLOCK_APART_NS", "Client", "ClientHost"]

_time_ns = time.time_ns


#: Beyond this the loader's clock and the server's are different clocks (another host,
#: no NTP): latencies are then measured on the server's clock. Within it they are taken
#: to be one clock, and a pushed clock sample's own delivery delay is not subtracted.
CLOCK_APART_NS = 100_000_000


class ClientHost(Protocol):
    """What a :class:`Client` needs from the loader process that reads its socket.

    The host owns the event loop, the epoll its clients' sockets are read from, the
    counters they add to and the measurement window they share. A client asks it to
    start reading a connected socket (:meth:`attach`), to stop reading one
    (:meth:`pause`) or to stop and close it (:meth:`detach`), to run its next
    connection attempt (:meth:`launch`), and tells it when an attempt has ended
    (:meth:`settled`).
    """

    @property
    def plan(self) -> Plan:
        """The run's plan: target, pairs, timeouts."""
        ...

    @property
    def stats(self) -> WorkerStats:
        """The counters every client of this process adds to."""
        ...

    @property
    def window(self) -> Window:
        """The measurement window, set by the parent."""
        ...

    @property
    def memo(self) -> FrameMemo:
        """Frames already parsed, shared by every client of this process."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that connects the sockets and runs the timers."""
        ...

    @property
    def address(self) -> tuple[int, Any]:
        """``(family, sockaddr)`` of the server."""
        ...

    def attach(self, client: Client, sock: socket.socket) -> None:
        """Start reading ``client``'s newly connected socket."""
        ...

    def pause(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` but keep it open."""
        ...

    def detach(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` and close it."""
        ...

    def launch(self, client: Client) -> None:
        """Run (again) ``client``'s connection attempt."""
        ...

    def settled(self, client: Client) -> None:
        """``client``'s attempt ended, established or failed."""
        ...


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

    The worker reads every client's socket itself (its epoll ``pump``) and hands the
    bytes to :meth:`data_received`; asyncio only connects, sends the request and runs
    the timers. A client never has an asyncio transport.
    """

    __slots__ = (
        "_head_timer",
        "caught_up",
        "clock_offset_ns",
        "connect_started",
        "events_window",
        "fast",
        "frames",
        "index",
        "last_id",
        "last_rx",
        "max_silence",
        "npairs",
        "pairs",
        "reader",
        "retry_ms",
        "slow",
        "snap_pending",
        "sock",
        "stale_marks",
        "stats",
        "storm_started",
        "target",
        "tracker",
        "win",
        "worker",
    )

    def __init__(self, index: int, worker: ClientHost) -> None:
        self.index = index
        self.worker = worker
        self.stats = worker.stats
        self.win = worker.window
        self.tracker = SequenceTracker()
        #: The pairs this client streams, and its request target.
        self.pairs = worker.plan.pairs_of(index)
        self.target = worker.plan.target_of(index)
        self.npairs = len(self.pairs)
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
        #: The server's clock minus ours (ns), from ``event: clock``: the largest sample
        #: (the least delayed one). Applied to latencies only past CLOCK_APART_NS.
        self.clock_offset_ns: int | None = None
        #: ``event: stale`` markers received (serve saw a pair go quiet).
        self.stale_marks = 0

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
            request = build_request(plan.host, plan.port, self.target, self.last_id)
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
            if event == b"clock":
                self._clock(payload, now)
                continue
            if event == b"stale":
                self.stale_marks += 1  # no id: the stream position is unchanged
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

    def _clock(self, payload: bytes, now: int) -> None:
        """One ``event: clock``: keep the largest server-minus-ours offset seen."""
        try:
            server_ms = int(json.loads(payload)["server_ms"])
        except (ValueError, KeyError, TypeError):
            self.stats.error("bad-clock")
            return
        offset = server_ms * 1_000_000 - now
        if self.clock_offset_ns is None or offset > self.clock_offset_ns:
            self.clock_offset_ns = offset

    def _event(
        self, snapshot: bool, pair: str, ingest_ns: int, epoch: int, seq: int, now: int
    ) -> None:
        """Account one price or snapshot event received at wall time ``now`` (ns)."""
        stats = self.stats
        offset = self.clock_offset_ns
        if offset is not None and abs(offset) > CLOCK_APART_NS:
            now += offset  # the server's clock is not ours: measure on its clock
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
