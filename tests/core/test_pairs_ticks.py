"""Pairs <-> symbols and the price update (docs/protocol.md, "The update object")."""

from __future__ import annotations

import json

import pytest

from pricectl.core.pairs import (
    PairMap,
    bundled_symbols,
    known_symbols,
    parse_pair,
    parse_pair_list,
)
from pricectl.core.ticks import PriceUpdate, decode_update


def test_pair_map_both_ways() -> None:
    """BTC/USD maps to BTCUSDT through the alias, and back; stream names are lower case."""
    pm = PairMap.build(["BTC/USD", "eth/btc"], {"USD": "USDT"})
    assert pm.pairs == ("BTC/USD", "ETH/BTC")
    assert pm.symbol_for("BTC/USD") == "BTCUSDT"
    assert pm.symbol_for("ETH/BTC") == "ETHBTC"
    assert pm.pair_for("BTCUSDT") == "BTC/USD"
    assert pm.pair_for("btcusdt") == "BTC/USD"
    assert pm.pair_for("XRPUSDT") is None
    assert pm.stream_for("BTC/USD", "ticker") == "btcusdt@ticker"


@pytest.mark.parametrize("bad", ["BTCUSD", "BTC-USD", "/USD", "B/USD", "BTC/USD/EUR", ""])
def test_malformed_pairs(bad: str) -> None:
    """Malformed pairs are refused naming the expected form."""
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        parse_pair(bad)


def test_normalise_names_allowed_pairs() -> None:
    """An unknown pair names the allowed ones."""
    pm = PairMap.build(["BTC/USD", "ETH/USD"], {"USD": "USDT"})
    assert pm.normalise("btc/usd") == "BTC/USD"
    with pytest.raises(KeyError, match="allowed: BTC/USD, ETH/USD"):
        pm.normalise("DOGE/USD")


def test_parse_pair_list() -> None:
    """Comma lists are normalised and de-duplicated."""
    assert parse_pair_list("btc/usd, ETH/USD,BTC/USD,") == ["BTC/USD", "ETH/USD"]


def test_two_pairs_one_symbol_refused() -> None:
    """Pairs that collide on one exchange symbol are refused."""
    with pytest.raises(ValueError, match="same exchange symbol"):
        PairMap.build(["BTC/USD", "BTC/USDT"], {"USD": "USDT"})


def test_symbol_list_is_valid_json_array() -> None:
    """The bundled 2021 symbol universe is a JSON array of 1695 symbol objects."""
    symbols = bundled_symbols()
    assert len(symbols) == 1695 and {"BTCUSDT", "ZILUSDT"} <= {s["symbol"] for s in symbols}
    fields = {"symbol", "status", "baseAsset", "quoteAsset", "tickSize", "stepSize"}
    assert all(set(s) == fields for s in symbols)


def test_known_symbols_bundle() -> None:
    """The bundled snapshot has the real exchangeInfo universe."""
    syms = known_symbols()
    assert len(syms) == 1695
    assert syms["BTCUSDT"] == ("BTC", "USDT", "TRADING")


def test_update_round_trip_exact_decimals() -> None:
    """An update survives JSON both ways with decimal strings untouched, keys in order."""
    u = PriceUpdate(
        pair="BTC/USD",
        symbol="BTCUSDT",
        price="43250.12000000",
        bid="43250.11",
        ask="43250.13",
        open="42700.00",
        high="43500.00",
        low="42600.00",
        change_pct="1.29",
        volume="12345.67",
        event_ms=1700000000123,
        ingest_ns=1700000000125000000,
        epoch=7,
        seq=1042,
        gseq=5210,
    )
    text = u.to_json()
    assert list(json.loads(text)) == [
        "pair",
        "symbol",
        "price",
        "bid",
        "ask",
        "open",
        "high",
        "low",
        "change_pct",
        "volume",
        "event_ms",
        "ingest_ns",
        "epoch",
        "seq",
        "gseq",
        "source",
        "stale",
    ]
    assert '"price":"43250.12000000"' in text
    assert decode_update(text) == u


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ({"symbol": "X", "price": "1"}, "missing field 'pair'"),
        ({"pair": "A/B", "symbol": "AB", "price": 1.5}, "price must be a string"),
        ({"pair": "A/B", "symbol": "AB", "price": "1", "epoch": "7"}, "epoch must be an integer"),
        ({"pair": "A/B", "symbol": "AB", "price": "1", "source": "ftp"}, "source must be one of"),
    ],
)
def test_decode_rejects(obj: dict[str, object], problem: str) -> None:
    """Malformed updates are refused naming the field."""
    with pytest.raises(ValueError, match=problem):
        decode_update(obj)


def test_canonical_pair_shows_the_aliased_quote() -> None:
    """A quote an alias stands for is named by the alias, as exchangeInfo's names are."""
    from pricectl.core.pairs import canonical_pair

    aliases = {"USD": "USDT"}
    assert canonical_pair("vet/usdt", aliases) == "VET/USD"
    assert canonical_pair("VET/USD", aliases) == "VET/USD"
    assert canonical_pair("ETH/BTC", aliases) == "ETH/BTC"
    assert canonical_pair("VET/USDT", {}) == "VET/USDT"
