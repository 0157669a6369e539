"""The control-message answers, with no socket and no event loop: documented replies and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pricectl.core.binance import ControlError, ControlReply, FrameParser
from pricectl.core.pairs import PairMap
from pricectl.simulator import control

DATA = Path(__file__).resolve().parent.parent / "data" / "binance"
MESSAGES = json.loads((DATA / "ws-control-messages.json").read_text())
ERRORS = json.loads((DATA / "ws-control-errors.json").read_text())

#: The documented error messages, by the cause the table gives.
DOC_MSG = {e["when"]: e["doc_error"]["msg"] for e in ERRORS["doc_errors"]}


def _answer(
    request: dict[str, Any] | str,
    streams: tuple[str, ...] = (),
    combined: bool = False,
    max_streams: int = 1024,
) -> control.Answer:
    text = request if isinstance(request, str) else json.dumps(request, separators=(",", ":"))
    return control.answer(text, list(streams), combined, control.Limits(max_streams=max_streams))


def _wire(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- the documented replies ----------------------------------------------------------------


def test_subscribe_replies_null_and_adds_the_new_streams() -> None:
    """SUBSCRIBE (the documented request) answers {"result":null,"id":1} and adds both."""
    doc = MESSAGES["SUBSCRIBE"]
    got = _answer(doc["request"])
    assert control.encode(got.reply) == _wire(doc["response"])
    assert got.subscribe == ("btcusdt@aggTrade", "btcusdt@depth")
    assert (got.unsubscribe, got.combined) == ((), None)


def test_subscribe_skips_held_and_repeated_streams() -> None:
    """Streams already held or named twice are added once, in request order."""
    got = _answer(
        {"method": "SUBSCRIBE", "params": ["b@trade", "a@trade", "b@trade"], "id": 1},
        streams=("a@trade",),
    )
    assert got.subscribe == ("b@trade",)


def test_unsubscribe_replies_null_and_drops_only_held_streams() -> None:
    """UNSUBSCRIBE (the documented request) answers {"result":null,"id":312}; unheld: no-op."""
    doc = MESSAGES["UNSUBSCRIBE"]
    got = _answer(doc["request"], streams=("btcusdt@aggTrade", "btcusdt@depth"))
    assert control.encode(got.reply) == _wire(doc["response"])
    assert got.unsubscribe == ("btcusdt@depth",) and got.subscribe == ()
    assert _answer(doc["request"], streams=("btcusdt@aggTrade",)).unsubscribe == ()


def test_list_subscriptions_lists_the_streams() -> None:
    """LIST_SUBSCRIPTIONS (the documented request) answers the held streams in order."""
    doc = MESSAGES["LIST_SUBSCRIPTIONS"]
    got = _answer(doc["request"], streams=("btcusdt@aggTrade",))
    assert control.encode(got.reply) == _wire(doc["response"])
    assert (got.subscribe, got.unsubscribe, got.combined) == ((), (), None)


def test_set_property_combined_sets_it() -> None:
    """SET_PROPERTY combined true (the documented request) answers null and sets combined."""
    doc = MESSAGES["SET_PROPERTY"]
    got = _answer(doc["request"])
    assert control.encode(got.reply) == _wire(doc["response"])
    assert got.combined is True


def test_get_property_combined_reports_it() -> None:
    """GET_PROPERTY combined (the documented request) answers the connection's value."""
    doc = MESSAGES["GET_PROPERTY"]
    assert control.encode(_answer(doc["request"], combined=True).reply) == _wire(doc["response"])
    assert _answer(doc["request"], combined=False).reply == ControlReply(2, False)


def test_ids_echoed_as_given() -> None:
    """A string id and a negative 64-bit id come back as they were sent."""
    listed = {"method": "LIST_SUBSCRIPTIONS"}
    assert _answer({**listed, "id": "abc123"}).reply == ControlReply("abc123", [])
    assert _answer({**listed, "id": -(2**63)}).reply == ControlReply(-(2**63), [])
    assert _answer({**listed, "id": None}).reply == ControlReply(None, [])


def test_replies_read_back_through_pricectls_parser() -> None:
    """What the simulator encodes, pricectl's frame parser reads as the same reply."""
    parser = FrameParser(PairMap.build(["BTC/USD"], {"USD": "USDT"}), "ticker")
    for reply in (
        _answer(MESSAGES["LIST_SUBSCRIPTIONS"]["request"], streams=("btcusdt@aggTrade",)).reply,
        _answer({"method": "GET_PROPERTY", "params": ["colour"], "id": 9}).reply,
    ):
        assert parser.parse(control.encode(reply), 0) == [reply]


# -- the documented errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "when", "code", "rid"),
    [
        (
            {"method": "SET_PROPERTY", "params": ["colour", True], "id": 5},
            "SET_PROPERTY/GET_PROPERTY with an unknown property name",
            0,
            5,
        ),
        (
            {"method": "GET_PROPERTY", "params": ["colour"], "id": 5},
            "SET_PROPERTY/GET_PROPERTY with an unknown property name",
            0,
            5,
        ),
        (
            {"method": "SET_PROPERTY", "params": ["combined", 1], "id": 10},
            "SET_PROPERTY value not true/false",
            1,
            10,
        ),
        (
            {"method": "SET_PROPERTY", "params": ["combined"], "id": 10},
            "SET_PROPERTY value not true/false",
            1,
            10,
        ),
        (
            {"method": "SET_PROPERTY", "params": [1, True], "id": 11},
            "property name missing or invalid",
            2,
            11,
        ),
        (
            {"method": "GET_PROPERTY", "params": [], "id": 12},
            "property name missing or invalid",
            2,
            12,
        ),
        (
            {"method": "SUBSCRIBE", "params": []},
            "id missing or of unsupported type",
            2,
            None,
        ),
        (
            {"method": "SUBSCRIBE", "params": [], "id": True},
            "id missing or of unsupported type",
            2,
            None,
        ),
        (
            {"method": "LIST_SUBSCRIPTIONS", "id": "x" * 37},
            "id missing or of unsupported type",
            2,
            None,
        ),
        (
            {"method": "LIST_SUBSCRIPTIONS", "id": 2**63},
            "id missing or of unsupported type",
            2,
            None,
        ),
        (
            {"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 8},
            "unnecessary parameters",
            2,
            8,
        ),
        (
            {"method": "SET_PROPERTY", "params": ["combined", True, 1], "id": 13},
            "unnecessary parameters",
            2,
            13,
        ),
        (
            {"method": "GET_PROPERTY", "params": ["combined", True], "id": 13},
            "unnecessary parameters",
            2,
            13,
        ),
    ],
)
def test_documented_errors(request_: dict[str, Any], when: str, code: int, rid: Any) -> None:
    """Each documented cause gets the documented code and message, with the id or null."""
    got = _answer(request_, streams=("btcusdt@trade",), combined=True)
    assert got.reply == ControlError(rid, code, DOC_MSG[when])
    assert (got.subscribe, got.unsubscribe, got.combined) == ((), (), None)
    assert json.loads(control.encode(got.reply)) == {
        "error": {"code": code, "msg": DOC_MSG[when]},
        "id": rid,
    }


def test_unknown_method_names_it_and_its_column() -> None:
    """An unknown method is the documented code 2, its name in backticks, column 28 here."""
    text = '{"id":12,"method":"UNKNOWNX"}'
    want = DOC_MSG["unknown method"].replace("%s", "`UNKNOWNX`")
    assert _answer(text).reply == ControlError(12, 2, want)


def test_missing_method_names_the_end_column() -> None:
    """No method is the documented code 2 at the last column: 73 for a 73-character request."""
    text = '{"params":["btcusdt@aggTrade","btcusdt@depth","ethusdt@aggTrade"],"id":1}'
    assert len(text) == 73
    assert _answer(text).reply == ControlError(1, 2, DOC_MSG["no method field"])


def test_malformed_json_is_code_3_with_its_position() -> None:
    """Text that is not JSON is code 3 with the line and column, and a null id."""
    template = DOC_MSG["malformed JSON"]
    assert _answer("{not json").reply == ControlError(None, 3, template % (1, 2))
    assert _answer('{"id":1,\n "method":}').reply == ControlError(None, 3, template % (2, 11))


def test_invalid_stream_is_the_observed_wire_error() -> None:
    """A stream name without @ gets the observed {"error":{code 2, invalid stream},"id":1}."""
    got = _answer({"method": "SUBSCRIBE", "params": ["btcusdt"], "id": 1})
    assert control.encode(got.reply) == _wire(ERRORS["wire_examples"][1])
    assert got.subscribe == ()


def test_subscriptions_past_the_cap_are_code_4_and_change_nothing() -> None:
    """SUBSCRIBE that would pass max_streams is code 4; held streams do not count twice."""
    held = ("a@trade", "b@trade")
    over = _answer(
        {"method": "SUBSCRIBE", "params": ["c@trade", "d@trade"], "id": 1}, held, False, 3
    )
    assert over.reply == ControlError(1, 4, "Too many subscriptions") and over.subscribe == ()
    fits = _answer(
        {"method": "SUBSCRIBE", "params": ["a@trade", "c@trade"], "id": 2}, held, False, 3
    )
    assert fits.reply == ControlReply(2, None) and fits.subscribe == ("c@trade",)


@pytest.mark.parametrize(
    ("text", "msg", "rid"),
    [
        ("[1,2]", "Invalid request: expected a JSON object", None),
        (
            '{"method":"SUBSCRIBE","params":"btcusdt@trade","id":4}',
            "Invalid request: params must be an array",
            4,
        ),
    ],
)
def test_malformed_requests_are_code_2(text: str, msg: str, rid: Any) -> None:
    """A request that is not an object, or whose params are not an array, is code 2."""
    assert _answer(text).reply == ControlError(rid, 2, msg)


# -- stream names in URLs ------------------------------------------------------------------


def test_url_streams_and_envelope_follow_the_path() -> None:
    """/stream paths are combined, /ws raw; the stream list drops empty parts."""
    assert control.is_combined_path("/stream") and control.is_combined_path("/stream?streams=a")
    assert not control.is_combined_path("/ws/btcusdt@trade")
    assert control.url_streams("btcusdt@trade//ethusdt@ticker/") == [
        "btcusdt@trade",
        "ethusdt@ticker",
    ]
    assert control.url_streams("") == []


def test_stream_symbol_reads_lowercase_symbols_only() -> None:
    """A stream names its symbol in lower case; !miniTicker@arr names none."""
    assert control.stream_symbol("btcusdt@trade") == "BTCUSDT"
    assert control.stream_symbol("ethusdt@depth@100ms") == "ETHUSDT"
    assert control.stream_symbol("!miniTicker@arr") is None
    assert control.stream_symbol("BTCUSDT@trade") is None
