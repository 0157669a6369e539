"""The simulated market: a seeded random walk per symbol and the Binance payloads it produces.

No I/O and no clock: the simulator's feed (:mod:`pricectl.simulator.feed`) calls
:meth:`Market.step` at its trade rate for the symbols someone listens to, and the
payload methods (:meth:`Market.ticker`, :meth:`Market.kline`, ...) at each stream's
update speed, passing ``now_ms``; its REST side reads the same walk. A symbol's state
is made on first use, so the ~1,700 listed symbols cost nothing until asked for.
Everything here is deterministic for a given seed (each symbol has its own
``random.Random`` seeded with ``"<seed>:<SYMBOL>"``, so the order in which symbols are
first used does not matter; the payloads added for the other stream kinds draw nothing
from it, so subscribing to them does not change the walk).

What the statistics are: the 24 h figures (``@ticker``, ``@miniTicker``,
``@ticker_1d``, REST) start from seeded values and follow the walk; klines and the
1 h and 4 h windows are counted from the symbol's first trade after they are first
asked for. Binance's 1 h and 4 h windows roll minute by minute; here they restart
when they are full (``O`` says when the figures start), which keeps them O(1) per
trade. Book depth is the walk's best bid and ask, then one tick per level with
quantities derived from the book's update id.

Prices are integers in units of ``10**-decimals`` where ``decimals`` is the number of
decimals of the symbol's ``tickSize`` in ``pricectl/data/binance-spot-symbols.json``
(8 for ``"0.01000000"``, like the real exchange, which pads prices to the tick size's
width). They move in whole ticks and are formatted as strings, never through floats.

Payload shapes follow Binance's WebSocket Streams documentation
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams) field for
field and in the documented key order; REST shapes follow its REST API documentation,
"Market Data endpoints" (https://developers.binance.com/docs/binance-spot-api-docs/rest-api).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pricectl.core.pairs import bundled_symbols

__all__ = [
    "BLOCK_TRADE_EVERY",
    "START_PRICES_USD",
    "Market",
    "SymbolSpec",
    "SymbolState",
    "fmt_units",
    "kline_bounds",
    "load_symbol_specs",
]

#: Realistic starting prices in US dollars for common assets (early-2024 levels). Other
#: prices are derived as base/quote; unknown assets are worth 1 USD.
START_PRICES_USD: dict[str, float] = {
    "BTC": 43000.0,
    "ETH": 2300.0,
    "BNB": 310.0,
    "SOL": 100.0,
    "XRP": 0.62,
    "ADA": 0.55,
    "DOGE": 0.085,
    "DOT": 7.2,
    "LTC": 72.0,
    "LINK": 15.0,
    "MATIC": 0.85,
    "AVAX": 36.0,
    "TRX": 0.105,
    "SHIB": 0.00001,
    "UNI": 6.5,
    "ATOM": 9.5,
    "XLM": 0.12,
    "ETC": 20.0,
    "BCH": 230.0,
    "FIL": 5.5,
    "NEAR": 3.4,
    "ALGO": 0.18,
    "EOS": 0.75,
    "NEO": 12.0,
    "ZIL": 0.022,
    "MANA": 0.45,
    "AXS": 7.5,
    "USDT": 1.0,
    "BUSD": 1.0,
    "USDC": 1.0,
    "TUSD": 1.0,
    "USDP": 1.0,
    "PAX": 1.0,
    "DAI": 1.0,
    "USDS": 1.0,
    "EUR": 1.08,
    "GBP": 1.27,
    "AUD": 0.66,
    "BRL": 0.2,
    "TRY": 0.033,
    "RUB": 0.011,
    "UAH": 0.027,
    "NGN": 0.0011,
    "ZAR": 0.053,
    "BIDR": 0.000064,
    "IDRT": 0.000064,
    "BKRW": 0.00075,
}

_DAY_MS = 86_400_000
_MINUTE_MS = 60_000
#: Milliseconds per unit of a kline interval or ticker window (``M`` is a calendar month).
_UNIT_MS = {"s": 1000, "m": _MINUTE_MS, "h": 3_600_000, "d": _DAY_MS, "w": 7 * _DAY_MS}
#: Weekly klines start on Mondays; 1970-01-05, four days after the epoch, was one.
_MONDAY_MS = 4 * _DAY_MS
#: One ``@blockTrade`` event per this many trades of a symbol (block trades are rare).
BLOCK_TRADE_EVERY = 50


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def _units(text: str, decimals: int) -> int:
    """``"0.01000000"`` at 8 decimals -> 1000000 (exact, no float)."""
    whole, _, frac = text.partition(".")
    scale: int = 10**decimals
    return int(whole or "0") * scale + int((frac + "0" * decimals)[:decimals] or "0")


def fmt_units(value: int, decimals: int) -> str:
    """An integer count of ``10**-decimals`` as a decimal string: ``(4300000, 2) -> "43000.00"``."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    if decimals == 0:
        return f"{sign}{value}"
    scale = 10**decimals
    return f"{sign}{value // scale}.{value % scale:0{decimals}d}"


def _pct(last: int, open_: int) -> str:
    """``(last - open) / open * 100`` with 3 decimals, rounded half away from zero."""
    num = (last - open_) * 100_000
    q, r = divmod(abs(num), open_)
    if 2 * r >= open_:
        q += 1
    return fmt_units(-q if num < 0 else q, 3)


def _below(bits: Callable[[int], int], n: int) -> int:
    """A uniform integer in ``[0, n)`` drawn as ``random.Random.randint`` draws it
    (``getrandbits`` of ``n``'s bit length until one is below ``n``), so the walk keeps
    its sequence, without randint's layers of checks: the walk is the hot loop."""
    k = n.bit_length()
    r = bits(k)
    while r >= n:
        r = bits(k)
    return r


def _add(span: _Bar | _Window, price: int, qty: int, trade_id: int) -> None:
    """Count one trade in a kline or a window."""
    span.h = max(span.h, price)
    span.low = min(span.low, price)
    span.c = price
    span.v += qty
    span.q += qty * price
    if span.first < 0:
        span.first = trade_id
    span.last = trade_id


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One spot symbol of the bundled snapshot (a real 2021 ``exchangeInfo``)."""

    symbol: str
    base: str
    quote: str
    status: str
    tick_size: str
    step_size: str

    @property
    def price_decimals(self) -> int:
        return _decimals(self.tick_size)

    @property
    def qty_decimals(self) -> int:
        return _decimals(self.step_size)


def load_symbol_specs() -> dict[str, SymbolSpec]:
    """Every symbol of ``pricectl/data/binance-spot-symbols.json``, by exchange symbol."""
    return {
        s["symbol"]: SymbolSpec(
            s["symbol"], s["baseAsset"], s["quoteAsset"], s["status"], s["tickSize"], s["stepSize"]
        )
        for s in bundled_symbols()
    }


def _offset_ms(utc_offset: str | None) -> int:
    """``"+08:00"`` -> 28 800 000; ``None`` -> 0."""
    if not utc_offset:
        return 0
    sign = -1 if utc_offset[0] == "-" else 1
    hours, _, minutes = utc_offset[1:].partition(":")
    return sign * (int(hours) * 3_600_000 + int(minutes or 0) * _MINUTE_MS)


def kline_bounds(interval: str, utc_offset: str | None, ms: int) -> tuple[int, int]:
    """Open and close time (ms, inclusive) of the ``interval`` kline containing ``ms``.

    Intervals start on whole multiples of their length since the epoch in the kline's
    timezone (weeks on Mondays, months on the 1st): ``("1m", None, 61_500) -> (60_000,
    119_999)``. ``E``, ``t`` and ``T`` stay UTC timestamps, as documented.
    """
    offset = _offset_ms(utc_offset)
    local = ms + offset
    if interval == "1M":
        day = datetime.fromtimestamp(local // 1000, UTC)
        start = datetime(day.year, day.month, 1, tzinfo=UTC)
        after = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
        first, end = int(start.timestamp()) * 1000, int(after.timestamp()) * 1000
    else:
        size = int(interval[:-1]) * _UNIT_MS[interval[-1]]
        anchor = _MONDAY_MS if interval.endswith("w") else 0
        first = local - (local - anchor) % size
        end = first + size
    return first - offset, end - offset - 1


@dataclass(slots=True)
class _Bar:
    """One kline in the making: prices in ``10**-pd``, quantities in ``10**-qd``."""

    open_ms: int
    close_ms: int
    o: int
    h: int
    low: int
    c: int
    v: int = 0
    q: int = 0
    taker_v: int = 0
    taker_q: int = 0
    first: int = -1
    last: int = -1

    @classmethod
    def starting(cls, bounds: tuple[int, int], price: int) -> _Bar:
        return cls(bounds[0], bounds[1], price, price, price, price)


@dataclass(slots=True)
class _KlineTrack:
    """The current kline of one interval and the last closed one not yet sent."""

    interval: str
    utc_offset: str | None
    bar: _Bar
    closed: _Bar | None = None

    def roll(self, ms: int) -> None:
        """Close the bar if ``ms`` is past it and start the one containing ``ms``."""
        if ms > self.bar.close_ms:
            self.closed = self.bar
            self.bar = _Bar.starting(kline_bounds(self.interval, self.utc_offset, ms), self.bar.c)


@dataclass(slots=True)
class _Window:
    """A 1 h or 4 h ticker window: figures since ``open_ms``, restarted when full."""

    size_ms: int
    open_ms: int
    o: int
    h: int
    low: int
    c: int
    v: int = 0
    q: int = 0
    first: int = -1
    last: int = -1

    def roll(self, ms: int) -> None:
        if ms - self.open_ms >= self.size_ms:
            price = self.c
            self.open_ms = ms - ms % _MINUTE_MS
            self.o = self.h = self.low = price
            self.v = self.q = 0
            self.first = self.last = -1


@dataclass(slots=True)
class SymbolState:
    """The running state of one symbol: last trade, book top, 24 h statistics, ids.

    All prices in units of ``10**-pd`` (``pd`` = price decimals), quantities in units of
    ``10**-qd``; ``quote_vol`` in units of ``10**-(pd+qd)``.
    """

    spec: SymbolSpec
    rng: random.Random
    pd: int
    qd: int
    tick: int
    step: int
    last: int
    last_qty: int
    open: int
    high: int
    low: int
    bid: int
    bid_qty: int
    ask: int
    ask_qty: int
    volume: int
    quote_vol: int
    first_id: int
    trade_id: int
    agg_id: int
    book_id: int
    changed: bool = field(default=True)
    #: Time (ms) and side of the last trade (``T`` and ``m`` of its events).
    trade_time: int = 0
    buyer_maker: bool = False
    block_id: int = 0
    #: Klines by (interval, UTC offset), 1 h/4 h windows by size, last diff-depth
    #: update id sent per update speed: made when first asked for.
    klines: dict[tuple[str, str | None], _KlineTrack] = field(default_factory=dict)
    windows: dict[str, _Window] = field(default_factory=dict)
    depth_sent: dict[int, int] = field(default_factory=dict)

    def p(self, units: int) -> str:
        return fmt_units(units, self.pd)

    def q(self, units: int) -> str:
        return fmt_units(units, self.qd)


class Market:
    """Seeded random-walk prices for any symbol of the bundled list, created on first use."""

    #: Standard deviation of one trade's move, as a fraction of the price (0.005 %).
    STEP_FRACTION = 0.00005

    def __init__(self, seed: int = 0, specs: dict[str, SymbolSpec] | None = None) -> None:
        self.seed = seed
        self.specs = specs if specs is not None else load_symbol_specs()
        self.states: dict[str, SymbolState] = {}
        #: Symbols changed since the last :meth:`take_changed`, in order of change.
        self._changed: dict[str, None] = {}

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.specs

    def start_price(self, spec: SymbolSpec) -> float:
        """Base price in quote units from :data:`START_PRICES_USD` (unknown assets: 1 USD)."""
        base = START_PRICES_USD.get(spec.base, 1.0)
        quote = START_PRICES_USD.get(spec.quote, 1.0)
        return base / quote

    def state(self, symbol: str) -> SymbolState:
        """The state of ``symbol`` (KeyError if it is not a known symbol)."""
        st = self.states.get(symbol)
        if st is None:
            st = self._new_state(self.specs[symbol])
            self.states[symbol] = st
            self._changed[symbol] = None
        return st

    def _new_state(self, spec: SymbolSpec) -> SymbolState:
        rng = random.Random(f"{self.seed}:{spec.symbol}")
        pd, qd = spec.price_decimals, spec.qty_decimals
        tick = max(1, _units(spec.tick_size, pd))
        step = max(1, _units(spec.step_size, qd))
        # Whole ticks, at least 100 so a coarse tick size still leaves room to move.
        start_ticks = max(
            100, round(self.start_price(spec) * rng.uniform(0.98, 1.02) * 10**pd / tick)
        )
        last = start_ticks * tick
        open_ = max(tick, round(start_ticks * rng.uniform(0.97, 1.03)) * tick)
        spread = tick * rng.randint(1, 3)
        # Base volume worth roughly 1-50 million USD over 24 h.
        usd = START_PRICES_USD.get(spec.base, 1.0)
        vol_units = int(rng.uniform(1e6, 5e7) / usd * 10**qd) // step * step
        first_id = rng.randint(100_000_000, 900_000_000)
        n = rng.randint(100_000, 900_000)
        return SymbolState(
            spec=spec,
            rng=rng,
            pd=pd,
            qd=qd,
            tick=tick,
            step=step,
            last=last,
            last_qty=step * rng.randint(1, 1000),
            open=open_,
            high=max(last, open_) + tick * rng.randint(1, 200),
            low=max(tick, min(last, open_) - tick * rng.randint(1, 200)),
            bid=last,
            bid_qty=step * rng.randint(1, 5000),
            ask=last + spread,
            ask_qty=step * rng.randint(1, 5000),
            volume=vol_units,
            quote_vol=vol_units * last,
            first_id=first_id,
            trade_id=first_id + n - 1,
            agg_id=first_id * 6 // 10,
            book_id=rng.randint(1_000_000_000, 9_000_000_000),
            block_id=first_id // 1000,
        )

    # -- the walk ----------------------------------------------------------------------

    def step(self, symbol: str, now_ms: int) -> SymbolState:
        """One trade: advance the walk (and the klines and windows asked for) at ``now_ms``."""
        st = self.state(symbol)
        rng = st.rng
        bits = rng.getrandbits
        tick, last = st.tick, st.last
        sigma = max(1.0, last / tick * self.STEP_FRACTION)
        last = max(tick, last + round(rng.gauss(0.0, sigma)) * tick)
        qty = st.step * (1 + _below(bits, 1000))
        st.last, st.last_qty = last, qty
        if last > st.high:
            st.high = last
        elif last < st.low:
            st.low = last
        st.volume += qty
        st.quote_vol += qty * last
        st.trade_id += 1
        st.agg_id += 1
        st.book_id += 1 + _below(bits, 5)
        buyer_maker = rng.random() < 0.5
        if buyer_maker:  # the taker sold into the bid: the trade is at the bid
            st.bid, st.ask = last, last + tick * (1 + _below(bits, 3))
        else:
            st.bid, st.ask = max(tick, last - tick * (1 + _below(bits, 3))), last
        st.bid_qty = st.step * (1 + _below(bits, 5000))
        st.ask_qty = st.step * (1 + _below(bits, 5000))
        st.changed = True
        self._changed[symbol] = None
        st.buyer_maker = buyer_maker
        st.trade_time = now_ms - _below(bits, 3)
        if st.klines or st.windows:
            self._count(st)
        return st

    def _count(self, st: SymbolState) -> None:
        """Add the last trade to the symbol's klines and windows."""
        price, qty, at = st.last, st.last_qty, st.trade_time
        for track in st.klines.values():
            track.roll(at)
            _add(track.bar, price, qty, st.trade_id)
            if not st.buyer_maker:  # the taker bought
                track.bar.taker_v += qty
                track.bar.taker_q += qty * price
        for window in st.windows.values():
            window.roll(at)
            _add(window, price, qty, st.trade_id)

    def trade(
        self, symbol: str, now_ms: int
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """One trade: advance the walk and return ``(trade, aggTrade, bookTicker)`` payloads."""
        self.step(symbol, now_ms)
        return (
            self.trade_event(symbol, now_ms),
            self.agg_event(symbol, now_ms),
            self.book_ticker(symbol),
        )

    def trade_event(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The 9-field ``trade`` event of the last trade ("Trade Streams")."""
        st = self.state(symbol)
        return {
            "e": "trade",
            "E": now_ms,
            "s": symbol,
            "t": st.trade_id,
            "p": st.p(st.last),
            "q": st.q(st.last_qty),
            "T": st.trade_time,
            "m": st.buyer_maker,
            "M": True,
        }

    def agg_event(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The 11-field ``aggTrade`` event of the last trade ("Aggregate Trade Streams")."""
        st = self.state(symbol)
        return {
            "e": "aggTrade",
            "E": now_ms,
            "s": symbol,
            "a": st.agg_id,
            "p": st.p(st.last),
            "q": st.q(st.last_qty),
            "f": st.trade_id,
            "l": st.trade_id,
            "T": st.trade_time,
            "m": st.buyer_maker,
            "M": True,
        }

    def block_trade(self, symbol: str, now_ms: int) -> dict[str, Any] | None:
        """A ``blockTrade`` event ("Block Trade Streams") on every
        :data:`BLOCK_TRADE_EVERY`-th trade, at the last price; None on the others."""
        st = self.state(symbol)
        if st.trade_id % BLOCK_TRADE_EVERY:
            return None
        st.block_id += 1
        return {
            "e": "blockTrade",
            "E": now_ms,
            "s": symbol,
            "t": st.block_id,
            "p": st.p(st.last),
            "q": st.q(st.step * (10_000 + st.trade_id % 90_000)),
            "T": st.trade_time,
            "m": st.buyer_maker,
        }

    def book_ticker(self, symbol: str) -> dict[str, Any]:
        """The 6-field spot bookTicker: no ``e``, no ``E``.

        ("Individual Symbol Book Ticker Streams" in the WebSocket Streams documentation.)
        """
        st = self.state(symbol)
        return {
            "u": st.book_id,
            "s": symbol,
            "b": st.p(st.bid),
            "B": st.q(st.bid_qty),
            "a": st.p(st.ask),
            "A": st.q(st.ask_qty),
        }

    def _pct(self, st: SymbolState) -> str:
        return _pct(st.last, st.open)

    def _weighted(self, st: SymbolState) -> str:
        return st.p(st.quote_vol // st.volume if st.volume else st.last)

    def ticker(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The 23-field ``24hrTicker``, keys in the documented order.

        ("Individual Symbol Ticker Streams" in the WebSocket Streams documentation.)
        """
        st = self.state(symbol)
        close_time = now_ms - st.rng.randint(1, 5)
        return {
            "e": "24hrTicker",
            "E": now_ms,
            "s": symbol,
            "p": st.p(st.last - st.open),
            "P": self._pct(st),
            "w": self._weighted(st),
            "x": st.p(st.open),
            "c": st.p(st.last),
            "Q": st.q(st.last_qty),
            "b": st.p(st.bid),
            "B": st.q(st.bid_qty),
            "a": st.p(st.ask),
            "A": st.q(st.ask_qty),
            "o": st.p(st.open),
            "h": st.p(st.high),
            "l": st.p(st.low),
            "v": st.q(st.volume),
            "q": fmt_units(st.quote_vol // 10**st.qd, st.pd),
            "O": close_time - _DAY_MS,
            "C": close_time,
            "F": st.first_id,
            "L": st.trade_id,
            "n": st.trade_id - st.first_id + 1,
        }

    def mini_ticker(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The 9-field ``24hrMiniTicker`` ("Individual Symbol Mini Ticker Stream")."""
        st = self.state(symbol)
        return {
            "e": "24hrMiniTicker",
            "E": now_ms,
            "s": symbol,
            "c": st.p(st.last),
            "o": st.p(st.open),
            "h": st.p(st.high),
            "l": st.p(st.low),
            "v": st.q(st.volume),
            "q": fmt_units(st.quote_vol // 10**st.qd, st.pd),
        }

    def rolling_ticker(self, symbol: str, window: str, now_ms: int) -> dict[str, Any]:
        """The 17-field ``<w>Ticker`` of ``<symbol>@ticker_<w>``, keys in the documented order.

        ("Individual Symbol Rolling Window Statistics Streams".) ``1d`` is the 24 h
        statistics of ``@ticker``; ``1h`` and ``4h`` are counted from the first call.
        """
        st = self.state(symbol)
        if window == "1d":
            o, h, lo, c, v, q = st.open, st.high, st.low, st.last, st.volume, st.quote_vol
            first, last = st.first_id, st.trade_id
            open_ms = now_ms - _DAY_MS
            open_ms -= open_ms % _MINUTE_MS
        else:
            span = st.windows.get(window)
            if span is None:
                size = int(window[:-1]) * _UNIT_MS[window[-1]]
                span = _Window(
                    size, now_ms - now_ms % _MINUTE_MS, st.last, st.last, st.last, st.last
                )
                st.windows[window] = span
            span.roll(now_ms)
            o, h, lo, c, v, q = span.o, span.h, span.low, span.c, span.v, span.q
            first, last, open_ms = span.first, span.last, span.open_ms
        return {
            "e": f"{window}Ticker",
            "E": now_ms,
            "s": symbol,
            "p": st.p(c - o),
            "P": _pct(c, o),
            "o": st.p(o),
            "h": st.p(h),
            "l": st.p(lo),
            "c": st.p(c),
            "w": st.p(q // v if v else c),
            "v": st.q(v),
            "q": fmt_units(q // 10**st.qd, st.pd),
            "O": open_ms,
            "C": now_ms,
            "F": first,
            "L": last,
            "n": last - first + 1 if first >= 0 else 0,
        }

    def kline(
        self, symbol: str, interval: str, utc_offset: str | None, now_ms: int
    ) -> list[dict[str, Any]]:
        """The ``kline`` events due at ``now_ms`` ("Kline/Candlestick Streams").

        The kline closed since the last call (``x`` true), if one did, then the current
        one (``x`` false). The first call starts the interval's kline at the last price.
        """
        st = self.state(symbol)
        key = (interval, utc_offset)
        track = st.klines.get(key)
        if track is None:
            bounds = kline_bounds(interval, utc_offset, now_ms)
            track = st.klines[key] = _KlineTrack(
                interval, utc_offset, _Bar.starting(bounds, st.last)
            )
        track.roll(now_ms)
        out = []
        if track.closed is not None:
            out.append(self._kline_event(st, symbol, interval, track.closed, True, now_ms))
            track.closed = None
        out.append(self._kline_event(st, symbol, interval, track.bar, False, now_ms))
        return out

    def _kline_event(
        self, st: SymbolState, symbol: str, interval: str, bar: _Bar, closed: bool, now_ms: int
    ) -> dict[str, Any]:
        scale = 10**st.qd
        return {
            "e": "kline",
            "E": now_ms,
            "s": symbol,
            "k": {
                "t": bar.open_ms,
                "T": bar.close_ms,
                "s": symbol,
                "i": interval,
                "f": bar.first,
                "L": bar.last,
                "o": st.p(bar.o),
                "c": st.p(bar.c),
                "h": st.p(bar.h),
                "l": st.p(bar.low),
                "v": st.q(bar.v),
                "n": bar.last - bar.first + 1 if bar.first >= 0 else 0,
                "x": closed,
                "q": fmt_units(bar.q // scale, st.pd),
                "V": st.q(bar.taker_v),
                "Q": fmt_units(bar.taker_q // scale, st.pd),
                "B": "0",
            },
        }

    def avg_price(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The ``avgPrice`` event ("Average Price"): the figure REST ``avgPrice`` answers."""
        st = self.state(symbol)
        return {
            "e": "avgPrice",
            "E": now_ms,
            "s": symbol,
            "i": "5m",
            "w": self._weighted(st),
            "T": st.trade_time or now_ms,
        }

    def reference_price(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The ``referencePrice`` event ("Reference Price Streams"), the average price as ``r``."""
        st = self.state(symbol)
        return {"e": "referencePrice", "s": symbol, "r": self._weighted(st), "t": now_ms}

    def _levels(self, st: SymbolState, bids: bool, n: int) -> list[list[str]]:
        """The top ``n`` levels of one side: the walk's best price and quantity, then one
        tick per level with a quantity derived from the book's update id."""
        best, qty0, sign = (st.bid, st.bid_qty, -1) if bids else (st.ask, st.ask_qty, 1)
        out = []
        for k in range(n):
            price = best + sign * k * st.tick
            if price < st.tick:
                break
            qty = (
                qty0
                if k == 0
                else st.step * (1 + (st.book_id * 2654435761 + k * 40503 + bids) % 5000)
            )
            out.append([st.p(price), st.q(qty)])
        return out

    def partial_depth(self, symbol: str, levels: int) -> dict[str, Any]:
        """``<symbol>@depth<levels>``: ``lastUpdateId``, ``bids``, ``asks`` ("Partial Book
        Depth Streams"; the payload names no symbol)."""
        st = self.state(symbol)
        return {
            "lastUpdateId": st.book_id,
            "bids": self._levels(st, True, levels),
            "asks": self._levels(st, False, levels),
        }

    def depth_update(self, symbol: str, period_ms: int, now_ms: int) -> dict[str, Any] | None:
        """A ``depthUpdate`` of ``<symbol>@depth`` (or ``@depth@100ms``) since the last one
        of that speed ("Diff. Depth Stream"); None if the book has not changed since.

        ``U`` is one past the last ``u`` sent at that speed, so the events chain as a
        local order book expects.
        """
        st = self.state(symbol)
        sent = st.depth_sent.get(period_ms)
        if sent is not None and sent >= st.book_id:
            return None
        st.depth_sent[period_ms] = st.book_id
        return {
            "e": "depthUpdate",
            "E": now_ms,
            "s": symbol,
            "U": st.book_id if sent is None else sent + 1,
            "u": st.book_id,
            "b": self._levels(st, True, 2),
            "a": self._levels(st, False, 2),
        }

    def take_changed(self) -> list[str]:
        """Symbols that changed since the last call (for the ``@arr`` streams), and reset."""
        out = list(self._changed)
        self._changed.clear()
        for s in out:
            self.states[s].changed = False
        return out

    # -- REST shapes (Market Data endpoints) ----------------------------------------------

    def rest_price(self, symbol: str) -> dict[str, Any]:
        """``/api/v3/ticker/price`` element."""
        st = self.state(symbol)
        return {"symbol": symbol, "price": st.p(st.last)}

    def rest_book(self, symbol: str) -> dict[str, Any]:
        """``/api/v3/ticker/bookTicker`` element."""
        st = self.state(symbol)
        return {
            "symbol": symbol,
            "bidPrice": st.p(st.bid),
            "bidQty": st.q(st.bid_qty),
            "askPrice": st.p(st.ask),
            "askQty": st.q(st.ask_qty),
        }

    def rest_24hr(self, symbol: str, now_ms: int, mini: bool = False) -> dict[str, Any]:
        """``/api/v3/ticker/24hr`` element, FULL (21 fields) or MINI (12 fields)."""
        t = self.ticker(symbol, now_ms)
        if mini:
            return {
                "symbol": symbol,
                "openPrice": t["o"],
                "highPrice": t["h"],
                "lowPrice": t["l"],
                "lastPrice": t["c"],
                "volume": t["v"],
                "quoteVolume": t["q"],
                "openTime": t["O"],
                "closeTime": t["C"],
                "firstId": t["F"],
                "lastId": t["L"],
                "count": t["n"],
            }
        return {
            "symbol": symbol,
            "priceChange": t["p"],
            "priceChangePercent": t["P"],
            "weightedAvgPrice": t["w"],
            "prevClosePrice": t["x"],
            "lastPrice": t["c"],
            "lastQty": t["Q"],
            "bidPrice": t["b"],
            "bidQty": t["B"],
            "askPrice": t["a"],
            "askQty": t["A"],
            "openPrice": t["o"],
            "highPrice": t["h"],
            "lowPrice": t["l"],
            "volume": t["v"],
            "quoteVolume": t["q"],
            "openTime": t["O"],
            "closeTime": t["C"],
            "firstId": t["F"],
            "lastId": t["L"],
            "count": t["n"],
        }

    def rest_avg_price(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """``/api/v3/avgPrice``: here the 24 h weighted average stands in for 5 minutes."""
        st = self.state(symbol)
        return {"mins": 5, "price": self._weighted(st), "closeTime": now_ms}

    def exchange_symbol(self, symbol: str) -> dict[str, Any]:
        """One ``exchangeInfo`` symbol entry with the current field set ("Exchange information")."""
        spec = self.specs[symbol]
        pd, qd = spec.price_decimals, spec.qty_decimals
        return {
            "symbol": symbol,
            "status": spec.status,
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "opoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "pegInstructionsAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": spec.tick_size,
                    "maxPrice": fmt_units(1_000_000 * 10**pd, pd),
                    "tickSize": spec.tick_size,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": spec.step_size,
                    "maxQty": fmt_units(9_000_000 * 10**qd, qd),
                    "stepSize": spec.step_size,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": [
                "NONE",
                "EXPIRE_TAKER",
                "EXPIRE_MAKER",
                "EXPIRE_BOTH",
            ],
        }
