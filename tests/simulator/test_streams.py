"""Stream names with no socket and no event loop: the grammar, what is fed, what is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pricectl.core.binance import (
    STREAM_TYPES,
    ControlError,
    ControlReply,
    InvalidStream,
    Stream,
    parse_stream,
)
from pricectl.simulator import control

#: One name of each documented form, and what it parses into:
#: (type, symbol, update period in ms, param, levels, UTC offset).
DOCUMENTED: dict[str, tuple[str, str | None, int, str | None, int | None, str | None]] = {
    "btcusdt@aggTrade": ("aggTrade", "BTCUSDT", 0, None, None, None),
    "btcusdt@trade": ("trade", "BTCUSDT", 0, None, None, None),
    "bnbbtc@blockTrade": ("blockTrade", "BNBBTC", 0, None, None, None),
    "btcusdt@kline_1s": ("kline", "BTCUSDT", 1000, "1s", None, None),
    "btcusdt@kline_1m": ("kline", "BTCUSDT", 2000, "1m", None, None),
    "btcusdt@kline_1M": ("kline", "BTCUSDT", 2000, "1M", None, None),
    "btcusdt@kline_1d@+08:00": ("kline", "BTCUSDT", 2000, "1d", None, "+08:00"),
    "ethusdt@miniTicker": ("miniTicker", "ETHUSDT", 1000, None, None, None),
    "ethusdt@ticker": ("ticker", "ETHUSDT", 1000, None, None, None),
    "ethusdt@ticker_1h": ("rollingTicker", "ETHUSDT", 1000, "1h", None, None),
    "ethusdt@ticker_4h": ("rollingTicker", "ETHUSDT", 1000, "4h", None, None),
    "ethusdt@ticker_1d": ("rollingTicker", "ETHUSDT", 1000, "1d", None, None),
    "bnbusdt@bookTicker": ("bookTicker", "BNBUSDT", 0, None, None, None),
    "btcusdt@avgPrice": ("avgPrice", "BTCUSDT", 1000, None, None, None),
    "btcusdt@depth5": ("partialDepth", "BTCUSDT", 1000, None, 5, None),
    "btcusdt@depth20@100ms": ("partialDepth", "BTCUSDT", 100, None, 20, None),
    "btcusdt@depth": ("depth", "BTCUSDT", 1000, None, None, None),
    "btcusdt@depth@100ms": ("depth", "BTCUSDT", 100, None, None, None),
    "bazusd@referencePrice": ("referencePrice", "BAZUSD", 1000, None, None, None),
    "!miniTicker@arr": ("allMiniTickers", None, 1000, None, None, None),
    "!ticker_4h@arr": ("allRollingTickers", None, 1000, "4h", None, None),
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_documented_names_parse(name: str) -> None:
    """Each documented stream form parses into its type, symbol, update speed and parameters."""
    kind, symbol, period, param, levels, offset = DOCUMENTED[name]
    assert parse_stream(name) == Stream(name, kind, symbol, period, param, levels, offset)


def test_the_examples_cover_every_stream_type() -> None:
    """Every type of STREAM_TYPES has a documented example above (the table is complete)."""
    assert {kind for kind, *_ in DOCUMENTED.values()} == set(STREAM_TYPES)


def test_non_ascii_symbols_parse() -> None:
    """A symbol in other letters (Binance lists some) is a symbol like any other."""
    assert parse_stream("币安人生usdt@trade").symbol == "币安人生USDT"


@pytest.mark.parametrize(
    "name",
    [
        "btcusdt",  # no @
        "btcusdt@",
        "@trade",
        "BTCUSDT@trade",  # stream symbols are lower case
        "btc-usdt@trade",
        "btcusdt@depth7",
        "btcusdt@depth5@1000ms",
        "btcusdt@depth@250ms",
        "btcusdt@kline_2m",
        "btcusdt@kline_1m@+09:00",
        "btcusdt@ticker_2h",
        "btcusdt@Trade",
        "btcusdt@trade@100ms",
        "!ticker@arr",  # retired 2026-03-26
        "!bookTicker",  # removed 2022
        "!ticker_2h@arr",
        "!miniTicker",
    ],
)
def test_undocumented_names_are_refused(name: str) -> None:
    """Names that are not documented Spot streams (or are retired) are InvalidStream."""
    with pytest.raises(InvalidStream):
        parse_stream(name)


def test_a_non_string_is_refused() -> None:
    """A number in SUBSCRIBE's params is no stream name."""
    with pytest.raises(InvalidStream):
        parse_stream(5)  # type: ignore[arg-type]


# -- what the exchange answers ---------------------------------------------------------------

LISTED = frozenset({"BTCUSDT", "ETHUSDT"})


def _answer(
    params: list[Any], held: tuple[str, ...] = (), method: str = "SUBSCRIBE", **limits: Any
) -> control.Answer:
    text = json.dumps({"method": method, "params": params, "id": 7})
    return control.answer(text, list(held), False, control.Limits(listed=LISTED, **limits))


@pytest.mark.parametrize(
    "name", ["btcusdt@depth7", "BTCUSDT@trade", "!ticker@arr", "btcusdt@kline_2m", 42]
)
def test_subscribe_of_an_invalid_name_is_the_invalid_stream_error(name: Any) -> None:
    """One invalid name refuses the whole SUBSCRIBE with code 2 "invalid stream"; nothing added."""
    got = _answer(["btcusdt@trade", name])
    assert got.reply == ControlError(7, 2, control.INVALID_STREAM)
    assert got.subscribe == ()


def test_unsubscribe_of_an_invalid_name_is_refused_too() -> None:
    """UNSUBSCRIBE checks its names the same way and drops nothing when one is invalid."""
    got = _answer(["btcusdt@trade", "btcusdt@depth7"], ("btcusdt@trade",), "UNSUBSCRIBE")
    assert got.reply == ControlError(7, 2, control.INVALID_STREAM)
    assert got.unsubscribe == ()


def test_unlisted_symbols_are_accepted_and_not_fed() -> None:
    """A well-formed stream of an unlisted symbol is accepted, as Binance does, and not fed."""
    got = _answer(["xrpxrp@trade", "btcusdt@trade"])
    assert got.reply == ControlReply(7, None)
    assert got.subscribe == ("xrpxrp@trade", "btcusdt@trade")
    limits = control.Limits(listed=LISTED)
    assert not control.is_fed(parse_stream("xrpxrp@trade"), limits)
    assert control.is_fed(parse_stream("btcusdt@trade"), limits)
    assert control.is_fed(parse_stream("!miniTicker@arr"), limits)


def test_refuse_unlisted_refuses_them() -> None:
    """With refuse_unlisted a stream of an unlisted symbol is the invalid-stream error."""
    got = _answer(["btcusdt@trade", "xrpxrp@trade"], refuse_unlisted=True)
    assert got.reply == ControlError(7, 2, control.INVALID_STREAM) and got.subscribe == ()
    assert _answer(["!miniTicker@arr"], refuse_unlisted=True).reply == ControlReply(7, None)


def test_without_a_list_every_symbol_is_fed() -> None:
    """Limits with no list (a replay) feed any well-formed name."""
    assert control.is_fed(parse_stream("xrpxrp@trade"), control.Limits())


def test_hundreds_of_streams_in_one_message() -> None:
    """One SUBSCRIBE may carry up to the whole cap (no per-message bound); one more is code 4."""
    names = [f"sym{i}usdt@trade" for i in range(1024)]
    fits = _answer(names)
    assert fits.reply == ControlReply(7, None) and len(fits.subscribe) == 1024
    over = _answer(names[:1000], held=(*names[1000:], "btcusdt@trade"))
    assert over.reply == ControlError(7, 4, "Too many subscriptions") and over.subscribe == ()
    listed = control.answer(
        '{"method":"LIST_SUBSCRIPTIONS","id":8}', names, False, control.Limits()
    )
    assert listed.reply == ControlReply(8, names)


# -- the handshake -----------------------------------------------------------------------------


def test_handshake_url_length_is_checked_first() -> None:
    """A target over max_url_length is 414 whatever it names; at the limit it passes."""
    limits = control.Limits(max_url_length=40, max_streams=1)
    at_limit = "/ws/" + "a" * 30 + "@trade"
    assert len(at_limit) == 40
    assert control.refuse_handshake(at_limit, [at_limit[4:]], limits) is None
    over = control.refuse_handshake(at_limit + "/x@trade", ["a@trade", "x@trade"], limits)
    assert over is not None and over.status == 414


def test_handshake_with_too_many_streams_is_400() -> None:
    """More than max_streams distinct names in the URL is 400; a name twice counts once."""
    limits = control.Limits(max_streams=2)
    names = ["btcusdt@trade", "ethusdt@trade", "btcusdt@trade"]
    assert control.refuse_handshake("/stream?streams=...", names, limits) is None
    refusal = control.refuse_handshake("/stream", [*names, "bnbusdt@trade"], limits)
    assert refusal is not None and refusal.status == 400
    assert refusal.body == {"code": -1, "msg": "too many streams: max 2"}


def test_handshake_with_an_invalid_stream_is_400_naming_it() -> None:
    """An invalid name in the URL is 400 naming it; an unlisted symbol only with refuse_unlisted."""
    limits = control.Limits(listed=LISTED)
    refusal = control.refuse_handshake("/ws/x", ["btcusdt@trade", "btcusdt@depth7"], limits)
    assert refusal is not None and refusal.status == 400
    assert refusal.body["code"] == 2 and refusal.body["msg"].endswith("btcusdt@depth7")
    assert control.refuse_handshake("/ws/x", ["xrpxrp@trade"], limits) is None
    strict = control.Limits(listed=LISTED, refuse_unlisted=True)
    refused = control.refuse_handshake("/ws/x", ["xrpxrp@trade"], strict)
    assert refused is not None and refused.status == 400


def test_default_url_limit_follows_the_observed_one() -> None:
    """The default limit is the longest URL seen accepted (8,003) less wss://stream.binance.com:9443."""
    longest_accepted = 8004 - 1
    assert len("wss://stream.binance.com:9443") + control.MAX_URL_LENGTH == longest_accepted
    assert control.Limits().max_url_length == control.MAX_URL_LENGTH
