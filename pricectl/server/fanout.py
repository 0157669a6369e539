"""The fan-out engine: every open stream, and the same bytes written straight to each.

Why it looks like this (docs/benchmarks.md has the figures): on a 2-core machine a
server that gives each client an ``asyncio.Queue`` and a task falls over at 10,000
clients, while one that serialises each update once and writes the *same bytes* to
every client's transport delivers everything. So on the per-event path:

* an update arrives here as its SSE bytes, built once by the hub (:meth:`Fanout.publish`);
* clients are grouped by their exact pair set (and by framing: HTTP/1.1 streams
  are chunked), so updates that arrive in the same loop iteration are joined and
  framed once per group, and each client gets exactly one ``transport.write``;
* each group keeps a short log of the segments (joined, framed updates) that not
  all of its clients have yet, and every client the index of the next segment it
  needs. A *pass* walks the group's clients in ``_SLICE``-client slices, one slice
  per loop iteration, so accepting and answering new connections is never stuck
  behind a whole fan-out, and writes each client everything from its index to the
  log's end *in one write*. While the server keeps up, that is one update per
  write. When it falls behind (updates arrive faster than a pass takes), the
  clients a pass has not reached yet get the new segment in the same write as the
  old one: the cost per event falls just when it has to, instead of passes piling
  up (19,900 clients at 10 updates/s are held only this way). Per client the order
  of events is kept, a client that joins gets everything up to then in its opening
  and starts at the log's end (never twice), and a client that leaves is skipped;
* there is no queue and no task per client. A client whose transport is above
  its high-water mark (``server.high_water``; asyncio's flow control calls
  ``pause_writing``) stops getting writes: its updates wait in one pending slot
  per pair, newest wins (conflation), and go out in one write when it drains
  (``resume_writing``). A client unwritable for longer than ``server.write_timeout``
  is aborted and counted.

Memory per connection is what serve's budget is about, so once a stream's opening
is written the connection belongs to the fan-out alone: the :class:`Client` record
(a few slots) *is* the transport's protocol, and aiohttp's request handler,
request, response and parser for it are released (see ``stream.py``). What stays
per connection is the socket, asyncio's transport and this record.

A timer (not one per client) sends ``: ping`` every ``server.ping_interval``; a
second timer runs only while some client is conflating, to enforce write_timeout.
Closed connections are noticed at once (``connection_lost``).

The engine knows streams, pair names and bytes, nothing of where updates come
from: the hub (``hub.py``) reads the bus, keeps the state and hands bytes in.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable

from pricectl.core.sse import encode_comment
from pricectl.server.sockets import reset

__all__ = ["Client", "Fanout", "frame"]

log = logging.getLogger("pricectl.server.fanout")

#: Clients written per loop iteration in a fan-out (about 5 ms of writes on this machine).
_SLICE = 1000
#: Longest wait between write_timeout checks while some client is conflating (seconds).
_SWEEP_INTERVAL = 0.1
_PING = encode_comment("ping")
#: The last chunk of a chunked HTTP/1.1 body: a stream the server ends is ended cleanly.
_LAST_CHUNK = b"0\r\n\r\n"


def frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk holding ``data`` (the stream response is chunked)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Group:
    """Clients with the same pair set and framing: they get byte-identical writes.

    ``log`` holds the segments that some client of the group may still need, as
    ``(bytes to write, [(pair, unframed event bytes)], events before it)``; segment
    ``i`` of the log has the absolute index ``base + i`` and ``end`` is the index the
    next one will get. A client whose ``sent`` equals ``end`` is up to date.
    """

    __slots__ = (
        "base",
        "chunked",
        "clients",
        "end",
        "events",
        "log",
        "pairs",
        "pass_clients",
        "pass_end",
        "pass_pos",
    )

    def __init__(self, pairs: frozenset[str], chunked: bool) -> None:
        self.pairs = pairs
        self.chunked = chunked
        self.clients: dict[Client, None] = {}
        self.log: list[tuple[bytes, list[tuple[str, bytes]], int]] = []
        self.base = 0
        self.end = 0
        #: Events in every segment so far (a client at index s is behind by events - cum[s]).
        self.events = 0
        #: The pass in progress: the clients it was started with, how far it got, and
        #: ``end`` when it started (every client has that much once it completes).
        self.pass_clients: list[Client] | None = None
        self.pass_pos = 0
        self.pass_end = 0

    def append(self, data: bytes, items: list[tuple[str, bytes]]) -> None:
        """Add one segment (``data`` framed for this group) at the end of the log."""
        self.log.append((data, items, self.events))
        self.events += len(items)
        self.end += 1

    def since(self, start: int) -> tuple[bytes, int]:
        """What a client at index ``start`` needs: the bytes of one write, and its events."""
        log = self.log
        i = start - self.base
        if i == len(log) - 1:
            data, items, _ = log[i]
            return data, len(items)
        return b"".join(seg[0] for seg in log[i:]), self.events - log[i][2]

    def trim(self, upto: int) -> None:
        """Forget the segments before index ``upto`` (every client has them)."""
        del self.log[: upto - self.base]
        self.base = upto


#: ``Client.pending`` of a stream that has ended: fan-outs still holding it skip it.
_GONE: dict[str, bytes] = {}


class Client(asyncio.Protocol):
    """One open stream, and the protocol of its transport once the opening is written.

    Being the protocol is what lets serve drop aiohttp's per-request objects: flow
    control (``pause_writing``/``resume_writing``) and ``connection_lost`` come here.
    """

    __slots__ = ("blocked_since", "fanout", "group", "ip", "pending", "sent", "transport")

    def __init__(
        self, fanout: Fanout, transport: asyncio.Transport, group: _Group, ip: str
    ) -> None:
        self.fanout = fanout
        self.transport = transport
        self.group = group
        self.ip = ip
        #: Index in the group's log of the next segment this client needs.
        self.sent = group.end
        #: None while writable; else the newest event bytes per pair, waiting for a drain.
        self.pending: dict[str, bytes] | None = None
        self.blocked_since = 0.0

    @property
    def pairs(self) -> frozenset[str]:
        """The pairs this client watches."""
        return self.group.pairs

    def data_received(self, data: bytes) -> None:
        """Anything a client sends after its request is ignored (the stream is one-way)."""

    def eof_received(self) -> bool | None:
        """A client that closes its side is gone: close ours (returning None does that)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket went away: unregister at once, not at the next heartbeat."""
        self.fanout.finish(self, "connection lost")

    def pause_writing(self) -> None:
        """Above the high-water mark: from now on updates wait in the pending slots."""
        self.fanout._paused(self)

    def resume_writing(self) -> None:
        """Drained below the low-water mark: the pending slots go out in one write."""
        self.fanout._resumed(self)


class Fanout:
    """Every open stream of one serve process, grouped, and the passes that write to them.

    :meth:`start` in the running loop (it starts the ping timer) and :meth:`stop` when
    done; :meth:`publish` one event's bytes per update, :meth:`attach` a stream's
    transport once its opening is ready, :meth:`finish` to end one.
    """

    def __init__(
        self,
        *,
        high_water: int,
        write_timeout: float,
        ping_interval: float,
        clock: Callable[[], float] = time.monotonic,
        ping: Callable[[], bytes] | None = None,
    ) -> None:
        self.high_water = high_water
        self.write_timeout = write_timeout
        self.ping_interval = ping_interval
        self._clock = clock
        #: The bytes of each heartbeat (default ``: ping``; serve adds its clock).
        self._ping_bytes = ping if ping is not None else (lambda: _PING)
        self._groups: dict[tuple[frozenset[str], bool], _Group] = {}
        self._by_pair: dict[str, list[_Group]] = {}
        self._slow: dict[Client, None] = {}
        self._per_ip: dict[str, int] = {}
        self._batch: list[tuple[str, bytes]] = []
        self._flush_handle: asyncio.Handle | None = None
        #: Clients written per loop iteration in a fan-out (tests make it small).
        self.slice_size = _SLICE
        #: Groups with a pass to make, oldest first.
        self._active: dict[_Group, None] = {}
        self._fanout_handle: asyncio.Handle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counters (exported by /metrics and /health).
        self.clients = 0
        self.peak_clients = 0
        self.connections_total = 0
        self.events_sent = 0
        self.bytes_sent = 0
        self.slow_conflated = 0
        self.slow_dropped = 0
        #: Events that went out in a write with others because the fan-out was behind.
        self.merged_events = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and start the ping timer."""
        self._loop = asyncio.get_running_loop()
        self._schedule_ping()

    def stop(self) -> None:
        """Cancel every timer and scheduled pass (the streams stay open)."""
        for handle in (
            self._ping_handle,
            self._sweep_handle,
            self._flush_handle,
            self._fanout_handle,
        ):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._sweep_handle = self._flush_handle = None
        self._fanout_handle = None

    # --- the per-event path --------------------------------------------------------------

    def publish(self, pair: str, payload: bytes) -> None:
        """Queue one event's bytes (unframed) for ``pair`` for this loop iteration's fan-out."""
        self._batch.append((pair, payload))
        if self._flush_handle is None:
            loop = self._loop or asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Add this iteration's updates to the logs of the groups that want them, joined
        and framed once per group, and start (or let continue) the passes that write them.

        Does nothing when no update is queued; call it before writing anything that must
        come after the updates already published (an opening, a resync snapshot)."""
        self._flush_handle = None
        batch = self._batch
        if not batch:
            return
        self._batch = []
        active = self._active
        if len(batch) == 1:
            pair, payload = batch[0]
            groups = self._by_pair.get(pair)
            if groups:
                framed = frame(payload)
                for group in groups:
                    group.append(framed if group.chunked else payload, batch)
                    active[group] = None
        else:
            touched: dict[int, _Group] = {}
            for pair, _ in batch:
                for group in self._by_pair.get(pair, ()):
                    touched[id(group)] = group
            joined: dict[tuple[int, ...], bytes] = {}
            for group in touched.values():
                pairs = group.pairs
                key = tuple(i for i, (p, _) in enumerate(batch) if p in pairs)
                joint = joined.get(key)
                if joint is None:
                    joint = joined[key] = b"".join(batch[i][1] for i in key)
                group.append(frame(joint) if group.chunked else joint, [batch[i] for i in key])
                active[group] = None
        if self._fanout_handle is None:
            self._write_slices()

    def _write_slices(self, budget: int = 0) -> None:
        """Visit up to ``budget`` (default ``slice_size``) clients of the active
        groups' passes, oldest group first; if any are left, continue in the next loop
        iteration."""
        self._fanout_handle = None
        budget = budget or self.slice_size
        active = self._active
        while active and budget > 0:
            group = next(iter(active))
            budget -= self._advance(group, budget)
        if active and self._fanout_handle is None:
            loop = self._loop or asyncio.get_running_loop()
            self._fanout_handle = loop.call_soon(self._write_slices)

    def _advance(self, group: _Group, budget: int) -> int:
        """Continue (or start) ``group``'s pass for up to ``budget`` clients; returns how
        many it visited. A completed pass trims the log, and the group stays active
        only if segments arrived during the pass."""
        clients = group.pass_clients
        if clients is None:
            clients = group.pass_clients = list(group.clients)
            group.pass_pos = 0
            group.pass_end = group.end
        pos = group.pass_pos
        stop = min(len(clients), pos + budget)
        end = group.end
        last_start, data, count = -1, b"", 0
        run = writes = events = nbytes = 0  # run: writes of the current ``data``
        # The hot loop: per up-to-date client one comparison, per other client one
        # transport.write of everything it lacks (the same bytes for a run of clients
        # at the same index). A write that crosses the high-water mark calls
        # pause_writing right here, which only gives that client its pending slots.
        for client in clients[pos:stop] if pos or stop < len(clients) else clients:
            start = client.sent
            if start == end:
                continue
            client.sent = end
            pending = client.pending
            if pending is None:
                if start != last_start:
                    writes += run
                    events += run * count
                    nbytes += run * len(data)
                    run = 0
                    last_start = start
                    data, count = group.since(start)
                client.transport.write(data)
                run += 1
            elif pending is not _GONE:
                for _, items, _ in group.log[start - group.base :]:
                    for pair, payload in items:
                        pending[pair] = payload
        writes += run
        if writes:
            events += run * count
            self.events_sent += events
            self.bytes_sent += nbytes + run * len(data)
            self.merged_events += events - writes
        group.pass_pos = stop
        if stop == len(clients):
            group.trim(group.pass_end)
            group.pass_clients = None
            self._active.pop(group, None)
            if group.end > group.pass_end and group.clients:
                self._active[group] = None  # updates arrived during the pass: another one
        return max(1, stop - pos)

    def complete(self) -> None:
        """Write every pending update now (before a resync snapshot or a goodbye)."""
        if self._fanout_handle is not None:
            self._fanout_handle.cancel()
            self._fanout_handle = None
        while self._active:
            self._write_slices(budget=1 << 62)

    # --- slow clients and heartbeats -----------------------------------------------------

    @property
    def conflating(self) -> int:
        """Clients lagging right now (their updates wait in pending slots)."""
        return len(self._slow)

    def _paused(self, client: Client) -> None:
        """``pause_writing``: the client lags; conflate its updates until it drains."""
        if client.pending is not None:
            return
        client.pending = {}
        client.blocked_since = self._clock()
        self.slow_conflated += 1
        self._slow[client] = None
        self._schedule_sweep()

    def _resumed(self, client: Client) -> None:
        """``resume_writing``: the newest update per pair goes out in one write."""
        pending = client.pending
        if pending is None or pending is _GONE:
            return
        client.pending = None
        self._slow.pop(client, None)
        if pending:
            data = b"".join(pending.values())
            out = frame(data) if client.group.chunked else data
            client.transport.write(out)
            self.events_sent += len(pending)
            self.bytes_sent += len(out)

    def _schedule_sweep(self) -> None:
        if self._sweep_handle is None and self._loop is not None:
            interval = min(_SWEEP_INTERVAL, max(0.01, self.write_timeout / 5))
            self._sweep_handle = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Abort clients that stayed unwritable past write_timeout (runs only while some lag)."""
        self._sweep_handle = None
        now = self._clock()
        for client in list(self._slow):
            if client.pending is None or client.pending is _GONE:
                self._slow.pop(client, None)
            elif now - client.blocked_since > self.write_timeout:
                self._slow.pop(client, None)
                self.slow_dropped += 1
                log.info(
                    "closing a client unwritable for %.1fs (%s)", self.write_timeout, client.ip
                )
                self.finish(client, "write timeout")
        if self._slow:
            self._schedule_sweep()

    def _schedule_ping(self) -> None:
        interval = self.ping_interval
        if interval > 0 and self._loop is not None:
            self._ping_handle = self._loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        """``: ping`` to every client that is not lagging (a lagging one has bytes queued)."""
        self._schedule_ping()
        ping = self._ping_bytes()
        framed = frame(ping)
        for group in list(self._groups.values()):
            data = framed if group.chunked else ping
            for client in group.clients:
                if client.pending is None:
                    client.transport.write(data)

    # --- streams -------------------------------------------------------------------------

    def watched(self) -> list[str]:
        """Every pair some open stream watches."""
        return list(self._by_pair)

    def connections_from(self, ip: str) -> int:
        """Open streams from the address ``ip``."""
        return self._per_ip.get(ip, 0)

    def attach(
        self,
        transport: asyncio.Transport,
        pairs: frozenset[str],
        chunked: bool,
        ip: str,
        first: bytes,
    ) -> Client:
        """Take over ``transport`` (its protocol becomes the returned :class:`Client`),
        register the stream and write ``first`` in the same step (no update in between).
        From here on the fan-out writes to it and ends it; the caller lets go of it."""
        key = (pairs, chunked)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(pairs, chunked)
            for pair in pairs:
                self._by_pair.setdefault(pair, []).append(group)
        ip = sys.intern(ip)  # one string per client address, not one per connection
        client = Client(self, transport, group, ip)
        group.clients[client] = None
        transport.set_protocol(client)
        transport.set_write_buffer_limits(high=self.high_water)
        if transport.get_write_buffer_size() > self.high_water:
            # Already behind (flow control told the previous protocol): conflate from now.
            self._paused(client)
        if first:
            transport.write(frame(first) if chunked else first)
        self.clients += 1
        self.connections_total += 1
        self.peak_clients = max(self.peak_clients, self.clients)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return client

    def write(self, client: Client, data: bytes) -> None:
        """Write ``data`` (whole events or comments) to one stream, framed for it."""
        client.transport.write(frame(data) if client.group.chunked else data)

    def resend(self, events: Callable[[frozenset[str]], dict[str, bytes]]) -> None:
        """Send every stream afresh the events ``events(pairs)`` gives for its pair set
        (event bytes per pair, in the order to write them); a lagging stream gets them
        as its pending slots instead. Call :meth:`complete` first."""
        for group in list(self._groups.values()):
            per_pair = events(group.pairs)
            if not per_pair:
                continue
            data = b"".join(per_pair.values())
            out = frame(data) if group.chunked else data
            for client in list(group.clients):
                if client.pending is not None:
                    for pair in group.pairs:
                        payload = per_pair.get(pair)
                        if payload is not None:
                            client.pending[pair] = payload
                else:
                    client.transport.write(out)

    def finish(self, client: Client, reason: str) -> None:
        """End a stream (idempotent): unregister it and close its connection.

        ``write timeout``, and any end of a client that lags, reset the connection (TCP
        RST, :func:`pricectl.server.sockets.reset`: nothing more can be written, and the
        kernel frees its buffers at once); other reasons end the chunked body cleanly
        and close once the buffered bytes are out; ``connection lost`` only unregisters.
        """
        group = client.group
        if client not in group.clients:
            return
        del group.clients[client]
        self._slow.pop(client, None)
        lagging = client.pending is not None
        client.pending = _GONE
        transport = client.transport
        if reason == "connection lost":
            pass
        elif reason == "write timeout" or lagging:
            reset(transport)
        elif not transport.is_closing():
            if group.chunked:
                transport.write(_LAST_CHUNK)
            transport.close()
        self.clients -= 1
        left = self._per_ip.get(client.ip, 1) - 1
        if left:
            self._per_ip[client.ip] = left
        else:
            self._per_ip.pop(client.ip, None)
        if not group.clients:
            del self._groups[(group.pairs, group.chunked)]
            self._active.pop(group, None)
            for pair in group.pairs:
                groups = self._by_pair.get(pair)
                if groups is not None:
                    groups.remove(group)
                    if not groups:
                        del self._by_pair[pair]

    def all_clients(self) -> list[Client]:
        """Every open stream (a copy)."""
        return [c for g in self._groups.values() for c in g.clients]

    def disconnect_all(self, reason: str = "disconnect") -> int:
        """Close every stream now (tests force reconnects with this); returns how many."""
        clients = self.all_clients()
        for client in clients:
            self.finish(client, reason)
        return len(clients)
