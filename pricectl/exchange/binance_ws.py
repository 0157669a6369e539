"""The Binance market-data WebSocket (websockets' asyncio client): one connection, every pair.

What this adapter does, and which core piece decides (``pricectl.core``):

- Opens ``<ws_url>/stream?streams=btcusdt@ticker/ethusdt@ticker`` (combined streams,
  protocol §1.2) and turns each text frame into price updates with
  :class:`~pricectl.core.binance.FrameParser`; bad frames are skipped and counted.
- Answers server pings with the ping's payload: websockets' protocol core does this for
  every PING frame it reads (``Frame(PONG, frame.data)``), as long as we keep reading.
  Binance cuts a client that has not ponged within a minute (§3). We send no pings of
  our own (``ping_interval=None``): unsolicited frames count toward the 5 msg/s limit.
- Replaces a connection that said nothing for ``heartbeat.idle_timeout``
  (:class:`~pricectl.core.heartbeat.IdleDetector`): a half-dead TCP connection never
  errors on its own.
- Reconnects under :class:`~pricectl.core.backoff.Backoff` and
  :class:`~pricectl.core.breaker.Breaker`, never more than ``exchange.max_connects_per_5m``
  attempts in any 5 minutes and never more than ``exchange.max_messages_per_second``
  outgoing messages (:class:`~pricectl.core.ratelimit.SlidingWindow`).
- Before ``exchange.max_connection_age`` (Binance cuts at 24 h) and on ``serverShutdown``,
  replaces the connection make-before-break: opens the new one, switches when its first
  data frame arrives, then closes the old one. While both are open, both deliver, and
  each pair only passes updates whose ``order_key`` (event time, trade id or book update
  id) is strictly newer than the last one delivered: the switch loses nothing and
  duplicates nothing.
- :meth:`BinanceWS.add_pairs` / :meth:`BinanceWS.remove_pairs` send SUBSCRIBE /
  UNSUBSCRIBE on the live connection.

Updates are delivered in batches through ``on_batch``: whatever arrived while the
previous batch was being handled goes out together, so the bus can pipeline a batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

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
from pricectl.core.ticks import PriceUpdate

__all__ = ["BatchCallback", "BinanceWS", "WSStatus"]

log = logging.getLogger("pricectl.exchange.ws")

#: Receives each batch of new, de-duplicated updates (unstamped, ``source="ws"``).
BatchCallback = Callable[[list[PriceUpdate]], Awaitable[None]]

#: Binance counts connection attempts per IP per 5 minutes (protocol §3).
CONNECT_WINDOW_S = 300.0

#: Added to the 1 s send window: Binance counts messages as they *arrive*, so a burst
#: delayed in the network must not land in the same second as the next one.
SEND_SLACK_S = 0.25

#: Parser counter keys that are not skips (see pricectl.core.binance).
_NOT_SKIPS = ("parsed:", "control", "shutdown")

_ids = itertools.count(1)


@dataclass(frozen=True)
class WSStatus:
    """The WebSocket side at one moment (:meth:`BinanceWS.status`); ages in seconds."""

    connected: bool
    url: str
    stream: str
    #: The reconnect breaker: ``closed``, ``open`` or ``half_open``.
    breaker: str
    #: Since the last frame on any connection (None before the first).
    last_frame_age: float | None
    #: Of the connection in use (None while disconnected).
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


class _Conn:
    """One open WebSocket and what we know about it."""

    __slots__ = ("closed_reason", "got_data", "id", "idle", "opened_at", "shutdown", "ws")

    def __init__(self, ws: ClientConnection, opened_at: float, idle_timeout: float) -> None:
        self.id = next(_ids)
        self.ws = ws
        self.opened_at = opened_at
        self.idle = IdleDetector(idle_timeout)
        self.idle.started(opened_at)
        #: True once a price frame arrived (the make-before-break switch point).
        self.got_data = False
        #: True once the server announced ``serverShutdown``.
        self.shutdown = False
        #: Set when the connection ended, with why.
        self.closed_reason: str | None = None


class BinanceWS:
    """The exchange WebSocket for the pairs of ``pair_map``; ``await run()`` until cancelled.

    ``exchange`` is the config's exchange section (URL, stream kind, timeouts and Binance's
    limits); ``backoff`` and ``breaker`` pace reconnects and ``idle_timeout`` replaces a
    silent connection (``resilience.backoff``, ``.breaker``, ``.heartbeat.idle_timeout``).
    ``on_state`` is called (synchronously) whenever :attr:`connected` or the breaker state
    changes, so a relay can re-decide its sources at once. ``clock`` (monotonic seconds)
    and ``rand`` (backoff jitter) are injectable.
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
    ) -> None:
        self.kind: str = exchange.stream
        self.base_url = exchange.ws_url
        self._pair_map = pair_map
        self.parser = FrameParser(self._pair_map, self.kind)
        self._on_batch = on_batch
        self._on_state = on_state
        self._clock = clock
        self.backoff = Backoff(backoff, rand=rand)
        self.breaker = Breaker(breaker, self._breaker_moved)
        self._connects = SlidingWindow(exchange.max_connects_per_5m, CONNECT_WINDOW_S)
        self._sends = SlidingWindow.per_second(exchange.max_messages_per_second, slack=SEND_SLACK_S)
        self._idle_timeout = idle_timeout
        self._connect_timeout = exchange.connect_timeout
        self._max_age = exchange.max_connection_age
        self._log_gate = LogGate(10.0)
        self._last_key: dict[str, int] = {}
        self._pending: list[PriceUpdate] = []
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._active: _Conn | None = None
        self._candidate: _Conn | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._request_ids = itertools.count(1)
        #: Connections opened after the first one (drops, idles, replacements).
        self.reconnects = 0
        #: Connection attempts made (successful or not).
        self.connect_attempts = 0
        #: Updates dropped because their order key was not newer (overlap, replays).
        self.duplicates = 0
        #: Times a connect had to wait for the 5-minute connection limit.
        self.connect_limited = 0
        #: Control messages sent (SUBSCRIBE/UNSUBSCRIBE).
        self.messages_sent = 0
        self.last_frame_at: float | None = None
        self._ever_connected = False
        self.last_disconnect: str | None = None

    # -- observable state ----------------------------------------------------------------

    @property
    def pairs(self) -> tuple[str, ...]:
        """The pairs this connection carries now."""
        return self._pair_map.pairs

    @property
    def connected(self) -> bool:
        """True while a connection is open and current."""
        return self._active is not None and self._active.closed_reason is None

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

    def status(self) -> WSStatus:
        """Upstream state for ``/health`` and metrics."""
        now = self._clock()
        active = self._active
        age = self.last_frame_age()
        return WSStatus(
            connected=self.connected,
            url=self.base_url,
            stream=self.kind,
            breaker=self.breaker.state_at(now).value,
            last_frame_age=None if age is None else round(age, 3),
            connection_age=(
                round(now - active.opened_at, 3) if active is not None and self.connected else None
            ),
            reconnects=self.reconnects,
            connect_attempts=self.connect_attempts,
            connect_limited=self.connect_limited,
            duplicates_dropped=self.duplicates,
            last_disconnect=self.last_disconnect,
            parsed=sum(v for k, v in self.parser.counts.items() if k.startswith("parsed:")),
            skips=self.skips,
        )

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the connection until cancelled; every close is explicit."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._deliver(), name="ws-deliver")
                await self._supervise()
        finally:
            self._tg = None
            for conn in (self._active, self._candidate):
                if conn is not None:
                    conn.ws.transport.abort()
            was = self.connected
            self._active = self._candidate = None
            if was:
                self._state_changed()

    def abort(self) -> None:
        """Cut every open connection now (synchronous; the tasks notice and end).

        For a caller whose cancel did not stop :meth:`run` in time: the exchange socket
        must not outlive the decision to stop.
        """
        for conn in (self._active, self._candidate):
            if conn is not None:
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

    async def _supervise(self) -> None:
        while True:
            if self._active is None:
                self._active = await self._open()
                self._state_changed()
            conn = self._active
            self._wake.clear()
            now = self._clock()
            if conn.closed_reason is not None:
                self._lost(conn, conn.closed_reason)
                await self._pause_before_reconnect()
                continue
            if conn.idle.is_idle(now):
                self._lost(conn, f"no frame for {self._idle_timeout:g}s (idle)")
                self._close_soon(conn, "idle")
                await self._pause_before_reconnect()
                continue
            if conn.shutdown:
                await self._replace(conn, "serverShutdown")
                continue
            if now >= conn.opened_at + self._max_age:
                await self._replace(conn, f"connection age {self._max_age:g}s reached")
                continue
            deadline = min(conn.idle.deadline() or now, conn.opened_at + self._max_age)
            await self._wait(deadline - now)

    async def _wait(self, timeout: float) -> None:
        """Until something happened on a connection, or ``timeout`` seconds."""
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _lost(self, conn: _Conn, reason: str) -> None:
        log.warning("ws: disconnected #%d: %s", conn.id, reason)
        self.last_disconnect = reason
        self._active = None
        self._state_changed()

    async def _pause_before_reconnect(self) -> None:
        delay = self.backoff.next_delay(self._clock())
        log.info("ws: reconnecting in %.2fs (backoff attempt %d)", delay, self.backoff.attempt)
        await asyncio.sleep(delay)

    async def _replace(self, old: _Conn, reason: str) -> None:
        """Make-before-break: open a new connection, switch at its first data frame."""
        log.info("ws: replacing connection #%d (%s): opening the new one first", old.id, reason)
        new = await self._open()
        self._candidate = new
        try:
            deadline = self._clock() + self._idle_timeout
            while new.closed_reason is None and not new.got_data:
                now = self._clock()
                if now >= deadline:
                    break
                self._wake.clear()
                await self._wait(deadline - now)
        finally:
            self._candidate = None
        if new.got_data and new.closed_reason is None:
            self._active = new
            self._close_soon(old, "replaced")
            log.info("ws: switched from #%d to #%d (%s)", old.id, new.id, reason)
            self._state_changed()
            return
        why = new.closed_reason or f"no data within {self._idle_timeout:g}s"
        log.warning("ws: replacement #%d failed (%s); keeping #%d for now", new.id, why, old.id)
        self._close_soon(new, "replacement failed")
        await self._pause_before_reconnect()

    async def _open(self) -> _Conn:
        """Connect, waiting as the rate limit, the breaker and the backoff require."""
        while True:
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
                await asyncio.sleep(wait)
                continue
            if not self.breaker.allow(now):
                await asyncio.sleep(max(self.breaker.retry_in(now), 0.01))
                continue
            self._connects.try_acquire(now)
            self.connect_attempts += 1
            url = combined_url(self.base_url, self._streams())
            try:
                ws = await connect(
                    url,
                    open_timeout=self._connect_timeout,
                    ping_interval=None,
                    close_timeout=min(2.0, self._connect_timeout),
                    max_size=2**22,
                    proxy=None,
                )
            except asyncio.CancelledError:
                self.breaker.record_failure(self._clock())
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.breaker.record_failure(self._clock())
                delay = self.backoff.next_delay(self._clock())
                log.warning(
                    "ws: connect to %s failed: %s; retry in %.2fs (breaker %s)",
                    self.base_url,
                    _describe(exc),
                    delay,
                    self.breaker.state.value,
                )
                await asyncio.sleep(delay)
                continue
            now = self._clock()
            self.breaker.record_success(now)
            self.backoff.connected(now)
            conn = _Conn(ws, now, self._idle_timeout)
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            assert self._tg is not None
            self._tg.create_task(self._read(conn), name=f"ws-read-{conn.id}")
            log.info(
                "ws: connected #%d to %s (%d %s streams)",
                conn.id,
                self.base_url,
                len(self._pair_map.pairs),
                self.kind,
            )
            return conn

    def _streams(self) -> list[str]:
        return [self._pair_map.stream_for(p, self.kind) for p in self._pair_map.pairs]

    def _close_soon(self, conn: _Conn, reason: str) -> None:
        """Close ``conn`` in the background (a stalled server may never answer the close)."""
        if conn.closed_reason is None:
            conn.closed_reason = f"closed by us ({reason})"
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

    async def _read(self, conn: _Conn) -> None:
        """Read frames until the connection ends; never raises for a closed connection."""
        try:
            async for text in conn.ws:
                now = self._clock()
                conn.idle.seen(now)
                self.last_frame_at = now
                # self.parser, not a local: add_pairs/remove_pairs swap it at run time.
                self._handle(conn, self.parser.parse(text, time.time_ns()), now)
            reason = f"closed by the server ({_close_info(conn.ws)})"
        except ConnectionClosed as exc:
            reason = f"connection lost ({_describe(exc)})"
        except OSError as exc:
            reason = f"socket error ({exc})"
        if conn.closed_reason is None:
            conn.closed_reason = reason
        self._wake.set()

    def _handle(self, conn: _Conn, events: list[Any], now: float) -> None:
        fresh: list[PriceUpdate] = []
        last_key = self._last_key
        for ev in events:
            if type(ev) is PriceEvent:
                u = ev.update
                prev = last_key.get(u.pair)
                if prev is None or u.order_key > prev:
                    last_key[u.pair] = u.order_key
                    fresh.append(u)
                else:
                    self.duplicates += 1
                if not conn.got_data:
                    conn.got_data = True
                    self._wake.set()
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
                self._wake.set()
            elif type(ev) is ControlError:
                log.warning("ws: request %s refused: code %d %s", ev.id, ev.code, ev.msg)
            elif type(ev) is ControlReply:
                log.debug("ws: request %s answered: %r", ev.id, ev.result)
        if fresh and conn.closed_reason is None:
            self._pending.extend(fresh)
            self._ready.set()

    # -- run-time pair changes -----------------------------------------------------------

    async def add_pairs(self, pairs: Iterable[str]) -> list[str]:
        """Start streaming ``pairs`` too (SUBSCRIBE on the live connection); the new ones."""
        new = [p for p in PairMap.build(pairs, self._pair_map.aliases).pairs if p not in self.pairs]
        if not new:
            return []
        self._set_pairs(self.pairs + tuple(new))
        await self._control("SUBSCRIBE", [self._pair_map.stream_for(p, self.kind) for p in new])
        return new

    async def remove_pairs(self, pairs: Iterable[str]) -> list[str]:
        """Stop streaming ``pairs`` (UNSUBSCRIBE on the live connection); those removed."""
        gone = [p for p in PairMap.build(pairs, self._pair_map.aliases).pairs if p in self.pairs]
        if not gone:
            return []
        streams = [self._pair_map.stream_for(p, self.kind) for p in gone]
        self._set_pairs(tuple(p for p in self.pairs if p not in gone))
        for p in gone:
            self._last_key.pop(p, None)
        await self._control("UNSUBSCRIBE", streams)
        return gone

    def _set_pairs(self, pairs: tuple[str, ...]) -> None:
        counts = self.parser.counts
        self._pair_map = PairMap.build(pairs, self._pair_map.aliases)
        self.parser = FrameParser(self._pair_map, self.kind)
        self.parser.counts = counts

    async def _control(self, method: str, streams: list[str]) -> None:
        """Send one control request on every open connection (a new one uses the new URL)."""
        for conn in (self._active, self._candidate):
            if conn is None or conn.closed_reason is not None:
                continue
            await self.send(conn.ws, subscribe_message(method, streams, next(self._request_ids)))
            log.info("ws: %s %s on #%d", method, ",".join(streams), conn.id)

    async def send(self, ws: ClientConnection, text: str) -> None:
        """Send one message, never more than ``exchange.max_messages_per_second``."""
        while True:
            now = self._clock()
            if self._sends.try_acquire(now):
                break
            await asyncio.sleep(max(self._sends.wait_time(now), 0.001))
        self.messages_sent += 1
        try:
            await ws.send(text)
        except ConnectionClosed:
            log.info("ws: message not sent: the connection closed (the next one subscribes)")

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

    def _state_changed(self) -> None:
        if self._on_state is not None:
            self._on_state()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_info(ws: ClientConnection) -> str:
    code = ws.close_code
    reason = ws.close_reason
    return f"code {code}" + (f" {reason}" if reason else "") if code is not None else "no close"
