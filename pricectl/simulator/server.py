"""The local exchange as one server: its knobs, its faults, start/stop and the admin API.

One aiohttp server, one port, both protocols, like ``stream.binance.com`` and
``api.binance.com`` folded together. :class:`Simulator` puts the parts together:

* :mod:`~pricectl.simulator.ws` -- the WebSocket side (connections, pings, limits);
* :mod:`~pricectl.simulator.control` -- the answers to control messages (pure);
* :mod:`~pricectl.simulator.rest` -- the REST side (endpoints, weights, 429/418);
* :mod:`~pricectl.simulator.feed` -- the walk's frames, garbage, replay of recordings;
* :mod:`~pricectl.simulator.market` -- the seeded random walk and its payloads (pure).

Faults and introspection, for tests, through :meth:`Simulator.set_fault` or HTTP:
``POST /admin/fault`` with ``{"drop":true}`` (abort every WS connection now),
``{"stall":true}`` (send nothing, not even pings, keep the sockets), ``{"garbage":RATE}``
(bad frames per second to every connection), ``{"refuse":true}`` (answer WS upgrades
with 503), ``{"rest429":true}``, ``{"rest500":true}``, ``{"clear":true}``;
``POST /admin/shutdown {"after_s":N}`` (``serverShutdown`` to every connection, cut after
N s); ``GET /admin/state`` (connections held, connects, messages and pongs received,
faults, subscriptions, replay progress, and per connection its stream count and the
messages it sent, with the highest of each seen so far: what a test of a client's
sharding and pacing asserts from the exchange's side).

Every symbol of the bundled ``exchangeInfo`` list (~1,700) can be subscribed; only the
symbols someone is subscribed to walk, plus ``SimulatorConfig.symbols``, which always
walk so that REST has moving prices with nobody listening (two by default: they cost
what two subscribed symbols cost, subscribed or not).

Where it behaves like Binance and where it does not, in short (the modules say why):

* fed: every stream type of the Spot WebSocket Streams documentation, for any listed
  symbol (:data:`pricectl.core.binance.STREAM_TYPES`), at its documented speed scaled
  by ``ticker_interval``; ``!miniTicker@arr`` and ``!ticker_<w>@arr`` list the
  symbols that walk, not the whole market;
* refused with ``Invalid request: invalid stream`` (HTTP 400 in a URL): any other name,
  upper-case symbols and the retired ``!ticker@arr``/``!bookTicker`` included. Third
  parties saw Binance answer that error to some bad names and acknowledge others
  silently (USD-M futures); refusing them all makes a client's mistake visible;
* acknowledged and never fed, as on Binance: streams of unlisted symbols (counted in
  ``state()``; ``refuse_unlisted`` refuses them). BREAK symbols are fed like TRADING
  ones, where Binance would have no trades to send;
* limits: 1,024 streams per connection (code 4 past it), a 7,974-character request
  target (414 past it), 5 incoming messages per second (1008 ``Too many requests``
  past it), 300 connections per 5 minutes per IP (429), the REST weights (429, 418);
* not modelled: ``timeUnit=MICROSECOND`` (times stay milliseconds), real rolling
  windows for ``ticker_1h``/``4h`` (they restart when full), order books deeper than
  the walk's top of book.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aiohttp import web

from pricectl.core.pairs import PairMap
from pricectl.simulator.control import MAX_URL_LENGTH
from pricectl.simulator.feed import Feed
from pricectl.simulator.market import Market, load_symbol_specs
from pricectl.simulator.rest import RestEndpoint
from pricectl.simulator.ws import WebSocketEndpoint

__all__ = ["Faults", "Simulator", "SimulatorConfig", "Stats", "symbols_for_pairs"]

_FAULT_NAMES = frozenset(
    {
        "drop",
        "stall",
        "garbage",
        "refuse",
        "rest429",
        "rest500",
        "rest418",
        "clock_skew_ms",
        "feed_delay_ms",
        "clear",
    }
)


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
    #: The longest request target (path and query) a handshake may have; longer: 414.
    max_url_length: int = MAX_URL_LENGTH
    #: Refuse a stream of a symbol the list does not have (Binance accepts it and
    #: sends nothing, which is the default here too).
    refuse_unlisted: bool = False
    #: Drop control frames longer than this unanswered (None: no bound, as documented).
    max_control_bytes: int | None = None
    #: List every symbol as TRADING (the bundled 2021 list has 1,262 of 1,695).
    all_trading: bool = False
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

    def __post_init__(self) -> None:
        # The limits are counted by core's rate limiters, which need at least one event
        # per window and a window of some length.
        for name in ("max_incoming_per_s", "max_connects", "weight_limit", "max_url_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("connect_window_s", "weight_window_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")

    @property
    def notice_s(self) -> float:
        if self.shutdown_notice is not None:
            return self.shutdown_notice
        return min(60.0, self.max_connection_age / 4)


@dataclass
class Faults:
    """Faults that last until cleared (``drop`` is an action, not a state).

    One instance per simulator, shared by its parts, so it is changed in place.
    """

    stall: bool = False
    garbage: float = 0.0
    refuse: bool = False
    rest429: bool = False
    rest500: bool = False
    #: Answer every REST request 418 (IP banned) with Retry-After ``ban_s``.
    rest418: bool = False
    #: The exchange's clock reads this many ms from the real one (event times and
    #: REST ``serverTime``): a skewed exchange clock.
    clock_skew_ms: int = 0
    #: The feed's event times lag the exchange's clock by this many ms (frames that
    #: waited somewhere before reaching the client).
    feed_delay_ms: int = 0

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


@dataclass
class Stats:
    """Counters of what the exchange saw and did, for ``/admin/state`` and tests."""

    total_connects: int = 0
    refused: int = 0
    #: Handshakes refused for their URL: too long (414), too many or invalid streams (400).
    refused_urls: int = 0
    messages_received: int = 0
    #: Text frames among them, control requests refused, and those dropped for their size.
    control_messages: int = 0
    control_errors: int = 0
    control_ignored: int = 0
    #: Streams accepted for a symbol the exchange does not list (never fed).
    unfed_subscribes: int = 0
    #: The most streams one connection held, and incoming frames in any 1 s, so far.
    peak_streams_per_connection: int = 0
    peak_messages_per_s: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    frames_sent: int = 0
    cut_pong_timeout: int = 0
    cut_rate_limit: int = 0
    cut_age: int = 0
    cut_slow: int = 0
    rest_requests: int = 0


class Simulator:
    """The exchange. ``await start()``, read ``ws_url``/``rest_url``, ``await stop()``."""

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        cfg = config or SimulatorConfig()
        self.config = replace(cfg, **overrides) if overrides else cfg
        self.faults = Faults()
        self.stats = Stats()
        specs = load_symbol_specs()
        if self.config.all_trading:
            specs = {sym: replace(spec, status="TRADING") for sym, spec in specs.items()}
        self.market = Market(self.config.seed, specs)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self.port = 0
        # A replay feeds what it recorded, whatever the symbol: every symbol is listed.
        listed = None if self.config.replay else frozenset(self.market.specs)
        self._ws = WebSocketEndpoint(self.config, self.faults, self.stats, self._spawn, listed)
        self._rest = RestEndpoint(self.config, self.faults, self.stats, self.market)
        self._feed = Feed(self.config, self.faults, self.market, self._ws)

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
        return self._ws.count

    @property
    def replay_sent(self) -> int:
        """Recorded frames played so far."""
        return self._feed.replay_sent

    @property
    def replay_done(self) -> bool:
        """Whether the whole recording has been played."""
        return self._feed.replay_done

    def app(self) -> web.Application:
        """The aiohttp application (routes only; :meth:`start` runs it)."""
        app = web.Application()
        self._ws.add_routes(app)
        self._rest.add_routes(app)
        app.router.add_post("/admin/fault", self._admin_fault)
        app.router.add_post("/admin/shutdown", self._admin_shutdown)
        app.router.add_get("/admin/state", self._admin_state)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, then read :attr:`port`)."""
        # aiohttp refuses request lines over 8190 bytes itself: leave the URL limit to us.
        line = max(8190, self.config.max_url_length + 64)
        self._runner = web.AppRunner(
            self.app(),
            handle_signals=False,
            access_log=None,
            max_line_size=line,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host = host
        self.port = self._runner.addresses[0][1]
        for loop in self._feed.loops():
            self._spawn(loop)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for task in list(self._tasks):
            task.cancel()
        await self._ws.close_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of this simulator: :meth:`stop` cancels and awaits it."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- faults ------------------------------------------------------------------------

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
            self.faults.clear()
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
            self._ws.drop()

    def server_shutdown(self, after_s: float) -> None:
        """Send ``serverShutdown`` to every connection now and cut them after ``after_s``."""
        self._ws.server_shutdown(after_s)

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` answers."""
        return {
            "connections": self._ws.count,
            **asdict(self.stats),
            "faults": asdict(self.faults),
            "subscriptions": self._ws.subscriptions(),
            "per_connection": self._ws.connection_states(),
            "walking": len(self._feed.walking()),
            "replay": self._feed.replay_state(),
        }

    # -- admin -------------------------------------------------------------------------

    async def _admin_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            unknown = set(body) - _FAULT_NAMES
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


def symbols_for_pairs(
    pairs: Iterable[str], aliases: dict[str, str] | None = None
) -> tuple[str, ...]:
    """``["BTC/USD"] -> ("BTCUSDT",)`` through the quote aliases (default USD -> USDT)."""
    return PairMap.build(list(pairs), aliases if aliases is not None else {"USD": "USDT"}).symbols
