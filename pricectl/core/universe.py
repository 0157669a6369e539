"""The pairs a cluster can serve: the exchange's TRADING spot symbols, by display name.

Binance's ``GET /api/v3/exchangeInfo`` lists every symbol with its ``baseAsset``,
``quoteAsset``, ``status`` and filters (docs/binance.md). Each TRADING symbol gets one
canonical display name ``BASE/QUOTE`` built from its assets, with ``quote_aliases``
read backwards (``USD: USDT`` makes ``BTCUSDT`` the pair ``BTC/USD``), so
:meth:`~pricectl.core.pairs.PairMap.symbol_for` maps every canonical name back to its
symbol. Its tick size (``PRICE_FILTER.tickSize``) says how many decimals a price has.

:meth:`Universe.resolve` takes what a user types (``btc/usd``, ``BTC-USDT``,
``btcusdt``, ``eth_btc``) and answers the canonical name, or raises
:class:`UnknownPair` naming the input and the nearest names::

    u = Universe.from_exchange_info(info, {"USD": "USDT"})
    u.resolve("btcusdt")        # "BTC/USD"
    u.resolve("BTC/USDT")       # "BTC/USD" (the alias, answered canonically)
    u.resolve("BTC/USX")        # UnknownPair: ... did you mean BTC/USD, BTC/UST?

Pure: no I/O. The adapters fetch ``exchangeInfo`` (and refresh it); the bundled
snapshot (:func:`~pricectl.core.pairs.bundled_symbols`) is for offline checks only.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pricectl.core.pairs import PAIR_RE, PairMap

__all__ = ["MIN_UNIVERSE_REFRESH", "Market", "Universe", "UnknownPair", "decimals_of"]

#: The shortest ``exchange.universe_refresh`` the config accepts (seconds): one
#: exchangeInfo read (weight 20) a minute leaves the REST budget to the snapshots.
MIN_UNIVERSE_REFRESH = 60.0

#: What may separate the base from the quote in user input (``BTC/USD``, ``BTC-USD`` ...).
_SEPARATORS = re.compile(r"[/\-_: ]")

#: Names suggested for a pair that does not exist.
SUGGESTIONS = 5


class UnknownPair(ValueError):
    """A pair the exchange does not list (or not as TRADING); ``suggestions`` are the
    nearest canonical names."""

    def __init__(self, text: str, suggestions: Iterable[str] = ()) -> None:
        self.text = text
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown pair {text!r}: the exchange lists no such spot pair{hint}")


def decimals_of(tick_size: str) -> int:
    """``"0.01000000"`` -> 2: the decimals a price of this tick size needs (0 if unknown)."""
    try:
        d = Decimal(tick_size).normalize()
    except (InvalidOperation, ValueError):
        return 0
    if d <= 0:
        return 0
    exponent = d.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


@dataclass(frozen=True, slots=True)
class Market:
    """One servable pair: canonical name, exchange symbol, assets, tick size."""

    pair: str
    symbol: str
    base: str
    quote: str
    tick_size: str

    @property
    def decimals(self) -> int:
        """Decimals of a price (from the tick size)."""
        return decimals_of(self.tick_size)


def _tick_size(entry: Mapping[str, Any]) -> str:
    for f in entry.get("filters") or ():
        if isinstance(f, Mapping) and f.get("filterType") == "PRICE_FILTER":
            tick = f.get("tickSize")
            if isinstance(tick, str):
                return tick
    tick = entry.get("tickSize")  # the bundled snapshot's flattened record
    return tick if isinstance(tick, str) else "0"


class Universe:
    """Every servable pair by canonical name, with lookups by symbol and by user input."""

    __slots__ = ("_by_pair", "_by_symbol", "aliases")

    def __init__(self, markets: Iterable[Market], aliases: Mapping[str, str]) -> None:
        self.aliases: dict[str, str] = {k.upper(): v.upper() for k, v in aliases.items()}
        self._by_pair: dict[str, Market] = {}
        self._by_symbol: dict[str, Market] = {}
        for m in markets:
            self._by_pair[m.pair] = m
            self._by_symbol[m.symbol] = m

    @classmethod
    def from_symbols(
        cls, entries: Iterable[Mapping[str, Any]], aliases: Mapping[str, str]
    ) -> Universe:
        """From ``exchangeInfo["symbols"]`` (or the bundled records): the TRADING spot ones.

        A symbol is left out when it is not TRADING, not spot (``isSpotTradingAllowed``
        false, when the field is there), its assets are not 2 to 12 letters or digits, or
        its quote is an alias *source* (with ``USD: USDT`` a real ``XUSD`` symbol could not
        be told from ``X/USD`` = ``XUSDT``; the alias wins).
        """
        aliases = {k.upper(): v.upper() for k, v in aliases.items()}
        back = {v: k for k, v in aliases.items()}
        markets: list[Market] = []
        for e in entries:
            if not isinstance(e, Mapping) or e.get("status") != "TRADING":
                continue
            if e.get("isSpotTradingAllowed") is False:
                continue
            symbol, base, quote = e.get("symbol"), e.get("baseAsset"), e.get("quoteAsset")
            if not (isinstance(symbol, str) and isinstance(base, str) and isinstance(quote, str)):
                continue
            if quote in aliases or symbol != base + quote:
                continue
            pair = f"{base}/{back.get(quote, quote)}"
            if PAIR_RE.match(pair) is None:
                continue
            markets.append(Market(pair, symbol, base, quote, _tick_size(e)))
        return cls(markets, aliases)

    @classmethod
    def from_exchange_info(cls, info: Mapping[str, Any], aliases: Mapping[str, str]) -> Universe:
        """From a whole ``exchangeInfo`` response body."""
        symbols = info.get("symbols")
        return cls.from_symbols(symbols if isinstance(symbols, list) else (), aliases)

    # --- lookups ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_pair)

    def __contains__(self, pair: object) -> bool:
        return pair in self._by_pair

    def __iter__(self) -> Iterator[Market]:
        return iter(self._by_pair.values())

    @property
    def pairs(self) -> tuple[str, ...]:
        """Every canonical name, sorted."""
        return tuple(sorted(self._by_pair))

    def market(self, pair: str) -> Market:
        """The market of a canonical name (``KeyError`` if not listed)."""
        return self._by_pair[pair]

    def by_symbol(self, symbol: str) -> Market | None:
        """The market of an exchange symbol (``BTCUSDT``), if listed."""
        return self._by_symbol.get(symbol.upper())

    def resolve(self, text: str) -> str:
        """The canonical name of user input; :class:`UnknownPair` with suggestions if none.

        Accepted: any case, ``/``, ``-``, ``_``, ``:`` or a space between base and quote,
        the quote as its alias or as the exchange spells it, or the bare exchange symbol.
        """
        raw = text.strip().upper()
        if not raw:
            raise UnknownPair(text)
        parts = [p for p in _SEPARATORS.split(raw) if p]
        if len(parts) == 2:
            base, quote = parts
            m = self._by_symbol.get(base + self.aliases.get(quote, quote))
            if m is not None:
                return m.pair
        elif len(parts) == 1:
            m = self._by_symbol.get(parts[0])
            if m is not None:
                return m.pair
        raise UnknownPair(text.strip(), self.suggest(raw))

    def suggest(self, text: str, n: int = SUGGESTIONS) -> list[str]:
        """Up to ``n`` canonical names nearest to ``text`` (difflib ratio)."""
        raw = text.strip().upper()
        parts = [p for p in _SEPARATORS.split(raw) if p]
        probe = "/".join(parts) if len(parts) == 2 else raw
        names = list(self._by_pair)
        found = difflib.get_close_matches(probe, names, n=n, cutoff=0.6)
        if len(found) < n and len(parts) == 1:
            # A bare symbol: compare symbols too (``BTCUSTD`` -> BTCUSDT -> BTC/USD).
            by_sym = difflib.get_close_matches(raw, list(self._by_symbol), n=n, cutoff=0.6)
            for s in by_sym:
                pair = self._by_symbol[s].pair
                if pair not in found:
                    found.append(pair)
        return found[:n]

    def search(self, text: str, limit: int = 20, prefer: Iterable[str] = ()) -> list[str]:
        """Names for a picker: those starting with ``text``, then containing it, then near.

        Within each group the ``prefer``red pairs (the pinned ones) come first, then pairs
        quoted in an aliased quote (``X/USD``: what most people look for), then the rest
        by name.
        """
        raw = text.strip().upper()
        favourite = {p: i for i, p in enumerate(prefer)}
        shown_quotes = set(self.aliases)

        def rank(pair: str) -> tuple[int, int, str]:
            quote = pair.partition("/")[2]
            return (favourite.get(pair, len(favourite)), 0 if quote in shown_quotes else 1, pair)

        names = sorted(self._by_pair, key=rank)
        if not raw:
            return names[:limit]
        compact = raw.replace("/", "")
        starts = [p for p in names if p.startswith(raw) or p.replace("/", "").startswith(compact)]
        taken = set(starts)
        contains = [p for p in names if p not in taken and compact in p.replace("/", "")]
        out = (starts + contains)[:limit]
        if len(out) < limit:
            out += [p for p in self.suggest(raw, limit - len(out)) if p not in out]
        return out

    def pair_map(self, pairs: Iterable[str]) -> PairMap:
        """A :class:`PairMap` of ``pairs`` (canonical names) with this universe's aliases."""
        return PairMap.build(pairs, self.aliases)
