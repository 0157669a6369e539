"""The Binance market-data WebSocket (websockets' asyncio client): every pair, sharded.

What this adapter does, and which core piece decides (``pricectl.core``):

- Spreads the pairs' streams over connections of at most
  ``exchange.streams_per_connection`` streams each
  (:class:`~pricectl.core.subscriptions.SubscriptionPlan`). A connection opens
  ``<ws_url>/stream?streams=...`` (combined streams, docs/binance.md §1) naming only
  the first streams of its shard that fit in :data:`URL_STREAM_CHARS` characters and
  SUBSCRIBEs the rest; a URL never grows past a few thousand characters.
- Changes the pairs at run time (:meth:`BinanceWS.set_pairs`): UNSUBSCRIBE and SUBSCRIBE
  on the open connections, in batches of at most :data:`STREAMS_PER_MESSAGE` streams,
  new connections when the shards need them, a connection closed when its shard is
  left empty. A request counts as done only when the exchange answered its ``id``
  with ``result``; an error reply or no reply within :data:`REPLY_TIMEOUT_S` is logged
  and sent again after a backoff (:meth:`BinanceWS.subscribed_pairs` says what the
  exchange confirmed).
- Per connection, never more than ``exchange.max_messages_per_second`` messages we send
  in any second (``SEND_SLACK_S`` more for network jitter), the pongs we owe the
  server's pings included: control messages use one fewer, so a pong always fits.
- Turns each text frame into price updates with
  :class:`~pricectl.core.binance.FrameParser`; bad frames are skipped and counted.
- Answers server pings with the ping's payload: websockets' protocol core does this for
  every PING frame it reads, as long as we keep reading. Binance cuts a client that has
  not ponged within a minute (§3). We send no pings of our own (``ping_interval=None``).
- Replaces a connection that said nothing (no frame, no ping) for
  ``heartbeat.idle_timeout`` (:class:`~pricectl.core.heartbeat.IdleDetector`).
- Reconnects each connection under its own :class:`~pricectl.core.backoff.Backoff` and
  one shared :class:`~pricectl.core.breaker.Breaker`, never more than
  ``exchange.max_connects_per_5m`` attempts in any 5 minutes across all of them.
  A connection that comes back carries its own shard's streams, no others.
- Before ``exchange.max_connection_age`` (Binance cuts at 24 h) and on ``serverShutdown``,
  replaces a connection make-before-break: opens the new one, subscribes its shard's
  streams on it, switches once the exchange confirmed them all and a data frame
  arrived, then closes the old one. While both are open, both deliver, and each pair
  only passes updates whose ``order_key`` (event time, trade id or book update id) is
  strictly newer than the last one delivered: the switch loses nothing and duplicates
  nothing.

Updates are delivered in batches through ``on_batch``: whatever arrived while the
previous batch was being handled goes out together, so the bus can pipeline a batch.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Frame, Opcode

from pricectl.config import ExchangeSettings
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.binance import (
    ControlError,
    ControlReply,
    FrameParser,
    PriceEvent,
    ServerShutdown,
    Skipped,
    combined_url,
    subscribe_message,
)
from pricectl.core.breaker import Breaker, BreakerPolicy, BreakerState
from pricectl.core.heartbeat import IdleDetector
from pricectl.core.loggate import LogGate
from pricectl.core.pairs import PairMap
from pricectl.core.ratelimit import SlidingWindow
from pricectl.core.subscriptions import SEND_SLACK_S, Outcome, SubscriptionPlan
from pricectl.core.ticks import PriceUpdate

__all__ = [
    "REPLY_TIMEOUT_S",
    "STREAMS_PER_MESSAGE",
    "URL_STREAM_CHARS",
    "BatchCallback",
    "BinanceWS",
    "ConnectionStatus",
    "WSStatus",
]

log = logging.getLogger("pricectl.exchange.ws")

#: Receives each batch of new, de-duplicated updates (unstamped, ``source="ws"``).
BatchCallback = Callable[[list[PriceUpdate]], Awaitable[None]]

#: Binance counts connection attempts per IP per 5 minutes (docs/binance.md §3).
CONNECT_WINDOW_S = 300.0

#: Streams in one SUBSCRIBE/UNSUBSCRIBE. Binance documents no bound, but requests with
#: hundreds of streams, or frames over 4,096 bytes, are reported to go unanswered.
STREAMS_PER_MESSAGE = 100

#: Bytes of one control frame at most (see :data:`STREAMS_PER_MESSAGE`).
MESSAGE_BYTES = 4000

#: Characters of stream names a connection URL carries at most (Binance refuses request
#: targets of about 8,000 characters; the rest is subscribed).
URL_STREAM_CHARS = 2000

#: Seconds a control request may wait for its reply before it counts as failed.
REPLY_TIMEOUT_S = 5.0

#: Backoff of a failed control request: doubling from the first to the second.
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0

#: Seconds over which :meth:`BinanceWS.status` averages control messages per second.
RATE_WINDOW_S = 10.0

#: Parser counter keys that are not skips (see pricectl.core.binance).
_NOT_SKIPS = ("parsed:", "control", "shutdown")

_ids = itertools.count(1)


@dataclass(frozen=True)
class ConnectionStatus:
    """One open exchange connection (:meth:`BinanceWS.connections`); ages in seconds."""

    id: int
    #: The shard it carries (:class:`~pricectl.core.subscriptions.SubscriptionPlan`).
    shard: int
    #: ``active``, or ``replacement`` while make-before-break opens its successor.
    role: str
    #: Streams the exchange confirmed it carries, and those its shard wants.
    streams: int
    wanted: int
    #: Control requests sent and not answered yet.
    pending: int
    #: Control messages and pongs it sent, and what it sent in the last second.
    messages: int
    pongs: int
    messages_last_s: int
    #: Control requests that failed (an error reply, or none in time).
    errors: int
    #: Connections its shard opened after the first one.
    reconnects: int
    age: float


@dataclass(frozen=True)
class WSStatus:
    """The WebSocket side at one moment (:meth:`BinanceWS.status`); ages in seconds."""

    #: Every shard has an open connection.
    connected: bool
    url: str
    stream: str
    #: The reconnect breaker: ``closed``, ``open`` or ``half_open``.
    breaker: str
    #: Since the last frame on any connection (None before the first).
    last_frame_age: float | None
    #: Of the oldest connection in use (None while not every shard is connected).
    connection_age: float | None
    reconnects: int
    connect_attempts: int
    #: Connection attempts held back by Binance's per-IP connection limit.
    connect_limited: int
    duplicates_dropped: int
    last_disconnect: str | None
    #: Frames that produced a price.
    parsed: int
    #: Frames that produced no price, by reason (``invalid_json``: 3).
    skips: Mapping[str, int]
    #: Streams asked for, and those the exchange confirmed on the connections in use.
    streams_wanted: int
    streams_subscribed: int
    connections: tuple[ConnectionStatus, ...]
    #: Control messages sent (SUBSCRIBE/UNSUBSCRIBE) in all, per second over the last
    #: 10 s, and those that failed.
    control_messages: int
    control_messages_per_s: float
    control_errors: int


class _Connection(ClientConnection):
    """websockets' client connection, telling us of each server ping it answers (the
    protocol core has already queued the pong when :meth:`process_event` runs)."""

    on_ping: Callable[[], None] | None = None

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING and self.on_ping is not None:
            self.on_ping()
        super().process_event(event)


class _Conn:
    """One open WebSocket and what we know about it."""

    __slots__ = (
        "closed_reason",
        "got_data",
        "id",
        "idle",
        "opened_at",
        "shard",
        "shutdown",
        "wake",
        "ws",
    )

    def __init__(self, ws: ClientConnection, shard: int, opened_at: float, idle_timeout: float):
        self.id = next(_ids)
        self.ws = ws
        self.shard = shard
        self.opened_at = opened_at
        self.idle = IdleDetector(idle_timeout)
        self.idle.started(opened_at)
        #: True once a price frame arrived (the make-before-break switch point).
        self.got_data = False
        #: True once the server announced ``serverShutdown``.
        self.shutdown = False
        #: Set when the connection ended, with why.
        self.closed_reason: str | None = None
        #: Wakes this connection's sender (a reply, new streams).
        self.wake = asyncio.Event()


class _Shard:
    """One shard of the plan and the connection(s) carrying it."""

    __slots__ = (
        "active",
        "backoff",
        "candidate",
        "connected_once",
        "id",
        "reconnects",
        "retired",
        "wake",
    )

    def __init__(self, shard: int, backoff: Backoff) -> None:
        self.id = shard
        self.backoff = backoff
        self.active: _Conn | None = None
        self.candidate: _Conn | None = None
        self.connected_once = False
        self.reconnects = 0
        #: The plan dropped this shard: its supervisor closes its connections and ends.
        self.retired = False
        self.wake = asyncio.Event()

    def conns(self) -> tuple[_Conn, ...]:
        return tuple(c for c in (self.active, self.candidate) if c is not None)

    def up(self) -> bool:
        return self.active is not None and self.active.closed_reason is None


class BinanceWS:
    """The exchange WebSocket(s) for the pairs of ``pair_map``; ``await run()`` until
    cancelled, :meth:`set_pairs` to change the pairs at any time.

    ``exchange`` is the config's exchange section (URL, stream kind, timeouts and Binance's
    limits); ``backoff`` and ``breaker`` pace reconnects and ``idle_timeout`` replaces a
    silent connection (``resilience.backoff``, ``.breaker``, ``.heartbeat.idle_timeout``).
    ``on_state`` is called (synchronously) whenever a connection comes or goes, the
    breaker moves, or the exchange confirms a change of streams, so a relay can re-decide
    its sources at once. ``clock`` (monotonic seconds) and ``rand`` (backoff jitter) are
    injectable, and so are ``reply_timeout`` and ``retry_initial`` (seconds a control
    request waits for its reply; the first wait before one is sent again).
    """

    def __init__(
        self,
        exchange: ExchangeSettings,
        pair_map: PairMap,
        on_batch: BatchCallback,
        *,
        backoff: BackoffPolicy,
        breaker: BreakerPolicy,
        idle_timeout: float,
        on_state: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        reply_timeout: float = REPLY_TIMEOUT_S,
        retry_initial: float = RETRY_INITIAL_S,
    ) -> None:
        self.kind: str = exchange.stream
        self.base_url = exchange.ws_url
        self._on_batch = on_batch
        self._on_state = on_state
        self._clock = clock
        self._rand = rand
        self._backoff_policy = backoff
        self.breaker = Breaker(breaker, self._breaker_moved)
        self._connects = SlidingWindow(exchange.max_connects_per_5m, CONNECT_WINDOW_S)
        self.plan = SubscriptionPlan(
            streams_per_connection=exchange.streams_per_connection,
            messages_per_second=exchange.max_messages_per_second,
            streams_per_message=STREAMS_PER_MESSAGE,
            message_bytes=MESSAGE_BYTES,
            url_chars=URL_STREAM_CHARS,
            reply_timeout=reply_timeout,
            retry_initial=retry_initial,
            retry_max=max(RETRY_MAX_S, retry_initial),
        )
        self._idle_timeout = idle_timeout
        self._connect_timeout = exchange.connect_timeout
        self._max_age = exchange.max_connection_age
        self._log_gate = LogGate(10.0)
        self._last_key: dict[str, int] = {}
        self._pending: list[PriceUpdate] = []
        self._ready = asyncio.Event()
        self._shards: dict[int, _Shard] = {}
        #: Every connection whose reader has not ended yet (those of retired shards and
        #: replaced ones still closing included).
        self._live: dict[_Conn, None] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._sent_at: collections.deque[float] = collections.deque()
        #: The pairs asked for; the parser knows every pair ever asked for (bounded by
        #: the exchange's symbol list), so frames still arriving for a pair being
        #: unsubscribed parse and are dropped here, not counted as garbage.
        self._want = pair_map
        self._wanted: frozenset[str] = frozenset()
        self._parsed: dict[str, str] = {}
        self._stream_pair: dict[str, str] = {}
        self._down: frozenset[str] = frozenset()
        self.parser = FrameParser(pair_map, self.kind)
        #: Connections opened after the first one of their shard (drops, idles,
        #: replacements).
        self.reconnects = 0
        #: Connection attempts made (successful or not).
        self.connect_attempts = 0
        #: Updates dropped because their order key was not newer (overlap, replays).
        self.duplicates = 0
        #: Times a connect had to wait for the 5-minute connection limit.
        self.connect_limited = 0
        #: Control messages sent (SUBSCRIBE/UNSUBSCRIBE), and those that failed (an error
        #: reply or none in time).
        self.messages_sent = 0
        self.control_errors = 0
        #: Pongs that found the send window already full (should stay 0).
        self.pongs_over_limit = 0
        self.last_frame_at: float | None = None
        self.last_disconnect: str | None = None
        self.set_pairs(pair_map)

    # -- the pairs -----------------------------------------------------------------------

    def set_pairs(self, pair_map: PairMap) -> None:
        """Stream exactly the pairs of ``pair_map`` from now on (synchronous, idempotent).

        The connections are brought there in the background (see the module docstring);
        :meth:`subscribed_pairs` says what the exchange carries now.
        """
        kind = self.kind
        self._want = pair_map
        self._wanted = frozenset(pair_map.pairs)
        streams = []
        grew = False
        for p in pair_map.pairs:
            stream = pair_map.stream_for(p, kind)
            streams.append(stream)
            self._stream_pair[stream] = p
            symbol = pair_map.symbol_for(p)
            if self._parsed.get(symbol) != p:
                # A symbol's newest name wins (an alias may have named it before).
                self._parsed[symbol] = p
                grew = True
        if grew:
            counts = self.parser.counts
            parsed = PairMap.build(self._parsed.values(), pair_map.aliases)
            self.parser = FrameParser(parsed, kind)
            self.parser.counts = counts
        self.plan.set_streams(streams)
        self._sync_shards()
        for shard in self._shards.values():
            shard.wake.set()
            for conn in shard.conns():
                conn.wake.set()
        self._state_changed(notify=self._tg is not None)

    @property
    def pairs(self) -> tuple[str, ...]:
        """The pairs asked for (:meth:`set_pairs`)."""
        return self._want.pairs

    def subscribed_pairs(self) -> tuple[str, ...]:
        """The wanted pairs that a current connection carries, as the exchange confirmed
        (in the wanted order)."""
        carried: set[str] = set()
        for shard in self._shards.values():
            if shard.up() and shard.active is not None:
                carried.update(self.plan.carried(shard.active.id))
        kind = self.kind
        want = self._want
        return tuple(p for p in want.pairs if want.stream_for(p, kind) in carried)

    def down_pairs(self) -> frozenset[str]:
        """Wanted pairs whose connection is down now (their shard has no open one)."""
        return self._down

    def _sync_shards(self) -> None:
        """A :class:`_Shard` (and its supervisor, once running) for each shard of the plan."""
        wanted = set(self.plan.shards())
        for sid, shard in list(self._shards.items()):
            if sid not in wanted:
                shard.retired = True
                shard.wake.set()
                del self._shards[sid]
        for sid in sorted(wanted):
            if sid not in self._shards:
                shard = _Shard(sid, Backoff(self._backoff_policy, rand=self._rand))
                self._shards[sid] = shard
                if self._tg is not None:
                    self._tg.create_task(self._supervise(shard), name=f"ws-shard-{sid}")

    # -- observable state ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while every shard has an open, current connection."""
        return bool(self._shards) and all(s.up() for s in self._shards.values())

    @property
    def healthy(self) -> bool:
        """Whether the relay should count on the WebSocket: the breaker is closed.

        A drop with the breaker still closed is a reconnect in progress: pairs stay on
        ``ws`` until they go stale (``heartbeat.stale_after``) or the breaker opens.
        """
        return self.breaker.state is BreakerState.CLOSED

    @property
    def skips(self) -> dict[str, int]:
        """Parser outcomes that produced no price, by reason (``invalid_json``: 3)."""
        return {k: v for k, v in self.parser.counts.items() if not k.startswith(_NOT_SKIPS) and v}

    def last_frame_age(self) -> float | None:
        """Seconds since the last frame on any connection (``None`` before the first)."""
        if self.last_frame_at is None:
            return None
        return max(0.0, self._clock() - self.last_frame_at)

    def control_rate(self) -> float:
        """Control messages sent per second over the last :data:`RATE_WINDOW_S` seconds."""
        now = self._clock()
        sent = self._sent_at
        while sent and sent[0] <= now - RATE_WINDOW_S:
            sent.popleft()
        return len(sent) / RATE_WINDOW_S

    def connections(self) -> tuple[ConnectionStatus, ...]:
        """One entry per open connection (see :class:`ConnectionStatus`)."""
        now = self._clock()
        out: list[ConnectionStatus] = []
        for shard in self._shards.values():
            for conn in shard.conns():
                if conn.closed_reason is not None:
                    continue
                stats = self.plan.stats(conn.id, now)
                out.append(
                    ConnectionStatus(
                        id=conn.id,
                        shard=shard.id,
                        role="active" if conn is shard.active else "replacement",
                        streams=stats.get("streams", 0),
                        wanted=len(self.plan.shard_streams(shard.id)),
                        pending=stats.get("pending", 0),
                        messages=stats.get("messages", 0),
                        pongs=stats.get("pongs", 0),
                        messages_last_s=stats.get("messages_last_s", 0),
                        errors=stats.get("errors", 0),
                        reconnects=shard.reconnects,
                        age=round(now - conn.opened_at, 3),
                    )
                )
        return tuple(out)

    def status(self) -> WSStatus:
        """Upstream state for ``/health`` and metrics."""
        now = self._clock()
        age = self.last_frame_age()
        ages = [now - s.active.opened_at for s in self._shards.values() if s.up() and s.active]
        conns = self.connections()
        return WSStatus(
            connected=self.connected,
            url=self.base_url,
            stream=self.kind,
            breaker=self.breaker.state_at(now).value,
            last_frame_age=None if age is None else round(age, 3),
            connection_age=round(max(ages), 3) if ages and self.connected else None,
            reconnects=self.reconnects,
            connect_attempts=self.connect_attempts,
            connect_limited=self.connect_limited,
            duplicates_dropped=self.duplicates,
            last_disconnect=self.last_disconnect,
            parsed=sum(v for k, v in self.parser.counts.items() if k.startswith("parsed:")),
            skips=self.skips,
            streams_wanted=len(self._want.pairs),
            streams_subscribed=sum(c.streams for c in conns if c.role == "active"),
            connections=conns,
            control_messages=self.messages_sent,
            control_messages_per_s=round(self.control_rate(), 3),
            control_errors=self.control_errors,
        )

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the connections until cancelled; every close is explicit."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._deliver(), name="ws-deliver")
                for shard in list(self._shards.values()):
                    tg.create_task(self._supervise(shard), name=f"ws-shard-{shard.id}")
        finally:
            self._tg = None
            was = any(s.up() for s in self._shards.values())
            for conn in list(self._live):
                conn.ws.transport.abort()
                self.plan.closed(conn.id)
            self._live.clear()
            for shard in self._shards.values():
                shard.active = shard.candidate = None
            if was:
                self._state_changed()

    def abort(self) -> None:
        """Cut every open connection now (synchronous; the tasks notice and end).

        For a caller whose cancel did not stop :meth:`run` in time: the exchange socket
        must not outlive the decision to stop.
        """
        for conn in list(self._live):
            if conn.closed_reason is None:
                conn.closed_reason = "closed by us (aborted)"
            conn.ws.transport.abort()

    async def _deliver(self) -> None:
        """Hand whatever arrived since the last batch to ``on_batch``, one batch at a time."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._on_batch(batch)

    async def _supervise(self, shard: _Shard) -> None:
        """Keep one current connection for ``shard`` until it is retired."""
        try:
            while not shard.retired:
                if shard.active is None:
                    conn = await self._open(shard)
                    if conn is None:
                        return
                    shard.active = conn
                    self._state_changed()
                conn = shard.active
                shard.wake.clear()
                now = self._clock()
                if conn.closed_reason is not None:
                    self._lost(shard, conn, conn.closed_reason)
                    await self._pause_before_reconnect(shard)
                    continue
                if conn.idle.is_idle(now):
                    self._lost(shard, conn, f"no frame for {self._idle_timeout:g}s (idle)")
                    self._close_soon(conn, "idle")
                    await self._pause_before_reconnect(shard)
                    continue
                if conn.shutdown:
                    await self._replace(shard, conn, "serverShutdown")
                    continue
                if now >= conn.opened_at + self._max_age:
                    await self._replace(shard, conn, f"connection age {self._max_age:g}s reached")
                    continue
                deadline = min(conn.idle.deadline() or now, conn.opened_at + self._max_age)
                await _wait(shard.wake, deadline - now)
        finally:
            if shard.retired:
                for conn in shard.conns():
                    log.info("ws: closing #%d: its shard %d has no streams left", conn.id, shard.id)
                    self._close_soon(conn, "no streams left")
                shard.active = shard.candidate = None
                self._state_changed()

    def _lost(self, shard: _Shard, conn: _Conn, reason: str) -> None:
        log.warning("ws: disconnected #%d (shard %d): %s", conn.id, shard.id, reason)
        self.last_disconnect = reason
        shard.active = None
        self._state_changed()

    async def _pause_before_reconnect(self, shard: _Shard) -> None:
        delay = shard.backoff.next_delay(self._clock())
        log.info(
            "ws: shard %d reconnecting in %.2fs (backoff attempt %d)",
            shard.id,
            delay,
            shard.backoff.attempt,
        )
        await _wait(shard.wake, delay, until=lambda: shard.retired)

    def _switch_budget(self, conn: _Conn) -> float:
        """Seconds a replacement may take to carry its shard: the idle timeout, plus the
        messages it needs at the control rate, plus one reply's wait."""
        plan = self.plan
        messages = math.ceil(plan.missing(conn.id) / plan.streams_per_message)
        return (
            self._idle_timeout
            + plan.reply_timeout
            + messages * (1.0 + SEND_SLACK_S) / max(1, plan.control_limit)
        )

    async def _replace(self, shard: _Shard, old: _Conn, reason: str) -> None:
        """Make-before-break: open a new connection, subscribe its shard's streams on it,
        switch once they are all confirmed and a data frame came."""
        log.info(
            "ws: replacing connection #%d of shard %d (%s): opening the new one first",
            old.id,
            shard.id,
            reason,
        )
        new = await self._open(shard)
        if new is None:
            return
        shard.candidate = new
        try:
            deadline = self._clock() + self._switch_budget(new)
            while new.closed_reason is None and not shard.retired and not self._switchable(new):
                now = self._clock()
                if now >= deadline:
                    break
                shard.wake.clear()
                await _wait(shard.wake, deadline - now)
        finally:
            shard.candidate = None
        if shard.retired:
            self._close_soon(new, "no streams left")
            return
        if new.closed_reason is None and self._switchable(new):
            shard.active = new
            self._close_soon(old, "replaced")
            log.info("ws: shard %d switched from #%d to #%d (%s)", shard.id, old.id, new.id, reason)
            self._state_changed()
            return
        why = new.closed_reason or "its streams not confirmed in time"
        log.warning("ws: replacement #%d failed (%s); keeping #%d for now", new.id, why, old.id)
        self._close_soon(new, "replacement failed")
        await self._pause_before_reconnect(shard)

    def _switchable(self, conn: _Conn) -> bool:
        if not self.plan.ready(conn.id):
            return False
        return conn.got_data or not self.plan.shard_streams(conn.shard)

    async def _open(self, shard: _Shard) -> _Conn | None:
        """Connect for ``shard``, waiting as the rate limit, the breaker and the backoff
        require; ``None`` if the shard was retired meanwhile."""
        while not shard.retired:
            now = self._clock()
            wait = self._connects.wait_time(now)
            if wait > 0:
                self.connect_limited += 1
                log.warning(
                    "ws: %d connection attempts in the last 5 minutes (limit %d); "
                    "waiting %.1fs before the next",
                    self._connects.count(now),
                    self._connects.limit,
                    wait,
                )
                await _wait(shard.wake, wait, until=lambda: shard.retired)
                continue
            if not self.breaker.allow(now):
                await asyncio.sleep(max(self.breaker.retry_in(now), 0.01))
                continue
            self._connects.try_acquire(now)
            self.connect_attempts += 1
            streams = self.plan.url_streams(shard.id)
            url = combined_url(self.base_url, streams)
            try:
                ws = await connect(
                    url,
                    open_timeout=self._connect_timeout,
                    ping_interval=None,
                    close_timeout=min(2.0, self._connect_timeout),
                    max_size=2**22,
                    proxy=None,
                    create_connection=_Connection,
                )
            except asyncio.CancelledError:
                self.breaker.record_failure(self._clock())
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.breaker.record_failure(self._clock())
                delay = shard.backoff.next_delay(self._clock())
                log.warning(
                    "ws: connect to %s failed: %s; retry in %.2fs (breaker %s)",
                    self.base_url,
                    _describe(exc),
                    delay,
                    self.breaker.state.value,
                )
                await _wait(shard.wake, delay, until=lambda: shard.retired)
                continue
            now = self._clock()
            self.breaker.record_success(now)
            shard.backoff.connected(now)
            conn = _Conn(ws, shard.id, now, self._idle_timeout)
            if shard.connected_once:
                self.reconnects += 1
                shard.reconnects += 1
            shard.connected_once = True
            self.plan.opened(conn.id, shard=shard.id, url_streams=streams, now=now)
            self._live[conn] = None
            assert isinstance(ws, _Connection)
            ws.on_ping = lambda conn=conn: self._pinged(conn)
            assert self._tg is not None
            self._tg.create_task(self._read(conn), name=f"ws-read-{conn.id}")
            self._tg.create_task(self._send_loop(conn), name=f"ws-send-{conn.id}")
            log.info(
                "ws: connected #%d (shard %d) to %s with %d %s streams in the URL, %d to subscribe",
                conn.id,
                shard.id,
                self.base_url,
                len(streams),
                self.kind,
                self.plan.missing(conn.id),
            )
            if shard.retired:
                self._close_soon(conn, "no streams left")
                return None
            return conn
        return None

    def _close_soon(self, conn: _Conn, reason: str) -> None:
        """Close ``conn`` in the background (a stalled server may never answer the close)."""
        if conn.closed_reason is None:
            conn.closed_reason = f"closed by us ({reason})"
        conn.wake.set()
        if self._tg is not None:
            self._tg.create_task(self._close(conn), name=f"ws-close-{conn.id}")
        else:
            conn.ws.transport.abort()

    @staticmethod
    async def _close(conn: _Conn) -> None:
        try:
            await conn.ws.close()
        except (OSError, WebSocketException):
            conn.ws.transport.abort()

    # -- one connection ------------------------------------------------------------------

    def _pinged(self, conn: _Conn) -> None:
        """The server pinged ``conn`` and the pong is on its way: it counts toward our rate."""
        now = self._clock()
        conn.idle.seen(now)
        if not self.plan.pong(conn.id, now):
            self.pongs_over_limit += 1

    async def _send_loop(self, conn: _Conn) -> None:
        """Send what the plan asks of ``conn``, when its send window allows."""
        plan = self.plan
        while conn.closed_reason is None:
            conn.wake.clear()
            now = self._clock()
            for outcome in plan.expire(now):
                self._failed(outcome)
            request = plan.next_request(conn.id, now)
            if request is None:
                due = plan.next_due(conn.id, now)
                await _wait(conn.wake, None if due is None else due - now)
                continue
            text = subscribe_message(request.method, request.streams, request.id)
            try:
                await conn.ws.send(text)
            except ConnectionClosed:
                return
            self.messages_sent += 1
            self._sent_at.append(now)
            log.info(
                "ws: %s %d streams on #%d (id %d)",
                request.method,
                len(request.streams),
                conn.id,
                request.id,
            )

    def _failed(self, outcome: Outcome) -> None:
        self.control_errors += 1
        r = outcome.request
        retry_in = (outcome.retry_at or self._clock()) - self._clock()
        log.warning(
            "ws: %s of %d streams on #%d (id %d) failed: %s; sending them again in %.1fs",
            r.method,
            len(r.streams),
            r.conn,
            r.id,
            outcome.error,
            max(0.0, retry_in),
        )

    async def _read(self, conn: _Conn) -> None:
        """Read frames until the connection ends; never raises for a closed connection."""
        try:
            async for text in conn.ws:
                now = self._clock()
                conn.idle.seen(now)
                self.last_frame_at = now
                # self.parser, not a local: set_pairs swaps it at run time.
                self._handle(conn, self.parser.parse(text, time.time_ns()), now)
            reason = f"closed by the server ({_close_info(conn.ws)})"
        except ConnectionClosed as exc:
            reason = f"connection lost ({_describe(exc)})"
        except OSError as exc:
            reason = f"socket error ({exc})"
        if conn.closed_reason is None:
            conn.closed_reason = reason
        self.plan.closed(conn.id)
        self._live.pop(conn, None)
        conn.wake.set()
        shard = self._shards.get(conn.shard)
        if shard is not None:
            shard.wake.set()

    def _handle(self, conn: _Conn, events: list[Any], now: float) -> None:
        fresh: list[PriceUpdate] = []
        last_key = self._last_key
        wanted = self._wanted
        for ev in events:
            if type(ev) is PriceEvent:
                u = ev.update
                if u.pair not in wanted:
                    continue
                prev = last_key.get(u.pair)
                if prev is None or u.order_key > prev:
                    last_key[u.pair] = u.order_key
                    fresh.append(u)
                else:
                    self.duplicates += 1
                if not conn.got_data:
                    conn.got_data = True
                    self._wake_shard(conn)
            elif type(ev) is Skipped:
                if not ev.reason.startswith("ignored:") and self._log_gate.allow(ev.reason, now):
                    more = self._log_gate.take_suppressed(ev.reason)
                    log.warning(
                        "ws: skipped a frame (%s) %s%s",
                        ev.reason,
                        ev.detail,
                        f" (+{more} more since last report)" if more else "",
                    )
            elif type(ev) is ServerShutdown:
                log.warning("ws: serverShutdown on #%d: replacing the connection", conn.id)
                conn.shutdown = True
                self._wake_shard(conn)
            elif type(ev) is ControlError:
                outcome = self.plan.reply(conn.id, ev.id, f"code {ev.code}: {ev.msg}", now)
                if outcome is not None:
                    self._failed(outcome)
                else:
                    log.warning("ws: request %s refused: code %d %s", ev.id, ev.code, ev.msg)
                conn.wake.set()
            elif type(ev) is ControlReply:
                outcome = self.plan.reply(conn.id, ev.id, None, now)
                log.debug("ws: request %s answered: %r", ev.id, ev.result)
                conn.wake.set()
                if outcome is not None:
                    self._wake_shard(conn)
                    self._state_changed()
        if fresh and conn.closed_reason is None:
            self._pending.extend(fresh)
            self._ready.set()

    def _wake_shard(self, conn: _Conn) -> None:
        shard = self._shards.get(conn.shard)
        if shard is not None:
            shard.wake.set()

    # -- callbacks -----------------------------------------------------------------------

    def _breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            log.warning(
                "ws: circuit breaker OPEN after %d failed connects; next probe in %gs",
                self.breaker.failures,
                self.breaker.policy.cooldown,
            )
        else:
            log.info("ws: circuit breaker %s -> %s", old.value, new.value)
        self._state_changed()

    def _state_changed(self, notify: bool = True) -> None:
        down: set[str] = set()
        stream_pair = self._stream_pair
        for shard in self._shards.values():
            if not shard.up():
                down.update(stream_pair[s] for s in self.plan.shard_streams(shard.id))
        self._down = frozenset(down)
        if notify and self._on_state is not None:
            self._on_state()


async def _wait(
    event: asyncio.Event, timeout: float | None, until: Callable[[], bool] | None = None
) -> None:
    """Until ``event`` is set (or ``until()`` is true when it is), or ``timeout`` seconds."""
    try:
        async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
            while True:
                await event.wait()
                if until is None or until():
                    return
                event.clear()
    except TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_info(ws: ClientConnection) -> str:
    code = ws.close_code
    reason = ws.close_reason
    return f"code {code}" + (f" {reason}" if reason else "") if code is not None else "no close"
