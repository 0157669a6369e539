"""Display pairs and exchange symbols, docs/protocol.md, "Pairs".

A display pair is ``BASE/QUOTE`` in upper case (``BTC/USD``). Binance has no USD
market, so the exchange symbol goes through ``quote_aliases`` (default
``USD -> USDT``, USDT standing in for USD): ``BTC/USD -> BTCUSDT``, stream
``btcusdt@ticker``. The reverse map is built from the configured pairs, never by
guessing where a symbol splits (``BTCUSDT`` could be ``BTCUSD`` + ``T``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "PAIR_RE",
    "PairMap",
    "bundled_symbols",
    "canonical_pair",
    "known_symbols",
    "parse_pair",
    "parse_pair_list",
]

#: Upper-case asset codes of 2 to 12 letters or digits, one slash.
PAIR_RE = re.compile(r"^([A-Z0-9]{2,12})/([A-Z0-9]{2,12})$")


def parse_pair(text: str) -> tuple[str, str]:
    """``"btc/usd"`` or ``"BTC/USD"`` -> ``("BTC", "USD")``; ``ValueError`` if malformed."""
    candidate = text.strip().upper()
    m = PAIR_RE.match(candidate)
    if m is None:
        raise ValueError(f"malformed pair {text!r}: expected BASE/QUOTE such as BTC/USD")
    return m.group(1), m.group(2)


def parse_pair_list(text: str) -> list[str]:
    """``"BTC/USD,eth/usd"`` -> ``["BTC/USD", "ETH/USD"]`` (normalised, duplicates removed)."""
    out: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        base, quote = parse_pair(part)
        pair = f"{base}/{quote}"
        if pair not in out:
            out.append(pair)
    return out


@dataclass(frozen=True)
class PairMap:
    """The configured pairs and their exchange symbols, both ways."""

    pairs: tuple[str, ...]
    aliases: Mapping[str, str]

    @classmethod
    def build(cls, pairs: Iterable[str], aliases: Mapping[str, str]) -> PairMap:
        """Normalise and validate ``pairs``; ``ValueError`` names the first bad one."""
        seen: list[str] = []
        for text in pairs:
            base, quote = parse_pair(text)
            pair = f"{base}/{quote}"
            if pair in seen:
                raise ValueError(f"duplicate pair {pair}")
            seen.append(pair)
        pm = cls(tuple(seen), dict(aliases))
        symbols = [pm.symbol_for(p) for p in seen]
        if len(set(symbols)) != len(symbols):
            raise ValueError("two pairs map to the same exchange symbol")
        return pm

    def symbol_for(self, pair: str) -> str:
        """``BTC/USD -> BTCUSDT`` through the quote aliases."""
        base, quote = parse_pair(pair)
        return base + self.aliases.get(quote, quote)

    def pair_for(self, symbol: str) -> str | None:
        """``BTCUSDT -> BTC/USD`` for a configured pair, else ``None``."""
        return self._by_symbol.get(symbol.upper())

    def stream_for(self, pair: str, kind: str) -> str:
        """``("BTC/USD", "ticker") -> "btcusdt@ticker"`` (symbol part lower case)."""
        return f"{self.symbol_for(pair).lower()}@{kind}"

    def normalise(self, text: str) -> str:
        """A configured pair from user input; ``KeyError`` names the allowed pairs."""
        base, quote = parse_pair(text)
        pair = f"{base}/{quote}"
        if pair not in self.pairs:
            raise KeyError(f"unknown pair {pair}; allowed: {', '.join(self.pairs)}")
        return pair

    @property
    def _by_symbol(self) -> dict[str, str]:
        cache: dict[str, str] | None = self.__dict__.get("_sym_cache")
        if cache is None:
            cache = {self.symbol_for(p): p for p in self.pairs}
            object.__setattr__(self, "_sym_cache", cache)
        return cache

    @property
    def symbols(self) -> tuple[str, ...]:
        """Exchange symbols in pair order."""
        return tuple(self.symbol_for(p) for p in self.pairs)


def bundled_symbols() -> list[dict[str, str]]:
    """Every Binance spot symbol in the bundled snapshot, one record each: ``symbol``,
    ``status``, ``baseAsset``, ``quoteAsset``, ``tickSize`` (PRICE_FILTER) and
    ``stepSize`` (LOT_SIZE), as the exchange spells them.

    The snapshot (``pricectl/data/binance-spot-symbols.json``) is a real
    ``exchangeInfo`` of 2021-10-12 (1695 symbols) reduced to those fields, shipped so
    ``config check`` and the simulator work offline. Ingest checks the live
    ``exchangeInfo`` at start-up, which is the authority. The one reader of the file.
    """
    import json
    from importlib import resources

    text = resources.files("pricectl").joinpath("data/binance-spot-symbols.json").read_text()
    records: list[dict[str, str]] = json.loads(text)
    return records


def known_symbols() -> dict[str, tuple[str, str, str]]:
    """Binance spot symbols in the bundled snapshot: ``{"BTCUSDT": ("BTC", "USDT", "TRADING")}``."""
    return {s["symbol"]: (s["baseAsset"], s["quoteAsset"], s["status"]) for s in bundled_symbols()}


def canonical_pair(text: str, aliases: Mapping[str, str]) -> str:
    """The one display name of a pair, as the exchange's list gives it: a quote that an
    alias stands for is shown as the alias (``VET/USDT`` -> ``VET/USD`` with
    ``USD: USDT``); ``ValueError`` if malformed."""
    base, quote = parse_pair(text)
    upper = {k.upper(): v.upper() for k, v in aliases.items()}
    back = {v: k for k, v in upper.items()}
    if quote not in upper:
        quote = back.get(quote, quote)
    return f"{base}/{quote}"
