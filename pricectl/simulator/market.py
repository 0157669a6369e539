"""The simulated market: a seeded random walk per symbol and the Binance payloads it produces.

No I/O and no clock: the simulator's feed (:mod:`pricectl.simulator.feed`) calls
:meth:`Market.trade` at its trade rate and :meth:`Market.ticker` once a second, passing
``now_ms``; its REST side reads the same walk. Everything here is
deterministic for a given seed (each symbol has its own ``random.Random`` seeded with
``"<seed>:<SYMBOL>"``, so the order in which symbols are first used does not matter).

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
from dataclasses import dataclass, field
from typing import Any

from pricectl.core.pairs import bundled_symbols

__all__ = [
    "START_PRICES_USD",
    "Market",
    "SymbolSpec",
    "SymbolState",
    "fmt_units",
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
        )

    # -- the walk ----------------------------------------------------------------------

    def trade(
        self, symbol: str, now_ms: int
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """One trade: advance the walk and return ``(trade, aggTrade, bookTicker)`` payloads."""
        st = self.state(symbol)
        rng = st.rng
        sigma = max(1.0, st.last / st.tick * self.STEP_FRACTION)
        move = round(rng.gauss(0.0, sigma))
        st.last = max(st.tick, st.last + move * st.tick)
        st.last_qty = st.step * rng.randint(1, 1000)
        st.high = max(st.high, st.last)
        st.low = min(st.low, st.last)
        st.volume += st.last_qty
        st.quote_vol += st.last_qty * st.last
        st.trade_id += 1
        st.agg_id += 1
        st.book_id += rng.randint(1, 5)
        buyer_maker = rng.random() < 0.5
        if buyer_maker:  # the taker sold into the bid: the trade is at the bid
            st.bid, st.ask = st.last, st.last + st.tick * rng.randint(1, 3)
        else:
            st.bid, st.ask = max(st.tick, st.last - st.tick * rng.randint(1, 3)), st.last
        st.bid_qty = st.step * rng.randint(1, 5000)
        st.ask_qty = st.step * rng.randint(1, 5000)
        st.changed = True
        price, qty = st.p(st.last), st.q(st.last_qty)
        trade_time = now_ms - rng.randint(0, 2)
        trade = {
            "e": "trade",
            "E": now_ms,
            "s": symbol,
            "t": st.trade_id,
            "p": price,
            "q": qty,
            "T": trade_time,
            "m": buyer_maker,
            "M": True,
        }
        agg = {
            "e": "aggTrade",
            "E": now_ms,
            "s": symbol,
            "a": st.agg_id,
            "p": price,
            "q": qty,
            "f": st.trade_id,
            "l": st.trade_id,
            "T": trade_time,
            "m": buyer_maker,
            "M": True,
        }
        return trade, agg, self.book_ticker(symbol)

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
        """``(last - open) / open * 100`` with 3 decimals, rounded half away from zero."""
        num = (st.last - st.open) * 100_000
        q, r = divmod(abs(num), st.open)
        if 2 * r >= st.open:
            q += 1
        return fmt_units(-q if num < 0 else q, 3)

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

    def take_changed(self) -> list[str]:
        """Symbols that changed since the last call (for ``!miniTicker@arr``), and reset."""
        out = [s for s, st in self.states.items() if st.changed]
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
