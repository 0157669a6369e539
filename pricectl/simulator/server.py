"""A local Binance Spot exchange for the public market-data surface (``pricectl simulate``).

One aiohttp server, one port, both protocols, like ``stream.binance.com`` and
``api.binance.com`` folded together:

WebSocket (``shared/reference/binance-protocol.md`` §1-§4)
    ``/ws/<stream>[/<stream>...]`` and bare ``/ws`` (raw frames), ``/stream?streams=a/b``
    and bare ``/stream`` (combined ``{"stream":..,"data":..}`` envelope). The five control
    methods with the documented replies and ``{"error":{"code":..,"msg":..},"id":..}``
    errors (codes 0-3; code 4 ``Too many subscriptions`` above 1024 streams, as observed
    by third parties). A ping every ``ping_interval`` s (20), a cut when a ping has no
    matching pong within ``pong_timeout`` s (60); unsolicited pongs do not count. More
    than ``max_incoming_per_s`` (5) incoming frames - text, ping and pong alike - in any
    1 s window closes the connection. A connection is cut at ``max_connection_age``
    (24 h) after a ``serverShutdown`` event ``shutdown_notice`` seconds before. More than
    ``max_connects`` (300) handshakes per IP in ``connect_window_s`` (5 min) get HTTP 429.

REST (§5)
    ``/api/v3/ping``, ``time``, ``exchangeInfo``, ``ticker/price``, ``ticker/24hr``
    (FULL/MINI), ``ticker/bookTicker``, ``avgPrice``; object for ``symbol``, array for
    ``symbols``/none; ``-1121`` (HTTP 400) for unknown symbols, ``-1100`` for a malformed
    ``symbols``; request weights of §5.1 counted per client IP in a window
    (``weight_window_s``, 60) against ``weight_limit`` (6000), reported in
    ``X-MBX-USED-WEIGHT-1M``; over budget: 429 + ``Retry-After``; ``ban_after`` more
    requests in that state: 418 + ``Retry-After`` for ``ban_s``.

Market data
    Seeded random walk (:mod:`pricectl.simulator.market`): ticker and miniTicker every
    ``ticker_interval`` s (1), trade/aggTrade/bookTicker at ``trade_rate`` per symbol per
    second. Or ``replay``: the frames of a recording (``.jsonl``, one frame per line,
    timing from the sibling ``.recv_ts.txt`` divided by ``speed``) to the connections
    subscribed to each frame's stream (a connection with no subscription gets all).

Faults and introspection (for tests, through :meth:`Simulator.set_fault` or HTTP)
    ``POST /admin/fault`` with ``{"drop":true}`` (abort every WS connection now),
    ``{"stall":true}`` (send nothing, not even pings, keep the sockets),
    ``{"garbage":RATE}`` (bad frames per second to every connection), ``{"refuse":true}``
    (answer WS upgrades with 503), ``{"rest429":true}``, ``{"rest500":true}``,
    ``{"clear":true}``; ``POST /admin/shutdown {"after_s":N}`` (``serverShutdown`` to every
    connection, cut after N s); ``GET /admin/state`` (connections held, connects, messages
    and pongs received, faults, replay progress).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from pricectl.core.pairs import PairMap
from pricectl.simulator.market import Market

__all__ = [
    "GENERATED_KINDS",
    "Faults",
    "Simulator",
    "SimulatorConfig",
    "SimulatorThread",
    "load_recording",
    "symbols_for_pairs",
]

log = logging.getLogger(__name__)

#: Stream kinds the random walk produces (``<symbol>@<kind>``), plus ``!miniTicker@arr``.
GENERATED_KINDS = ("ticker", "miniTicker", "bookTicker", "aggTrade", "trade")

_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_UNKNOWN_VARIANT = (
    "Invalid request: unknown variant `{}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
    "`LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column {}"
)
_ID_STR = re.compile(r"^[A-Za-z0-9]{1,36}$")
_SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
_SYMBOLS_RE = re.compile(r'^\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}"){0,}){0,1}\]$')
_SYMBOLS_RANGE = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
_STATUSES = ("TRADING", "HALT", "BREAK")
#: What ``garbage`` sends: not JSON, truncated JSON, unknown events, missing fields.
_GARBAGE = (
    "not json at all",
    '{"e":"24hrTicker","E":',
    '{"stream":"btcusdt@ticker","data":',
    '{"e":"mysteryEvent","E":1}',
    "[1,2,3]",
    '{"e":"24hrTicker","E":1,"s":"BTCUSDT"}',
    "\x00\x01\x02",
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator, with the real exchange's values as defaults."""

    #: Symbols that always walk (so REST has moving prices with no WS subscriber).
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    seed: int = 0
    #: trade/aggTrade/bookTicker events per symbol per second.
    trade_rate: float = 10.0
    ticker_interval: float = 1.0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    max_connection_age: float = 86_400.0
    #: ``serverShutdown`` goes out this long before the age cut; None: min(60 s, age / 4).
    shutdown_notice: float | None = None
    max_incoming_per_s: int = 5
    max_streams: int = 1024
    #: WebSocket connection attempts per IP per ``connect_window_s`` (300 per 5 min);
    #: above it the handshake gets HTTP 429 (Binance does not document the status).
    max_connects: int = 300
    connect_window_s: float = 300.0
    weight_limit: int = 6000
    weight_window_s: float = 60.0
    #: Over-budget requests answered 429 before the IP is banned (418).
    ban_after: int = 2
    ban_s: float = 120.0
    #: Retry-After (s) sent with a forced ``rest429`` fault.
    fault_retry_after_s: int = 1
    replay: str | None = None
    speed: float = 1.0
    #: A client that lets this many frames queue up is cut (a slow consumer).
    max_queue: int = 100_000

    @property
    def notice_s(self) -> float:
        if self.shutdown_notice is not None:
            return self.shutdown_notice
        return min(60.0, self.max_connection_age / 4)


@dataclass
class Faults:
    """Faults that last until cleared (``drop`` is an action, not a state)."""

    stall: bool = False
    garbage: float = 0.0
    refuse: bool = False
    rest429: bool = False
    rest500: bool = False
    #: Answer every REST request 418 (IP banned) with Retry-After ``ban_s``.
    rest418: bool = False
    #: The exchange's clock reads this many ms from the real one (event times and
    #: REST ``serverTime``): a skewed exchange clock, or a feed delivered late.
    clock_skew_ms: int = 0
    #: The feed's event times lag the exchange's clock by this many ms (frames that
    #: waited somewhere before reaching the client).
    feed_delay_ms: int = 0


@dataclass
class _Stats:
    total_connects: int = 0
    refused: int = 0
    messages_received: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    frames_sent: int = 0
    cut_pong_timeout: int = 0
    cut_rate_limit: int = 0
    cut_age: int = 0
    cut_slow: int = 0
    rest_requests: int = 0


@dataclass(frozen=True)
class _Frame:
    """One recorded frame: its stream (None if raw), the raw and the combined text."""

    at: float
    stream: str | None
    raw: str
    combined: str


def load_recording(path: str | Path) -> list[_Frame]:
    """Frames of a ``.jsonl`` recording, timed by its ``.recv_ts.txt`` when present.

    Without the timing file frames are 10 ms apart. Lines keep their exact text: a
    combined-stream line goes out as is to combined connections, and as its ``data``
    re-serialised compactly (byte-identical for Binance frames) to raw ones.
    """
    p = Path(path)
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    ts_path = p.with_name(p.name.removesuffix(".jsonl") + ".recv_ts.txt")
    times: list[float]
    if ts_path.exists():
        times = [float(x) for x in ts_path.read_text().split()]
        if len(times) != len(lines):
            raise ValueError(f"{ts_path}: {len(times)} times for {len(lines)} frames")
    else:
        times = [i * 0.01 for i in range(len(lines))]
    frames = []
    t0 = times[0] if times else 0.0
    for line, t in zip(lines, times, strict=True):
        obj = json.loads(line)
        if isinstance(obj, dict) and "stream" in obj and "data" in obj:
            stream = obj["stream"]
            frames.append(_Frame(t - t0, stream, _dumps(obj["data"]), line))
        else:
            frames.append(_Frame(t - t0, None, line, line))
    return frames


class _Conn:
    """One client WebSocket connection and its subscriptions."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, combined: bool) -> None:
        self.ws = ws
        self.request = request
        self.combined = combined
        self.streams: list[str] = []
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.connected_at = time.monotonic()
        self.recent: collections.deque[float] = collections.deque()
        self.pings: dict[bytes, float] = {}
        self.shutdown_sent = False
        self.closing = False

    def send(self, text: str) -> None:
        self.queue.put_nowait(text)


class Simulator:
    """The exchange. ``await start()``, read ``ws_url``/``rest_url``, ``await stop()``."""

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        cfg = config or SimulatorConfig()
        self.config = replace(cfg, **overrides) if overrides else cfg
        self.faults = Faults()
        self.stats = _Stats()
        self.market = Market(self.config.seed)
        self._conns: set[_Conn] = set()
        self._index: dict[str, set[_Conn]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self.port = 0
        self._recording = load_recording(self.config.replay) if self.config.replay else None
        self._replay_started = asyncio.Event() if self._recording is not None else None
        self.replay_sent = 0
        self.replay_done = False
        # REST weight accounting per client IP: (window number, used, over-budget count).
        self._weights: dict[str, list[int]] = {}
        self._bans: dict[str, float] = {}
        self._exchange_symbols: list[dict[str, Any]] | None = None
        self._connects: dict[str, collections.deque[float]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """``ws://host:port``: the value for ``BINANCE_WS_URL``."""
        return f"ws://{self._host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """``http://host:port``: the value for ``BINANCE_REST_URL``."""
        return f"http://{self._host}:{self.port}"

    @property
    def connections(self) -> int:
        """Client WebSocket connections held right now."""
        return len(self._conns)

    def app(self) -> web.Application:
        """The aiohttp application (routes only; :meth:`start` runs it)."""
        app = web.Application()
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_get("/ws/{streams:.+}", self._ws_handler)
        app.router.add_get("/stream", self._ws_handler)
        app.router.add_get("/api/v3/ping", self._rest(self._ping))
        app.router.add_get("/api/v3/time", self._rest(self._time))
        app.router.add_get("/api/v3/exchangeInfo", self._rest(self._exchange_info))
        app.router.add_get("/api/v3/ticker/price", self._rest(self._ticker_price))
        app.router.add_get("/api/v3/ticker/24hr", self._rest(self._ticker_24hr))
        app.router.add_get("/api/v3/ticker/bookTicker", self._rest(self._ticker_book))
        app.router.add_get("/api/v3/avgPrice", self._rest(self._avg_price))
        app.router.add_post("/admin/fault", self._admin_fault)
        app.router.add_post("/admin/shutdown", self._admin_shutdown)
        app.router.add_get("/admin/state", self._admin_state)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, then read :attr:`port`)."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host = host
        self.port = self._runner.addresses[0][1]
        self._spawn(self._market_loop())
        self._spawn(self._garbage_loop())
        if self._recording is not None:
            self._spawn(self._replay_loop())

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            await self._close(conn, 1001, "server stopping")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- faults ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        """The exchange's clock in ms (the real one plus ``clock_skew_ms``)."""
        return time.time_ns() // 1_000_000 + self.faults.clock_skew_ms

    def set_fault(
        self,
        *,
        drop: bool = False,
        stall: bool | None = None,
        garbage: float | None = None,
        refuse: bool | None = None,
        rest429: bool | None = None,
        rest500: bool | None = None,
        rest418: bool | None = None,
        clock_skew_ms: int | None = None,
        feed_delay_ms: int | None = None,
        clear: bool = False,
    ) -> None:
        """Change faults; ``None`` leaves one as it is, ``clear`` resets all first."""
        if clear:
            self.faults = Faults()
        if stall is not None:
            self.faults.stall = stall
        if garbage is not None:
            self.faults.garbage = float(garbage)
        if refuse is not None:
            self.faults.refuse = refuse
        if rest429 is not None:
            self.faults.rest429 = rest429
        if rest500 is not None:
            self.faults.rest500 = rest500
        if rest418 is not None:
            self.faults.rest418 = rest418
        if clock_skew_ms is not None:
            self.faults.clock_skew_ms = int(clock_skew_ms)
        if feed_delay_ms is not None:
            self.faults.feed_delay_ms = int(feed_delay_ms)
        if drop:
            for conn in list(self._conns):
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()

    def server_shutdown(self, after_s: float) -> None:
        """Send ``serverShutdown`` to every connection now and cut them after ``after_s``."""
        for conn in list(self._conns):
            self._send_shutdown(conn)
        loop = asyncio.get_running_loop()
        for conn in list(self._conns):
            loop.call_later(after_s, self._cut_later, conn, "server shutdown")

    def _cut_later(self, conn: _Conn, reason: str) -> None:
        if conn in self._conns:
            self._spawn(self._close(conn, 1001, reason))

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` answers."""
        return {
            "connections": len(self._conns),
            **asdict(self.stats),
            "faults": asdict(self.faults),
            "subscriptions": [list(c.streams) for c in self._conns],
            "replay": None
            if self._recording is None
            else {
                "sent": self.replay_sent,
                "total": len(self._recording),
                "done": self.replay_done,
            },
        }

    # -- WebSocket ---------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse:
            self.stats.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        now = time.monotonic()
        attempts = self._connects.setdefault(request.remote or "?", collections.deque())
        while attempts and attempts[0] <= now - self.config.connect_window_s:
            attempts.popleft()
        if len(attempts) >= self.config.max_connects:
            self.stats.refused += 1
            return web.Response(status=429, text="Too many connection attempts")
        attempts.append(now)
        combined = request.path.startswith("/stream")
        if combined:
            names = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            names = [s for s in request.match_info.get("streams", "").split("/") if s]
        if len(names) > self.config.max_streams:
            return web.json_response(
                {"code": -1, "msg": f"too many streams: max {self.config.max_streams}"}, status=400
            )
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Conn(ws, request, combined)
        self._conns.add(conn)
        self.stats.total_connects += 1
        self._subscribe(conn, names)
        if self._replay_started is not None:
            self._replay_started.set()
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

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for name in conn.streams:
            subs = self._index.get(name)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self._index[name]
        conn.streams.clear()

    async def _reader(self, conn: _Conn) -> None:
        ws = conn.ws
        limit = self.config.max_incoming_per_s
        async for msg in ws:
            now = time.monotonic()
            self.stats.messages_received += 1
            recent = conn.recent
            recent.append(now)
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) > limit:
                self.stats.cut_rate_limit += 1
                await self._close(conn, 1008, "Too many messages")
                return
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
                reply = self._control(conn, msg.data)
                if reply is not None and not self.faults.stall:
                    conn.send(_dumps(reply))
            elif msg.type == WSMsgType.BINARY:
                reply = self._control(conn, bytes(msg.data).decode("utf-8", "replace"))
                if reply is not None and not self.faults.stall:
                    conn.send(_dumps(reply))

    async def _sender(self, conn: _Conn) -> None:
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

    async def _keepalive(self, conn: _Conn) -> None:
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

    def _send_shutdown(self, conn: _Conn) -> None:
        conn.shutdown_sent = True
        if self.faults.stall:
            return
        event = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}
        if conn.combined:
            conn.send(_dumps({"stream": "!serverShutdown", "data": event}))
        else:
            conn.send(_dumps(event))

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code, message=reason.encode())

    # -- control messages (§2) -----------------------------------------------------------

    def _control(self, conn: _Conn, text: str) -> dict[str, Any] | None:
        try:
            req = json.loads(text)
        except ValueError as exc:
            line = getattr(exc, "lineno", 1)
            col = getattr(exc, "colno", 1)
            return _error(3, f"Invalid JSON: expected value at line {line} column {col}", None)
        if not isinstance(req, dict):
            return _error(2, "Invalid request: expected a JSON object", None)
        rid = req.get("id")
        if "method" not in req:
            return _error(
                2, f"Invalid request: missing field `method` at line 1 column {len(text)}", rid
            )
        if "id" not in req or not _valid_id(rid):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method = req["method"]
        if method not in _METHODS:
            quoted = _dumps(method)
            col = text.find(quoted) + len(quoted) if quoted in text else len(text)
            return _error(2, _UNKNOWN_VARIANT.format(method, col), rid)
        params = req.get("params", [])
        if not isinstance(params, list):
            return _error(2, "Invalid request: params must be an array", rid)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) and ("@" in p or p.startswith("!")) for p in params):
                return _error(2, "Invalid request: invalid stream", rid)
            if method == "SUBSCRIBE":
                new = [p for p in dict.fromkeys(params) if p not in conn.streams]
                if len(conn.streams) + len(new) > self.config.max_streams:
                    return _error(4, "Too many subscriptions", rid)
                self._subscribe(conn, new)
            else:
                self._unsubscribe(conn, params)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                return _error(2, "Invalid request: too many parameters", rid)
            return {"result": list(conn.streams), "id": rid}
        if method == "SET_PROPERTY":
            if len(params) > 2:
                return _error(2, "Invalid request: too many parameters", rid)
            if not params or not isinstance(params[0], str):
                return _error(2, "Invalid request: property name must be a string", rid)
            if params[0] != "combined":
                return _error(0, "Unknown property", rid)
            if len(params) < 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", rid)
            conn.combined = params[1]
            return {"result": None, "id": rid}
        # GET_PROPERTY
        if len(params) > 1:
            return _error(2, "Invalid request: too many parameters", rid)
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string", rid)
        if params[0] != "combined":
            return _error(0, "Unknown property", rid)
        return {"result": conn.combined, "id": rid}

    def _subscribe(self, conn: _Conn, names: Iterable[str]) -> None:
        for name in names:
            if name in conn.streams:
                continue
            conn.streams.append(name)
            self._index.setdefault(name, set()).add(conn)

    def _unsubscribe(self, conn: _Conn, names: Iterable[str]) -> None:
        for name in names:
            if name in conn.streams:
                conn.streams.remove(name)
                subs = self._index.get(name)
                if subs is not None:
                    subs.discard(conn)
                    if not subs:
                        del self._index[name]

    # -- market data ---------------------------------------------------------------------

    def _publish(self, stream: str, payload: Any) -> None:
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

    def _walking(self) -> list[str]:
        """Symbols the walk advances: the configured ones plus every subscribed one."""
        out = dict.fromkeys(s for s in self.config.symbols if s in self.market)
        for name in self._index:
            sym, _, _kind = name.partition("@")
            upper = sym.upper()
            if sym == sym.lower() and upper in self.market:
                out[upper] = None
        return list(out)

    async def _market_loop(self) -> None:
        if self._recording is not None:
            return
        cfg = self.config
        loop = asyncio.get_running_loop()
        start = loop.time()
        trade_dt = max(0.01, 1.0 / cfg.trade_rate) if cfg.trade_rate > 0 else math.inf
        next_trade = start + trade_dt
        next_ticker = start + cfg.ticker_interval
        trades_done = 0
        while True:
            await asyncio.sleep(max(0.0, min(next_trade, next_ticker) - loop.time()))
            now = loop.time()
            now_ms = self._now_ms() - self.faults.feed_delay_ms
            if now >= next_trade:
                due = int((now - start) * cfg.trade_rate) - trades_done
                trades_done += due
                for symbol in self._walking():
                    low = symbol.lower()
                    for _ in range(due):
                        trade, agg, book = self.market.trade(symbol, now_ms)
                        self._publish(f"{low}@trade", trade)
                        self._publish(f"{low}@aggTrade", agg)
                        self._publish(f"{low}@bookTicker", book)
                next_trade += trade_dt
                if next_trade < now:
                    next_trade = now + trade_dt
            if now >= next_ticker:
                walking = self._walking()
                for symbol in walking:
                    low = symbol.lower()
                    if f"{low}@ticker" in self._index:
                        self._publish(f"{low}@ticker", self.market.ticker(symbol, now_ms))
                    if f"{low}@miniTicker" in self._index:
                        self._publish(f"{low}@miniTicker", self.market.mini_ticker(symbol, now_ms))
                changed = self.market.take_changed()
                if changed and "!miniTicker@arr" in self._index:
                    self._publish(
                        "!miniTicker@arr", [self.market.mini_ticker(s, now_ms) for s in changed]
                    )
                next_ticker += cfg.ticker_interval
                if next_ticker < now:
                    next_ticker = now + cfg.ticker_interval

    async def _garbage_loop(self) -> None:
        i = 0
        while True:
            rate = self.faults.garbage
            if rate <= 0:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(1.0 / rate)
            if self.faults.stall:
                continue
            text = _GARBAGE[i % len(_GARBAGE)]
            i += 1
            for conn in list(self._conns):
                if not conn.closing:
                    conn.send(text)

    async def _replay_loop(self) -> None:
        assert self._recording is not None and self._replay_started is not None
        await self._replay_started.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        speed = self.config.speed
        for frame in self._recording:
            if speed > 0:
                delay = start + frame.at / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not self.faults.stall:
                for conn in list(self._conns):
                    if conn.closing:
                        continue
                    if conn.streams and frame.stream not in conn.streams:
                        continue
                    conn.send(frame.combined if conn.combined else frame.raw)
            self.replay_sent += 1
            if speed <= 0 and self.replay_sent % 100 == 0:
                await asyncio.sleep(0)
        self.replay_done = True

    # -- REST (§5) ---------------------------------------------------------------------

    def _rest(
        self, handler: Callable[[web.Request], tuple[int, Any]]
    ) -> Callable[[web.Request], Any]:
        """Wrap a handler returning ``(weight, body)`` with faults, weights, 429/418."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.stats.rest_requests += 1
            cfg = self.config
            ip = request.remote or "?"
            now = time.monotonic()
            window = int(time.time() // cfg.weight_window_s)
            acct = self._weights.get(ip)
            if acct is None or acct[0] != window:
                acct = [window, 0, 0]
                self._weights[ip] = acct
            banned_until = self._bans.get(ip, 0.0)
            if banned_until > now:
                return self._limit_response(418, acct[1], math.ceil(banned_until - now))
            if self.faults.rest500:
                return _json(
                    {"code": -1001, "msg": "Internal error; unable to process your request."},
                    500,
                    acct[1],
                )
            if self.faults.rest418:
                return self._limit_response(418, acct[1], math.ceil(cfg.ban_s))
            if self.faults.rest429:
                return self._limit_response(429, acct[1], cfg.fault_retry_after_s)
            try:
                weight, body = handler(request)
            except _RestError as err:
                weight, body, status = err.weight, {"code": err.code, "msg": err.msg}, err.status
            else:
                status = 200
            if acct[1] + weight > cfg.weight_limit:
                acct[2] += 1
                if acct[2] > cfg.ban_after:
                    self._bans[ip] = now + cfg.ban_s
                    return self._limit_response(418, acct[1], math.ceil(cfg.ban_s))
                window_end = (window + 1) * cfg.weight_window_s
                return self._limit_response(429, acct[1], math.ceil(window_end - time.time()))
            acct[1] += weight
            return _json(body, status, acct[1])

        return wrapped

    def _limit_response(self, status: int, used: int, retry_after: int) -> web.Response:
        limit = self.config.weight_limit
        if status == 418:
            until = time.time_ns() // 1_000_000 + retry_after * 1000
            msg = (
                f"Way too much request weight used; IP banned until {until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                f"Too much request weight used; current limit is {limit} request weight per "
                "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
            )
        resp = _json({"code": -1003, "msg": msg}, status, used)
        resp.headers["Retry-After"] = str(max(1, retry_after))
        return resp

    def _symbol_params(self, request: web.Request) -> list[str] | None:
        """``symbol`` -> [one] (object response), ``symbols`` -> list, neither -> None."""
        q = request.query
        if "symbol" in q and "symbols" in q:
            raise _RestError(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in q:
            sym = q["symbol"]
            if not _SYMBOL_RE.match(sym):
                raise _RestError(
                    400,
                    -1100,
                    "Illegal characters found in parameter 'symbol'; "
                    "legal range is '^[A-Z0-9-_.]{1,20}$'.",
                )
            if sym not in self.market:
                raise _RestError(400, -1121, "Invalid symbol.")
            return [sym]
        if "symbols" in q:
            text = q["symbols"]
            if not _SYMBOLS_RE.match(text):
                raise _RestError(
                    400,
                    -1100,
                    f"Illegal characters found in parameter 'symbols'; legal range is "
                    f"'{_SYMBOLS_RANGE}'.",
                )
            syms: list[str] = json.loads(text)
            if len(set(syms)) != len(syms):
                raise _RestError(400, -1151, "Symbol is present multiple times in the list.")
            if any(s not in self.market for s in syms):
                raise _RestError(400, -1121, "Invalid symbol.")
            return syms
        return None

    def _status_filter(self, request: web.Request, syms: list[str], single: bool) -> list[str]:
        status = request.query.get("symbolStatus")
        if status is None:
            return syms
        if status not in _STATUSES:
            raise _RestError(400, -1122, "Invalid symbolStatus.")
        kept = [s for s in syms if self.market.specs[s].status == status]
        if single and not kept:
            raise _RestError(
                400, -1220, "The symbol's status does not match the requested symbolStatus."
            )
        return kept

    def _ticker_common(
        self,
        request: web.Request,
        one: Callable[[str], dict[str, Any]],
        weight_1: int,
        weight_n: int,
    ) -> tuple[int, Any]:
        try:
            syms = self._symbol_params(request)
        except _RestError as err:
            err.weight = weight_1 if "symbol" in request.query else weight_n
            raise
        if syms is not None and "symbol" in request.query:
            syms = self._status_filter(request, syms, single=True)
            return weight_1, one(syms[0])
        all_syms = syms if syms is not None else list(self.market.specs)
        return weight_n, [one(s) for s in self._status_filter(request, all_syms, single=False)]

    def _ping(self, request: web.Request) -> tuple[int, Any]:
        return 1, {}

    def _time(self, request: web.Request) -> tuple[int, Any]:
        return 1, {"serverTime": self._now_ms()}

    def _exchange_info(self, request: web.Request) -> tuple[int, Any]:
        try:
            syms = self._symbol_params(request)
        except _RestError as err:
            err.weight = 20
            raise
        if syms is not None and "symbolStatus" in request.query:
            raise _RestError(400, -1128, "Combination of optional parameters invalid.", 20)
        if syms is None:
            if self._exchange_symbols is None:
                self._exchange_symbols = [self.market.exchange_symbol(s) for s in self.market.specs]
            entries = self._exchange_symbols
            if "symbolStatus" in request.query:
                status = request.query["symbolStatus"]
                if status not in _STATUSES:
                    raise _RestError(400, -1122, "Invalid symbolStatus.", 20)
                entries = [e for e in entries if e["status"] == status]
        else:
            entries = [self.market.exchange_symbol(s) for s in syms]
        return 20, {
            "timezone": "UTC",
            "serverTime": time.time_ns() // 1_000_000,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.config.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 300000,
                },
            ],
            "exchangeFilters": [],
            "symbols": entries,
        }

    def _ticker_price(self, request: web.Request) -> tuple[int, Any]:
        return self._ticker_common(request, self.market.rest_price, 2, 4)

    def _ticker_book(self, request: web.Request) -> tuple[int, Any]:
        return self._ticker_common(request, self.market.rest_book, 2, 4)

    def _ticker_24hr(self, request: web.Request) -> tuple[int, Any]:
        kind = request.query.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise _RestError(
                400,
                -1100,
                "Illegal characters found in parameter 'type'; legal range is 'FULL|MINI'.",
                2,
            )
        now_ms = time.time_ns() // 1_000_000
        weight_n = 80
        text = request.query.get("symbols")
        if text is not None and _SYMBOLS_RE.match(text):
            n = len(json.loads(text))
            weight_n = 2 if n <= 20 else 40 if n <= 100 else 80
        mini = kind == "MINI"
        return self._ticker_common(
            request, lambda s: self.market.rest_24hr(s, now_ms, mini=mini), 2, weight_n
        )

    def _avg_price(self, request: web.Request) -> tuple[int, Any]:
        sym = request.query.get("symbol")
        if sym is None:
            raise _RestError(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                2,
            )
        if sym not in self.market:
            raise _RestError(400, -1121, "Invalid symbol.", 2)
        return 2, self.market.rest_avg_price(sym, time.time_ns() // 1_000_000)

    # -- admin -------------------------------------------------------------------------

    async def _admin_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            allowed = {
                "drop", "stall", "garbage", "refuse", "rest429", "rest500", "rest418",
                "clock_skew_ms", "feed_delay_ms", "clear",
            }  # fmt: skip
            unknown = set(body) - allowed
            if unknown:
                raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
            self.set_fault(**body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.state())

    async def _admin_shutdown(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            after_s = float(body.get("after_s", 1.0))
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.server_shutdown(after_s)
        return web.json_response(self.state())

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())


class _RestError(Exception):
    """A Binance REST error body ``{"code":..,"msg":..}`` with its HTTP status."""

    def __init__(self, status: int, code: int, msg: str, weight: int = 1) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.weight = weight


def _json(body: Any, status: int, used: int) -> web.Response:
    resp = web.Response(
        text=_dumps(body), status=status, content_type="application/json", charset="UTF-8"
    )
    resp.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
    resp.headers["X-MBX-USED-WEIGHT"] = str(used)
    return resp


def _error(code: int, msg: str, rid: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": rid if _valid_id(rid) else None}


def _valid_id(rid: Any) -> bool:
    """64-bit signed integer, alphanumeric string of at most 36 characters, or null."""
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and bool(_ID_STR.match(rid))


def symbols_for_pairs(
    pairs: Iterable[str], aliases: dict[str, str] | None = None
) -> tuple[str, ...]:
    """``["BTC/USD"] -> ("BTCUSDT",)`` through the quote aliases (default USD -> USDT)."""
    return PairMap.build(list(pairs), aliases if aliases is not None else {"USD": "USDT"}).symbols


class SimulatorThread:
    """A :class:`Simulator` on its own event loop in a background thread, for sync tests.

    ::

        with SimulatorThread(SimulatorConfig(trade_rate=50)) as sim:
            os.environ["BINANCE_WS_URL"] = sim.ws_url
            sim.set_fault(refuse=True)
            assert sim.state()["connections"] == 0
    """

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pricectl-simulator", daemon=True
        )
        self._sim: Simulator | None = None

    def _call(self, fn: Callable[[Simulator], Any]) -> Any:
        async def run() -> Any:
            assert self._sim is not None
            return fn(self._sim)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def __enter__(self) -> SimulatorThread:
        self._thread.start()

        async def boot() -> Simulator:
            sim = Simulator(self.config)
            await sim.start(self.host, self.port)
            return sim

        self._sim = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=30)
        self.port = self._sim.port
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sim is not None:
            asyncio.run_coroutine_threadsafe(self._sim.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        return int(self._call(lambda sim: sim.connections))

    def state(self) -> dict[str, Any]:
        """:meth:`Simulator.state`, read on the simulator's loop."""
        return dict(self._call(lambda sim: sim.state()))

    def set_fault(self, **kwargs: Any) -> None:
        """:meth:`Simulator.set_fault` on the simulator's loop."""
        self._call(lambda sim: sim.set_fault(**kwargs))

    def server_shutdown(self, after_s: float) -> None:
        """:meth:`Simulator.server_shutdown` on the simulator's loop."""
        self._call(lambda sim: sim.server_shutdown(after_s))
