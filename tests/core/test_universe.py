"""The universe: TRADING spot symbols by canonical name, user input resolved, suggestions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pricectl.core.pairs import bundled_symbols
from pricectl.core.universe import Market, Universe, UnknownPair, decimals_of

DATA = Path(__file__).parent.parent / "data" / "binance"
ALIASES = {"USD": "USDT"}


def _entry(symbol: str, base: str, quote: str, status: str = "TRADING", tick: str = "0.01"):
    return {
        "symbol": symbol,
        "status": status,
        "baseAsset": base,
        "quoteAsset": quote,
        "isSpotTradingAllowed": True,
        "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick}],
    }


@pytest.fixture
def universe() -> Universe:
    entries = [
        _entry("BTCUSDT", "BTC", "USDT", tick="0.01000000"),
        _entry("ETHBTC", "ETH", "BTC", tick="0.00001000"),
        _entry("ETHUSDT", "ETH", "USDT"),
        _entry("BTCUSDC", "BTC", "USDC"),
        _entry("OLDUSDT", "OLD", "USDT", status="BREAK"),
        _entry("XUSD", "XX", "USD"),  # odd: symbol is not base + quote
        _entry("ABCUSD", "ABC", "USD"),  # quote is an alias source: shadowed by ABC/USD
    ]
    return Universe.from_exchange_info({"symbols": entries}, ALIASES)


def test_trading_spot_symbols_get_one_canonical_name(universe: Universe) -> None:
    """Only TRADING symbols are listed; the alias is read backwards for the display name."""
    assert universe.pairs == ("BTC/USD", "BTC/USDC", "ETH/BTC", "ETH/USD")
    m = universe.market("BTC/USD")
    assert m == Market("BTC/USD", "BTCUSDT", "BTC", "USDT", "0.01000000")
    assert m.decimals == 2
    assert universe.market("ETH/BTC").decimals == 5
    assert "OLD/USD" not in universe
    assert universe.by_symbol("ethbtc") == universe.market("ETH/BTC")


@pytest.mark.parametrize(
    "text", ["BTC/USD", "btc/usd", "BTC/USDT", "btc-usdt", "BTC_USD", "btcusdt", " BTC:USD "]
)
def test_resolve_accepts_the_usual_spellings(universe: Universe, text: str) -> None:
    """Case, separators, the alias or the exchange's quote, a bare symbol: one answer."""
    assert universe.resolve(text) == "BTC/USD"


def test_unknown_pair_names_it_with_the_nearest(universe: Universe) -> None:
    """A pair that does not exist is named, with the closest canonical names."""
    with pytest.raises(UnknownPair) as info:
        universe.resolve("BTC/USX")
    assert info.value.text == "BTC/USX"
    assert "BTC/USD" in info.value.suggestions
    assert "'BTC/USX'" in str(info.value) and "did you mean" in str(info.value)
    with pytest.raises(UnknownPair, match="OLD/USD"):
        universe.resolve("OLD/USD")  # listed but not trading
    with pytest.raises(UnknownPair):
        universe.resolve("")


def test_bare_symbol_typo_suggests_by_symbol(universe: Universe) -> None:
    """``BTCUSTD`` has no slash: it is compared with the exchange symbols."""
    with pytest.raises(UnknownPair) as info:
        universe.resolve("BTCUSTD")
    assert info.value.suggestions[0] == "BTC/USD"


def test_search_for_the_picker(universe: Universe) -> None:
    """Prefix matches first, then substring, then near names."""
    assert universe.search("eth") == ["ETH/USD", "ETH/BTC"]  # the aliased quote first
    assert universe.search("BTC/U")[:2] == ["BTC/USD", "BTC/USDC"]
    assert universe.search("eth", prefer=["ETH/BTC"]) == ["ETH/BTC", "ETH/USD"]
    assert sorted(universe.search("")) == list(universe.pairs)
    assert universe.search("TH/B") == ["ETH/BTC"]


def test_pair_map_maps_back_to_symbols(universe: Universe) -> None:
    """Every canonical name maps back to its symbol through the aliases."""
    pm = universe.pair_map(universe.pairs)
    for m in universe:
        assert pm.symbol_for(m.pair) == m.symbol


def test_recorded_exchange_info_and_the_bundled_list() -> None:
    """The recorded exchangeInfo and the bundled snapshot both build a universe."""
    info = json.loads((DATA / "exchangeInfo-excerpt.json").read_text())
    u = Universe.from_exchange_info(info, ALIASES)
    assert u.resolve("ethbtc") == "ETH/BTC"
    bundled = Universe.from_symbols(bundled_symbols(), ALIASES)
    assert len(bundled) > 1000
    assert bundled.resolve("btcusdt") == "BTC/USD"
    pm = bundled.pair_map(bundled.pairs)
    assert len(set(pm.symbols)) == len(bundled)


def test_decimals_of() -> None:
    """Tick sizes as Binance writes them, and nonsense."""
    assert decimals_of("0.01000000") == 2
    assert decimals_of("1.00000000") == 0
    assert decimals_of("0.00000001") == 8
    assert decimals_of("abc") == 0
    assert decimals_of("0") == 0
