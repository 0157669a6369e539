"""The pure Binance frame parser against every sample file and both real recordings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pricectl.core.binance import (
    ControlError,
    ControlReply,
    FrameParser,
    PriceEvent,
    ServerShutdown,
    Skipped,
    combined_url,
    stream_names,
    subscribe_message,
)
from pricectl.core.pairs import PairMap
from pricectl.core.ticks import PriceUpdate
from tests.recordings import RECORDING_PAIRS

DATA = Path(__file__).resolve().parent.parent / "data" / "binance"
REAL = DATA / "real"
ALIASES = {"USD": "USDT"}
RECV_NS = 1_700_000_000_123_456_789

SAMPLE_PAIRS = PairMap.build(["BNB/BTC", "BNB/USDT", "ETH/USD", "BTC/USD", "ETH/BTC"], ALIASES)

PAIRS_2021_04_05 = PairMap.build(RECORDING_PAIRS, ALIASES)
PAIRS_2021_10_12 = PairMap.build(["NKN/USDT", "BLZ/ETH", "LRC/BTC", "RUNE/EUR"], ALIASES)


def _text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def _prices(events: list[object]) -> list[PriceUpdate]:
    return [e.update for e in events if isinstance(e, PriceEvent)]


def _one(kind: str, name: str) -> PriceUpdate:
    parser = FrameParser(SAMPLE_PAIRS, kind)
    events = parser.parse(_text(name), RECV_NS)
    assert len(events) == 1, events
    assert isinstance(events[0], PriceEvent), events
    assert parser.counts == Counter({f"parsed:{kind}": 1})
    return events[0].update


# -- doc examples ------------------------------------------------------------------------

TICKER_BNBBTC = PriceUpdate(
    pair="BNB/BTC",
    symbol="BNBBTC",
    price="0.0025",
    bid="0.0024",
    ask="0.0026",
    open="0.0010",
    high="0.0025",
    low="0.0010",
    change_pct="250.00",
    volume="10000",
    event_ms=1672515782136,
    ingest_ns=RECV_NS,
    order_key=1672515782136,
)


def test_raw_ticker_maps_every_field() -> None:
    """A raw 24hrTicker becomes an update with c/b/a/o/h/l/P/v/E carried exactly."""
    assert _one("ticker", "ws-ticker.json") == TICKER_BNBBTC


def test_combined_ticker_unwraps_the_envelope() -> None:
    """The combined envelope {"stream","data"} gives the same update as the raw frame."""
    assert _one("ticker", "ws-combined-ticker.json") == TICKER_BNBBTC


def test_update_is_unstamped_and_from_ws() -> None:
    """Parsed updates carry epoch/seq/gseq 0 and source ws: ingest stamps them later."""
    u = _one("ticker", "ws-ticker.json")
    assert (u.epoch, u.seq, u.gseq, u.source, u.stale) == (0, 0, 0, "ws", False)


def test_mini_ticker_has_no_bid_ask_or_change() -> None:
    """A miniTicker carries price/open/high/low/volume; bid, ask and change_pct stay None."""
    assert _one("miniTicker", "ws-miniTicker.json") == PriceUpdate(
        pair="BNB/BTC",
        symbol="BNBBTC",
        price="0.0025",
        open="0.0010",
        high="0.0025",
        low="0.0010",
        volume="10000",
        event_ms=1672515782136,
        ingest_ns=RECV_NS,
        order_key=1672515782136,
    )


def test_mini_ticker_array_yields_one_update_per_element() -> None:
    """!miniTicker@arr (combined) yields an update per array element."""
    parser = FrameParser(SAMPLE_PAIRS, "miniTicker")
    prices = _prices(parser.parse(_text("ws-miniTicker-arr-combined.json"), RECV_NS))
    assert [(p.pair, p.price, p.volume) for p in prices] == [("BNB/BTC", "0.0025", "10000")]


def test_book_ticker_uses_bid_as_price_and_receive_time() -> None:
    """bookTicker: price=bid, bid/ask from b/a, event_ms = receive time, order_key = u."""
    expected = PriceUpdate(
        pair="BNB/USDT",
        symbol="BNBUSDT",
        price="25.35190000",
        bid="25.35190000",
        ask="25.36520000",
        event_ms=RECV_NS // 1_000_000,
        ingest_ns=RECV_NS,
        order_key=400900217,
    )
    assert _one("bookTicker", "ws-bookTicker.json") == expected
    assert _one("bookTicker", "ws-combined-bookTicker.json") == expected


def test_agg_trade_maps_price_time_and_id() -> None:
    """aggTrade: price=p, event_ms=E, order_key=a."""
    assert _one("aggTrade", "ws-aggTrade.json") == PriceUpdate(
        pair="BNB/BTC",
        symbol="BNBBTC",
        price="0.001",
        event_ms=1672515782136,
        ingest_ns=RECV_NS,
        order_key=12345,
    )


def test_trade_maps_price_time_and_id() -> None:
    """trade: price=p, event_ms=E, order_key=t."""
    assert _one("trade", "ws-trade.json") == PriceUpdate(
        pair="BNB/BTC",
        symbol="BNBBTC",
        price="0.001",
        event_ms=1672515782136,
        ingest_ns=RECV_NS,
        order_key=12345,
    )


@pytest.mark.parametrize(
    ("name", "reason", "n"),
    [
        ("ws-ticker-1h.json", "ignored:1hTicker", 1),
        ("ws-ticker-1h-arr-combined.json", "ignored:1hTicker", 1),
        ("ws-avgPrice.json", "ignored:avgPrice", 1),
    ],
)
def test_known_unused_events_are_ignored_and_counted(name: str, reason: str, n: int) -> None:
    """Rolling-window tickers and avgPrice produce no update and are counted as ignored."""
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    events = parser.parse(_text(name), RECV_NS)
    assert events == [Skipped(reason)] * n
    assert parser.counts == Counter({reason: n})


def test_server_shutdown_raw_and_combined() -> None:
    """serverShutdown arrives as a ServerShutdown event in both raw and combined form."""
    sample = json.loads(_text("ws-serverShutdown.json"))
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    for form in ("raw", "combined"):
        text = json.dumps(sample[form])
        assert parser.parse(text, RECV_NS) == [ServerShutdown(1770123456789)]
    assert parser.counts == Counter({"shutdown": 2})


def test_control_replies_match_the_documented_responses() -> None:
    """Each documented control response parses to a ControlReply with its id and result."""
    sample = json.loads(_text("ws-control-messages.json"))
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    got = {
        method: parser.parse(json.dumps(pair["response"]), RECV_NS)
        for method, pair in sample.items()
    }
    assert got == {
        "SUBSCRIBE": [ControlReply(1, None)],
        "UNSUBSCRIBE": [ControlReply(312, None)],
        "LIST_SUBSCRIPTIONS": [ControlReply(3, ["btcusdt@aggTrade"])],
        "SET_PROPERTY": [ControlReply(5, None)],
        "GET_PROPERTY": [ControlReply(2, True)],
    }


def test_control_requests_are_built_as_documented() -> None:
    """subscribe_message reproduces each documented request byte for byte (compact JSON)."""
    sample = json.loads(_text("ws-control-messages.json"))
    for method, pair in sample.items():
        req = pair["request"]
        built = subscribe_message(method, req.get("params"), req["id"])
        assert json.loads(built) == req
        assert built == json.dumps(req, separators=(",", ":"))


def test_control_errors_wire_and_doc_forms() -> None:
    """Wrapped {"error":{code,msg},"id"} and the doc's flat {code,msg,id} both give ControlError."""
    sample = json.loads(_text("ws-control-errors.json"))
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    wire = [parser.parse(json.dumps(x), RECV_NS)[0] for x in sample["wire_examples"]]
    assert wire == [
        ControlError(1, 2, "Invalid request: request ID must be an unsigned integer"),
        ControlError(1, 2, "Invalid request: invalid stream"),
    ]
    codes = []
    for entry in sample["doc_errors"]:
        err = {"error": entry["doc_error"], "id": 7}
        (event,) = parser.parse(json.dumps(err), RECV_NS)
        assert isinstance(event, ControlError) and event.id == 7
        assert event.msg == entry["doc_error"]["msg"]
        codes.append(event.code)
    assert codes == [0, 1, 2, 2, 2, 2, 2, 3]
    flat = parser.parse(json.dumps(sample["doc_errors"][0]["doc_error"]), RECV_NS)
    assert flat == [ControlError("%s", 0, "Unknown property")]


@pytest.mark.parametrize(
    "name",
    [
        "rest-ping.json",
        "rest-time.json",
        "rest-avgPrice.json",
        "rest-error.json",
        "rest-ticker-price.json",
        "rest-ticker-price-symbols.json",
        "rest-ticker-24hr.json",
        "rest-ticker-24hr-mini.json",
        "rest-ticker-bookTicker.json",
        "rest-ticker-bookTicker-symbols.json",
        "exchangeInfo-excerpt.json",
        "real/rest-ticker-24hr-btcusdt-2021-10-22.json",
        "real/rest-ticker-price-btcusdt.json",
        "real/exchangeInfo-2021-10-12-excerpt.json",
    ],
)
def test_rest_bodies_are_not_stream_events(name: str) -> None:
    """A REST body arriving on the WebSocket is an unknown event: counted, never a price."""
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    events = parser.parse(_text(name), RECV_NS)
    assert events and all(isinstance(e, Skipped) for e in events)
    assert set(parser.counts) == {"unknown_event"}


# -- real single frames ------------------------------------------------------------------


def test_real_ticker_frame() -> None:
    """The real ethusdt@ticker frame keeps its 8-decimal strings exactly."""
    u = _one("ticker", "real/ws-ticker-ethusdt-2022-05-29.json")
    assert (u.pair, u.price, u.bid, u.ask, u.change_pct, u.volume, u.event_ms) == (
        "ETH/USD",
        "1792.84000000",
        "1792.83000000",
        "1792.84000000",
        "1.600",
        "471703.53110000",
        1653812650349,
    )
    assert (u.open, u.high, u.low) == ("1764.61000000", "1808.98000000", "1748.94000000")


def test_real_retired_ticker_array() -> None:
    """The retired !ticker@arr frame still parses: one update per element."""
    u = _one("ticker", "real/ws-ticker-arr-2022-05-29.json")
    assert (u.pair, u.price, u.change_pct, u.event_ms) == (
        "ETH/BTC",
        "0.06150300",
        "0.515",
        1653812100450,
    )


def test_real_agg_trade_frame() -> None:
    """The real btcusdt@aggTrade frame: price p, id a, time E."""
    u = _one("aggTrade", "real/ws-aggTrade-btcusdt-2021-03-19.json")
    assert (u.pair, u.price, u.order_key, u.event_ms) == (
        "BTC/USD",
        "58942.01000000",
        640283266,
        1616176861895,
    )


def test_real_old_shape_trade_frame() -> None:
    """A pre-2024 trade frame (with b/a order ids) still parses: price p, id t."""
    u = _one("trade", "real/ws-trade-ethusdt-2021-12-12.json")
    assert (u.pair, u.price, u.order_key, u.event_ms) == (
        "ETH/USD",
        "4149.74000000",
        705291099,
        1639351062244,
    )


# -- real recordings ---------------------------------------------------------------------


def _recording(name: str) -> list[str]:
    return (REAL / name).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bookTicker", {"parsed:bookTicker": 1651, "ignored:aggTrade": 349}),
        ("aggTrade", {"parsed:aggTrade": 349, "ignored:bookTicker": 1651}),
    ],
)
def test_recording_2021_04_05_counts(kind: str, expected: dict[str, int]) -> None:
    """All 2000 frames of the 2021-04-05 recording parse: 1651 bookTicker, 349 aggTrade."""
    parser = FrameParser(PAIRS_2021_04_05, kind)
    lines = _recording("cryptofeed-binance-spot-2021-04-05.jsonl")
    prices = [p for line in lines for p in _prices(parser.parse(line, RECV_NS))]
    assert len(lines) == 2000
    assert parser.counts == Counter(expected)
    assert len(prices) == expected[f"parsed:{kind}"]
    assert {p.pair for p in prices} <= set(PAIRS_2021_04_05.pairs)


def test_recording_2021_04_05_prices_are_the_frames_strings() -> None:
    """Every bookTicker update carries exactly the frame's b/a strings and u."""
    parser = FrameParser(PAIRS_2021_04_05, "bookTicker")
    for line in _recording("cryptofeed-binance-spot-2021-04-05.jsonl"):
        data = json.loads(line)["data"]
        prices = _prices(parser.parse(line, RECV_NS))
        if "e" in data:
            assert prices == []
            continue
        (u,) = prices
        assert (u.symbol, u.price, u.bid, u.ask, u.order_key) == (
            data["s"],
            data["b"],
            data["b"],
            data["a"],
            data["u"],
        )


def test_recording_2021_10_12_counts() -> None:
    """The 265-frame 2021-10-12 recording: 84 bookTicker, 2 aggTrade, 177 depth, 2 kline."""
    lines = _recording("cryptofeed-binance-spot-2021-10-12-allstreams.jsonl")
    assert len(lines) == 265
    book = FrameParser(PAIRS_2021_10_12, "bookTicker")
    agg = FrameParser(PAIRS_2021_10_12, "aggTrade")
    n_book = sum(len(_prices(book.parse(line, RECV_NS))) for line in lines)
    n_agg = sum(len(_prices(agg.parse(line, RECV_NS))) for line in lines)
    assert (n_book, n_agg) == (84, 2)
    assert book.counts == Counter(
        {
            "parsed:bookTicker": 84,
            "ignored:aggTrade": 2,
            "ignored:depthUpdate": 177,
            "ignored:kline": 2,
        }
    )


def test_recording_symbols_outside_the_pair_map_are_counted() -> None:
    """Frames for symbols that are not configured are skipped and counted as unknown_symbol."""
    parser = FrameParser(PairMap.build(["ZIL/USDT"], ALIASES), "bookTicker")
    lines = _recording("cryptofeed-binance-spot-2021-04-05.jsonl")
    prices = [p for line in lines for p in _prices(parser.parse(line, RECV_NS))]
    assert prices and {p.pair for p in prices} == {"ZIL/USDT"}
    assert parser.counts["parsed:bookTicker"] + parser.counts["unknown_symbol"] == 1651


# -- bad input never raises --------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("", "invalid_json"),
        ("42", "unknown_event"),
        ('"text"', "unknown_event"),
        ("{}", "unknown_event"),
        ("[1]", "unknown_event"),
        ('{"e":"somethingNew","E":1}', "unknown_event"),
        ('{"e":["x"]}', "unknown_event"),
        ('{"e":"24hrTicker","E":1,"s":"BNBBTC"}', "missing_field"),
        ('{"e":"24hrTicker","E":1,"c":"1"}', "missing_field"),
        ('{"e":"24hrTicker","E":"1","s":"BNBBTC"}', "missing_field"),
        ('{"e":"24hrTicker","E":1,"s":5}', "bad_field"),
        ('{"e":"24hrTicker","E":1,"s":"XYZABC"}', "unknown_symbol"),
        ('{"e":"serverShutdown"}', "missing_field"),
        ('{"error":{"code":"x"},"id":1}', "missing_field"),
        ('{"error":"boom","id":1}', "bad_field"),
        ('{"result":null,"id":[1]}', "bad_field"),
    ],
)
def test_bad_frames_are_skipped_and_counted(frame: str | bytes, reason: str) -> None:
    """Invalid JSON, unknown events, missing or mistyped fields: a Skipped event, counted."""
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    events = parser.parse(frame, RECV_NS)
    assert len(events) == 1 and isinstance(events[0], Skipped)
    assert events[0].reason == reason
    assert parser.counts == Counter({reason: 1})


def test_ticker_with_numeric_price_is_rejected() -> None:
    """A price sent as a JSON number is a bad_field: decimals are only ever strings."""
    d = json.loads(_text("ws-ticker.json"))
    d["c"] = 0.0025
    parser = FrameParser(SAMPLE_PAIRS, "ticker")
    assert parser.parse(json.dumps(d), RECV_NS) == [Skipped("bad_field", "ticker.c")]
    d["c"], d["E"] = "0.0025", "1672515782136"
    assert parser.parse(json.dumps(d), RECV_NS) == [Skipped("bad_field", "ticker.E")]


def test_unknown_kind_is_refused() -> None:
    """Constructing a parser for an unsupported stream kind is a ValueError."""
    with pytest.raises(ValueError, match="depth"):
        FrameParser(SAMPLE_PAIRS, "depth")


# -- request building and the log gate ---------------------------------------------------


def test_stream_names_and_combined_url() -> None:
    """Stream names are lowercase symbol @ kind; the combined URL joins them with '/'."""
    pm = PairMap.build(["BTC/USD", "ETH/USD"], ALIASES)
    names = stream_names(pm, "bookTicker")
    assert names == ["btcusdt@bookTicker", "ethusdt@bookTicker"]
    assert (
        combined_url("wss://stream.binance.com:9443/", names)
        == "wss://stream.binance.com:9443/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker"
    )
    assert combined_url("ws://127.0.0.1:9443", []) == "ws://127.0.0.1:9443/stream"


def test_subscribe_message_omits_params_when_none() -> None:
    """LIST_SUBSCRIPTIONS is sent without params; an unknown method is refused."""
    assert (
        subscribe_message("LIST_SUBSCRIPTIONS", None, 3) == '{"method":"LIST_SUBSCRIPTIONS","id":3}'
    )
    with pytest.raises(ValueError):
        subscribe_message("PING", [], 1)
