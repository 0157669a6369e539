"""The local exchange's WebSocket side: connections and the rules Binance applies to them.

:class:`WebSocketEndpoint` owns every client connection: the handshake (``/ws/<streams>``
and bare ``/ws`` for raw frames, ``/stream?streams=a/b`` and bare ``/stream`` for the
``{"stream":..,"data":..}`` envelope), one reader, one sender and one keepalive task per
connection, the stream index the feed publishes through, and the cuts. Control messages
are answered by :mod:`pricectl.simulator.control`; this module only applies the answer.

The rules follow Binance's WebSocket Streams documentation
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):

* a ping every ``ping_interval`` s (20); a cut when a ping has no matching pong within
  ``pong_timeout`` s (60); unsolicited pongs keep nothing alive;
* more than ``max_incoming_per_s`` (5) incoming frames (text, ping and pong alike) in
  any 1 s window closes the connection with 1008 ``Too many requests`` (Binance
  documents the disconnect, not its code; third-party clients report that close on
  Spot, e.g. polyoxide-binance's spot module);
* a connection is cut at ``max_connection_age`` (24 h), after a ``serverShutdown``
  event ``notice_s`` seconds before;
* more than ``max_connects`` (300) handshakes per IP in ``connect_window_s`` (5 min) get
  HTTP 429 (Binance does not document the status);
* at most ``max_streams`` (1024) streams per connection: a SUBSCRIBE past it gets
  code 4, a URL naming more gets HTTP 400; a request target longer than
  ``max_url_length`` gets HTTP 414 (see :mod:`pricectl.simulator.control`);
* with ``max_control_bytes`` set, a control frame longer than that is dropped
  unanswered: a 2024 report (binance-connector-rust issue 27) saw Spot answer nothing
  to SUBSCRIBE frames over 4,096 bytes. Binance documents no bound; by default there
  is none.

Both windows are :class:`pricectl.core.ratelimit.SlidingWindow`, the limiter pricectl's
own client uses to stay under the same limits.

The stream index is what makes ~1,700 symbols free until asked for: the feed walks
only the symbols of :meth:`WebSocketEndpoint.fed_symbols` (plus the configured ones),
and :meth:`WebSocketEndpoint.connection_states` reports, per connection, its streams
and the messages it sent, so a test can check a client's pacing from this side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from pricectl.core.binance import ControlError, Stream, parse_stream
from pricectl.core.ratelimit import SlidingWindow
from pricectl.simulator import control

if TYPE_CHECKING:
    from pricectl.simulator.server import Faults, SimulatorConfig, Stats

__all__ = ["Connection", "Spawn", "WebSocketEndpoint"]

#: Runs a coroutine as a task its owner cancels and awaits on stop.
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def _dumps(obj: Any) -> str:
    """Compact JSON, as Binance sends it."""
    return json.dumps(obj, separators=(",", ":"))


class Connection:
    """One client WebSocket connection: its subscriptions, send queue and keepalive state."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        combined: bool,
        max_incoming_per_s: int,
        number: int = 0,
    ) -> None:
        self.ws = ws
        self.request = request
        self.combined = combined
        #: The connection's number, in handshake order from 1 (for ``/admin/state``).
        self.number = number
        #: Subscribed streams, in subscription order.
        self.streams: dict[str, Stream] = {}
        #: How many of them the exchange never feeds (a symbol it does not list).
        self.unfed = 0
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.connected_at = time.monotonic()
        #: Incoming frames of the last second (the 5 messages per second rule).
        self.incoming = SlidingWindow(max_incoming_per_s, 1.0)
        #: Incoming frames of every kind, the text ones among them, and the most in any 1 s.
        self.messages_received = 0
        self.control_messages = 0
        self.peak_per_s = 0
        #: Pings without a pong yet: payload -> monotonic time sent.
        self.pings: dict[bytes, float] = {}
        self.shutdown_sent = False
        self.closing = False

    def send(self, text: str) -> None:
        self.queue.put_nowait(text)

    def state(self, now: float) -> dict[str, Any]:
        """What ``/admin/state`` says of this connection."""
        return {
            "number": self.number,
            "path": self.request.path,
            "combined": self.combined,
            "streams": len(self.streams),
            "unfed_streams": self.unfed,
            "messages_received": self.messages_received,
            "control_messages": self.control_messages,
            "peak_messages_per_s": self.peak_per_s,
            "age_s": round(now - self.connected_at, 3),
        }


class WebSocketEndpoint:
    """Every client WebSocket of the exchange, and what the feed sends them through."""

    def __init__(
        self,
        config: SimulatorConfig,
        faults: Faults,
        stats: Stats,
        spawn: Spawn,
        listed: Collection[str] | None = None,
    ) -> None:
        self.config = config
        self.faults = faults
        self.stats = stats
        self._spawn = spawn
        #: What a client may ask for; ``listed`` is the symbols the feed walks (None: any).
        self.limits = control.Limits(
            max_streams=config.max_streams,
            max_url_length=config.max_url_length,
            listed=listed,
            refuse_unlisted=config.refuse_unlisted,
        )
        self._conns: dict[Connection, None] = {}
        self._numbers = itertools.count(1)
        self._index: dict[str, set[Connection]] = {}
        #: Fed streams with a subscriber, by symbol, and the market-wide ones.
        self._by_symbol: dict[str, dict[str, Stream]] = {}
        self._wide: dict[str, Stream] = {}
        #: Fed streams with a subscriber, per update period (ms).
        self._periods: Counter[int] = Counter()
        self._connects: dict[str, SlidingWindow] = {}
        #: Set by the first handshake (a replay waits for someone to listen).
        self.connected = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._handler)
        app.router.add_get("/ws/{streams:.+}", self._handler)
        app.router.add_get("/stream", self._handler)

    # -- what the facade and the feed see -----------------------------------------------

    @property
    def count(self) -> int:
        """Client connections held right now."""
        return len(self._conns)

    def subscriptions(self) -> list[list[str]]:
        """Each connection's streams, in subscription order."""
        return [list(c.streams) for c in self._conns]

    def connection_states(self) -> list[dict[str, Any]]:
        """Each connection's number, streams and incoming messages (see :class:`Connection`)."""
        now = time.monotonic()
        return [c.state(now) for c in self._conns]

    def subscribed(self) -> Iterable[str]:
        """Every stream at least one connection is subscribed to."""
        return self._index

    def has_subscribers(self, stream: str) -> bool:
        return stream in self._index

    def fed_symbols(self) -> dict[str, dict[str, Stream]]:
        """Listed symbols with a subscriber, each with its subscribed streams (read only)."""
        return self._by_symbol

    def market_wide(self) -> dict[str, Stream]:
        """Subscribed market-wide streams (``!miniTicker@arr``, ``!ticker_<w>@arr``)."""
        return self._wide

    def wants_period(self, period_ms: int) -> bool:
        """Whether a fed stream with that update period has a subscriber."""
        return self._periods[period_ms] > 0

    def publish(self, stream: str, payload: Any) -> None:
        """Send ``payload`` to the subscribers of ``stream`` (raw or in the envelope).

        A subscriber with more than ``max_queue`` frames waiting is cut as a slow consumer.
        """
        subs = self._index.get(stream)
        if not subs or self.faults.stall:
            return
        raw = _dumps(payload)
        combined: str | None = None
        max_queue = self.config.max_queue
        for conn in list(subs):
            if conn.closing:
                continue
            if conn.queue.qsize() > max_queue:
                self.stats.cut_slow += 1
                self._spawn(self._close(conn, 1008, "slow consumer"))
                continue
            if conn.combined:
                if combined is None:
                    combined = f'{{"stream":"{stream}","data":{raw}}}'
                conn.send(combined)
            else:
                conn.send(raw)

    def send_recorded(self, stream: str | None, raw: str, combined: str) -> None:
        """A recorded frame to every connection subscribed to its stream, or with none."""
        for conn in list(self._conns):
            if conn.closing:
                continue
            if conn.streams and stream not in conn.streams:
                continue
            conn.send(combined if conn.combined else raw)

    def broadcast(self, text: str) -> None:
        """``text`` as is to every open connection, whatever its subscriptions."""
        for conn in list(self._conns):
            if not conn.closing:
                conn.send(text)

    def drop(self) -> None:
        """Abort every connection at the TCP level, with no close frame."""
        for conn in list(self._conns):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    def server_shutdown(self, after_s: float) -> None:
        """``serverShutdown`` to every connection now, and cut them after ``after_s``."""
        for conn in list(self._conns):
            self._send_shutdown(conn)
        loop = asyncio.get_running_loop()
        for conn in list(self._conns):
            loop.call_later(after_s, self._cut_later, conn, "server shutdown")

    async def close_all(self) -> None:
        """Close every connection (going away, 1001)."""
        for conn in list(self._conns):
            await self._close(conn, 1001, "server stopping")

    # -- one connection -----------------------------------------------------------------

    def _allow_connect(self, ip: str) -> bool:
        window = self._connects.get(ip)
        if window is None:
            window = self._connects[ip] = SlidingWindow(
                self.config.max_connects, self.config.connect_window_s
            )
        return window.try_acquire(time.monotonic())

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse:
            self.stats.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        if not self._allow_connect(request.remote or "?"):
            self.stats.refused += 1
            return web.Response(status=429, text="Too many connection attempts")
        combined = control.is_combined_path(request.path)
        if combined:
            names = control.url_streams(request.query.get("streams", ""))
        else:
            names = control.url_streams(request.match_info.get("streams", ""))
        refusal = control.refuse_handshake(request.raw_path, names, self.limits)
        if refusal is not None:
            self.stats.refused_urls += 1
            return web.json_response(refusal.body, status=refusal.status)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = Connection(
            ws, request, combined, self.config.max_incoming_per_s, next(self._numbers)
        )
        self._conns[conn] = None
        self.stats.total_connects += 1
        self._subscribe(conn, names)
        self.connected.set()
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._sender(conn))
                keeper = tg.create_task(self._keepalive(conn))
                try:
                    await self._reader(conn)
                finally:
                    sender.cancel()
                    keeper.cancel()
        finally:
            self._forget(conn)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _reader(self, conn: Connection) -> None:
        ws = conn.ws
        async for msg in ws:
            self.stats.messages_received += 1
            conn.messages_received += 1
            now = time.monotonic()
            if not conn.incoming.try_acquire(now):
                self._peak(conn, conn.incoming.limit + 1)
                self.stats.cut_rate_limit += 1
                await self._close(conn, 1008, "Too many requests")
                return
            self._peak(conn, conn.incoming.count(now))
            if msg.type == WSMsgType.PING:
                if not self.faults.stall:
                    with contextlib.suppress(ConnectionError):
                        await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                self.stats.pongs_received += 1
                sent = conn.pings.pop(bytes(msg.data), None)
                if sent is not None:
                    # An answer clears that ping and any older one still outstanding.
                    for key, at in list(conn.pings.items()):
                        if at <= sent:
                            del conn.pings[key]
            elif msg.type == WSMsgType.TEXT:
                self._control(conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                self._control(conn, bytes(msg.data).decode("utf-8", "replace"))

    def _peak(self, conn: Connection, count: int) -> None:
        if count > conn.peak_per_s:
            conn.peak_per_s = count
            self.stats.peak_messages_per_s = max(self.stats.peak_messages_per_s, count)

    def _control(self, conn: Connection, text: str) -> None:
        conn.control_messages += 1
        self.stats.control_messages += 1
        limit = self.config.max_control_bytes
        if limit is not None and len(text.encode()) > limit:
            self.stats.control_ignored += 1
            return
        answer = control.answer(text, conn.streams, conn.combined, self.limits)
        if isinstance(answer.reply, ControlError):
            self.stats.control_errors += 1
        self._subscribe(conn, answer.subscribe)
        self._unsubscribe(conn, answer.unsubscribe)
        if answer.combined is not None:
            conn.combined = answer.combined
        if not self.faults.stall:
            conn.send(control.encode(answer.reply))

    async def _sender(self, conn: Connection) -> None:
        ws = conn.ws
        queue = conn.queue
        while True:
            text = await queue.get()
            if text is None:
                return
            if ws.closed:
                return
            try:
                await ws.send_str(text)
            except ConnectionError:  # the peer went away; the reader sees the close
                return
            self.stats.frames_sent += 1

    async def _keepalive(self, conn: Connection) -> None:
        """Pings, the pong deadline, the connection age cut and its ``serverShutdown``."""
        cfg = self.config
        step = max(0.01, min(1.0, cfg.ping_interval / 4, cfg.pong_timeout / 4, cfg.notice_s / 4))
        next_ping = conn.connected_at + cfg.ping_interval
        shutdown_at = conn.connected_at + cfg.max_connection_age - cfg.notice_s
        cut_at = conn.connected_at + cfg.max_connection_age
        while not conn.ws.closed:
            await asyncio.sleep(step)
            now = time.monotonic()
            if self.faults.stall:
                next_ping = max(next_ping, now + cfg.ping_interval)
                conn.pings.clear()
                continue
            if now >= cut_at:
                self.stats.cut_age += 1
                await self._close(conn, 1001, "connection age limit")
                return
            if now >= shutdown_at and not conn.shutdown_sent:
                self._send_shutdown(conn)
            if conn.pings and min(conn.pings.values()) + cfg.pong_timeout <= now:
                self.stats.cut_pong_timeout += 1
                await self._close(conn, 1008, "pong timeout")
                return
            if now >= next_ping:
                payload = str(time.time_ns() // 1_000_000).encode()
                conn.pings[payload] = now
                self.stats.pings_sent += 1
                try:
                    await conn.ws.ping(payload)
                except ConnectionError:
                    return
                next_ping = now + cfg.ping_interval

    def _send_shutdown(self, conn: Connection) -> None:
        conn.shutdown_sent = True
        if self.faults.stall:
            return
        event = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}
        if conn.combined:
            conn.send(_dumps({"stream": "!serverShutdown", "data": event}))
        else:
            conn.send(_dumps(event))

    def _cut_later(self, conn: Connection, reason: str) -> None:
        if conn in self._conns:
            self._spawn(self._close(conn, 1001, reason))

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code, message=reason.encode())

    # -- the stream index ---------------------------------------------------------------

    def _subscribe(self, conn: Connection, names: Iterable[str]) -> None:
        """Add ``names`` (checked by :mod:`~pricectl.simulator.control`) to ``conn``."""
        for name in names:
            if name in conn.streams:
                continue
            stream = parse_stream(name)
            fed = control.is_fed(stream, self.limits)
            conn.streams[name] = stream
            if not fed:
                conn.unfed += 1
                self.stats.unfed_subscribes += 1
            subs = self._index.get(name)
            if subs is None:
                subs = self._index[name] = set()
                if fed:
                    self._add_fed(stream)
            subs.add(conn)
        if len(conn.streams) > self.stats.peak_streams_per_connection:
            self.stats.peak_streams_per_connection = len(conn.streams)

    def _unsubscribe(self, conn: Connection, names: Iterable[str]) -> None:
        for name in names:
            stream = conn.streams.pop(name, None)
            if stream is not None:
                self._discard(conn, stream)

    def _forget(self, conn: Connection) -> None:
        self._conns.pop(conn, None)
        for stream in conn.streams.values():
            self._discard(conn, stream)
        conn.streams.clear()

    def _discard(self, conn: Connection, stream: Stream) -> None:
        fed = control.is_fed(stream, self.limits)
        if not fed:
            conn.unfed -= 1
        subs = self._index.get(stream.name)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._index[stream.name]
                if fed:
                    self._drop_fed(stream)

    def _add_fed(self, stream: Stream) -> None:
        self._periods[stream.period_ms] += 1
        if stream.symbol is None:
            self._wide[stream.name] = stream
        else:
            self._by_symbol.setdefault(stream.symbol, {})[stream.name] = stream

    def _drop_fed(self, stream: Stream) -> None:
        self._periods[stream.period_ms] -= 1
        if stream.symbol is None:
            self._wide.pop(stream.name, None)
            return
        streams = self._by_symbol.get(stream.symbol)
        if streams is not None:
            streams.pop(stream.name, None)
            if not streams:
                del self._by_symbol[stream.symbol]
