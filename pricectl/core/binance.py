"""Binance Spot WebSocket frames -> price updates and control events, with no I/O.

One text frame goes in (:meth:`FrameParser.parse`), a list of events comes out:

* :class:`PriceEvent` — an update (:class:`~pricectl.core.ticks.PriceUpdate`) for a
  configured pair, unstamped (``epoch``/``seq``/``gseq`` are 0: ingest stamps them);
* :class:`ControlReply` / :class:`ControlError` — answers to SUBSCRIBE & co., keyed by ``id``;
* :class:`ServerShutdown` — the exchange is about to close the connection;
* :class:`Skipped` — a frame (or array element) that produced nothing, with the reason.

Every outcome is also counted in :attr:`FrameParser.counts` (a ``Counter``), so a
feed that sends garbage is visible in metrics and never crashes the reader. Keys:

===========================  =====================================================
``parsed:<kind>``            a price update was produced (``parsed:ticker``)
``ignored:<event>``          a known event this parser does not turn into prices:
                             ``depthUpdate``, ``kline``, ``avgPrice``, ``1hTicker``,
                             or another price kind than the configured one
                             (``ignored:aggTrade`` on a ``bookTicker`` parser)
``unknown_symbol``           a price event for a symbol not in the :class:`PairMap`
``invalid_json``             not JSON at all
``unknown_event``            JSON, but no known shape
``missing_field``            a known event without a field we need
``bad_field``                a field of the wrong JSON type (a price that is a number)
``control`` / ``shutdown``   control replies/errors, ``serverShutdown``
===========================  =====================================================

Why only one price kind per parser: ingest de-duplicates per pair on
``order_key`` (event time, book update id or trade id). Those keys live in different
number spaces, so mixing ``bookTicker`` and ``aggTrade`` updates of one pair would make
the de-duplication drop good updates. Frames of the other kinds are ignored and counted.

Stream names go the other way: :func:`parse_stream` says what a name such as
``btcusdt@kline_1m`` denotes (a :class:`Stream`) or why it denotes nothing
(:class:`InvalidStream`), so a client checks names before it subscribes and the local
exchange refuses what it would never feed.

Decimal strings are carried exactly as received (never parsed into floats, never
re-rounded): ``"43250.12000000"`` stays ``"43250.12000000"``. Times are assumed to be
milliseconds (the default; ``timeUnit=MICROSECOND`` is not used by pricectl).

Protocol: Binance's WebSocket Streams documentation
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams), as
summed up for this code in docs/binance.md: §1 (raw/combined), §2 (control messages),
§3 (``serverShutdown``), §4 (payloads).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pricectl.core.pairs import PairMap
from pricectl.core.ticks import PriceUpdate

__all__ = [
    "CONTROL_METHODS",
    "DEPTH_LEVELS",
    "IGNORED_EVENTS",
    "KINDS",
    "KLINE_INTERVALS",
    "STREAM_TYPES",
    "TICKER_WINDOWS",
    "ControlError",
    "ControlReply",
    "Event",
    "FrameParser",
    "InvalidStream",
    "PriceEvent",
    "ServerShutdown",
    "Skipped",
    "Stream",
    "combined_url",
    "parse_stream",
    "stream_names",
    "subscribe_message",
]

#: The stream kinds pricectl can turn into prices (``exchange.stream`` in the config).
KINDS = ("ticker", "miniTicker", "bookTicker", "aggTrade", "trade")

#: The five live control methods (docs/binance.md §2).
CONTROL_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")

#: Known event types that carry no price for pricectl; counted as ``ignored:<e>``.
IGNORED_EVENTS = frozenset(
    {
        "depthUpdate",
        "kline",
        "avgPrice",
        "1hTicker",
        "4hTicker",
        "1dTicker",
        "outboundAccountPosition",
        "balanceUpdate",
        "executionReport",
        "listStatus",
    }
)

# ``e`` value of each kind; spot ``bookTicker`` has no ``e`` (docs/binance.md §4).
_EVENT_KIND = {
    "24hrTicker": "ticker",
    "24hrMiniTicker": "miniTicker",
    "aggTrade": "aggTrade",
    "trade": "trade",
}


@dataclass(frozen=True, slots=True)
class PriceEvent:
    """A price update of a configured pair, not yet stamped by ingest."""

    update: PriceUpdate


@dataclass(frozen=True, slots=True)
class ControlReply:
    """``{"result": <result>, "id": <id>}``: ``result`` is ``None`` for a successful
    SUBSCRIBE/UNSUBSCRIBE/SET_PROPERTY, a list for LIST_SUBSCRIPTIONS, a value for
    GET_PROPERTY."""

    id: int | str | None
    result: Any


@dataclass(frozen=True, slots=True)
class ControlError:
    """``{"error": {"code": 2, "msg": "..."}, "id": 1}`` (codes 0-3, docs/binance.md §2).

    Match on ``code``, never on ``msg``: the messages vary between servers.
    """

    id: int | str | None
    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """``{"e":"serverShutdown","E":1770123456789}``: reconnect now (make-before-break)."""

    event_ms: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A frame or array element that produced nothing; ``reason`` is its counter key."""

    reason: str
    detail: str = ""


Event = PriceEvent | ControlReply | ControlError | ServerShutdown | Skipped


class _Bad(Exception):
    """Internal: a field is missing (``missing_field``) or has the wrong type (``bad_field``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _s(d: dict[str, Any], key: str) -> str:
    """A decimal-string field, exactly as received."""
    try:
        v = d[key]
    except KeyError:
        raise _Bad("missing_field", key) from None
    if type(v) is not str:
        raise _Bad("bad_field", key)
    return v


def _i(d: dict[str, Any], key: str) -> int:
    """An integer field (ids and times)."""
    try:
        v = d[key]
    except KeyError:
        raise _Bad("missing_field", key) from None
    if type(v) is not int:
        raise _Bad("bad_field", key)
    return v


class FrameParser:
    """Parses text frames of one stream kind for the pairs of a :class:`PairMap`.

    Not thread-safe (it keeps counters); one per connection or per reader is the
    intended use. ``parse`` never raises on frame content.
    """

    __slots__ = ("_handler", "_symbols", "counts", "kind")

    def __init__(self, pair_map: PairMap, kind: str = "ticker") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown stream kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind = kind
        #: Outcome counters (see the module docstring for the keys).
        self.counts: Counter[str] = Counter()
        self._symbols: dict[str, str] = dict(zip(pair_map.symbols, pair_map.pairs, strict=True))
        handlers: dict[str, Callable[[dict[str, Any], str, int], PriceUpdate]] = {
            "ticker": self._ticker,
            "miniTicker": self._mini_ticker,
            "bookTicker": self._book_ticker,
            "aggTrade": self._agg_trade,
            "trade": self._trade,
        }
        self._handler = handlers[kind]

    # -- entry point -------------------------------------------------------------------

    def parse(self, text: str | bytes, recv_ns: int) -> list[Event]:
        """Events carried by one frame received at wall-clock ``recv_ns`` (ns since epoch).

        Raw frames (``{"e":...}``), combined frames (``{"stream":..,"data":..}``) and
        arrays (``!miniTicker@arr``, the retired ``!ticker@arr``) are all accepted.
        """
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return [self._skip("invalid_json", _preview(text))]
        if type(obj) is dict and "data" in obj and "stream" in obj:
            obj = obj["data"]
        if type(obj) is dict:
            return [self._one(obj, recv_ns)]
        if type(obj) is list:
            out: list[Event] = []
            for item in obj:
                if type(item) is dict:
                    out.append(self._one(item, recv_ns))
                else:
                    out.append(self._skip("unknown_event", _preview(repr(item))))
            return out
        return [self._skip("unknown_event", _preview(text))]

    # -- dispatch ----------------------------------------------------------------------

    def _one(self, d: dict[str, Any], recv_ns: int) -> Event:
        e = d.get("e")
        kind: str | None
        if e is None:
            if "u" in d and "A" in d:
                kind = "bookTicker"
            elif "id" in d and ("result" in d or "error" in d or "code" in d):
                return self._control(d)
            else:
                return self._skip("unknown_event", _preview(repr(d)))
        else:
            if type(e) is not str:
                return self._skip("unknown_event", _preview(repr(e)))
            kind = _EVENT_KIND.get(e)
            if kind is None:
                if e == "serverShutdown":
                    return self._shutdown(d)
                if e in IGNORED_EVENTS:
                    return self._skip(f"ignored:{e}")
                return self._skip("unknown_event", _preview(repr(e)))
        if kind != self.kind:
            # A known price kind, but not the configured one (see the module docstring).
            return self._skip(f"ignored:{kind}")
        symbol = d.get("s")
        if type(symbol) is not str:
            return self._skip("missing_field" if symbol is None else "bad_field", "s")
        pair = self._symbols.get(symbol)
        if pair is None:
            return self._skip("unknown_symbol", symbol)
        try:
            update = self._handler(d, pair, recv_ns)
        except _Bad as bad:
            return self._skip(bad.reason, f"{kind}.{bad.detail}")
        self.counts["parsed:" + kind] += 1
        return PriceEvent(update)

    def _skip(self, reason: str, detail: str = "") -> Skipped:
        self.counts[reason] += 1
        return Skipped(reason, detail)

    # -- handlers: one per kind, each with its wire sample ----------------------------

    def _ticker(self, d: dict[str, Any], pair: str, recv_ns: int) -> PriceUpdate:
        """``<symbol>@ticker`` (23 fields, every 1000 ms; docs/binance.md §4)::

            {"e":"24hrTicker","E":1653812650349,"s":"ETHUSDT","p":"28.23000000",
             "P":"1.600","w":"1781.16275609","x":"1764.61000000","c":"1792.84000000",
             "Q":"0.55720000","b":"1792.83000000","B":"1.62740000","a":"1792.84000000",
             "A":"20.29140000","o":"1764.61000000","h":"1808.98000000",
             "l":"1748.94000000","v":"471703.53110000","q":"840180761.51358100",
             "O":1653726250344,"C":1653812650344,"F":841094172,"L":841646650,"n":552479}

        price=c (last), bid=b, ask=a, open=o, high=h, low=l, change_pct=P (the
        exchange's own percentage, 3 decimals), volume=v (base asset),
        event_ms=E; order_key=E (one event per second, so the time orders them).
        """
        # The hot path (one per pair per second, every pair): fetch the fields in one
        # go and only look for the culprit when something is wrong.
        try:
            event_ms, c, b, a = d["E"], d["c"], d["b"], d["a"]
            o, h, lo, pct, v = d["o"], d["h"], d["l"], d["P"], d["v"]
        except KeyError as exc:
            raise _Bad("missing_field", str(exc.args[0])) from None
        if not (
            type(event_ms) is int
            and type(c) is str
            and type(b) is str
            and type(a) is str
            and type(o) is str
            and type(h) is str
            and type(lo) is str
            and type(pct) is str
            and type(v) is str
        ):
            _i(d, "E")
            for key in "cbaohlPv":
                _s(d, key)
        return PriceUpdate(
            pair=pair,
            symbol=d["s"],
            price=c,
            bid=b,
            ask=a,
            open=o,
            high=h,
            low=lo,
            change_pct=pct,
            volume=v,
            event_ms=event_ms,
            ingest_ns=recv_ns,
            order_key=event_ms,
        )

    def _mini_ticker(self, d: dict[str, Any], pair: str, recv_ns: int) -> PriceUpdate:
        """``<symbol>@miniTicker`` or an element of ``!miniTicker@arr`` (9 fields; §4)::

            {"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025",
             "o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18"}

        price=c, open=o, high=h, low=l, volume=v, event_ms=order_key=E. No bid/ask
        and no change: ``change_pct`` stays ``None`` rather than being computed,
        because computing it would mean decimal arithmetic and re-rounding the
        exchange's figures.
        """
        event_ms = _i(d, "E")
        return PriceUpdate(
            pair=pair,
            symbol=d["s"],
            price=_s(d, "c"),
            open=_s(d, "o"),
            high=_s(d, "h"),
            low=_s(d, "l"),
            volume=_s(d, "v"),
            event_ms=event_ms,
            ingest_ns=recv_ns,
            order_key=event_ms,
        )

    def _book_ticker(self, d: dict[str, Any], pair: str, recv_ns: int) -> PriceUpdate:
        """``<symbol>@bookTicker`` (6 fields, real time; §4)::

            {"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000",
             "a":"25.36520000","A":"40.66000000"}

        Spot bookTicker has **no event time** (no ``e``, ``E`` or ``T``), so
        ``event_ms`` is the local receive time (``recv_ns`` in ms) and the ordering
        key is ``u``, the order-book update id. ``price`` is the best bid ``b``: a
        price must be one of the exchange's strings, and a mid-price would need
        arithmetic and re-rounding. ``bid=b``, ``ask=a``; no open/high/low/volume.
        """
        bid = _s(d, "b")
        return PriceUpdate(
            pair=pair,
            symbol=d["s"],
            price=bid,
            bid=bid,
            ask=_s(d, "a"),
            event_ms=recv_ns // 1_000_000,
            ingest_ns=recv_ns,
            order_key=_i(d, "u"),
        )

    def _agg_trade(self, d: dict[str, Any], pair: str, recv_ns: int) -> PriceUpdate:
        """``<symbol>@aggTrade`` (11 fields, real time; §4)::

            {"e":"aggTrade","E":1616176861895,"s":"BTCUSDT","a":640283266,
             "p":"58942.01000000","q":"0.00035600","f":716849523,"l":716849523,
             "T":1616176861893,"m":false,"M":true}

        price=p, event_ms=E, order_key=a (the aggregate trade id).
        """
        return PriceUpdate(
            pair=pair,
            symbol=d["s"],
            price=_s(d, "p"),
            event_ms=_i(d, "E"),
            ingest_ns=recv_ns,
            order_key=_i(d, "a"),
        )

    def _trade(self, d: dict[str, Any], pair: str, recv_ns: int) -> PriceUpdate:
        """``<symbol>@trade`` (9 fields since 2024-06-18, older captures also have
        ``b``/``a``; §4)::

            {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001",
             "q":"100","T":1672515782136,"m":true,"M":true}

        price=p, event_ms=E, order_key=t (the trade id).
        """
        return PriceUpdate(
            pair=pair,
            symbol=d["s"],
            price=_s(d, "p"),
            event_ms=_i(d, "E"),
            ingest_ns=recv_ns,
            order_key=_i(d, "t"),
        )

    # -- control and shutdown ----------------------------------------------------------

    def _control(self, d: dict[str, Any]) -> Event:
        """Replies to control requests (§2), never wrapped in the combined envelope::

        {"result":null,"id":1}
        {"result":["btcusdt@aggTrade"],"id":3}
        {"error":{"code":2,"msg":"Invalid request: too many parameters"},"id":1}
        {"code":0,"msg":"Unknown property","id":5}       (the doc's flat form)
        """
        rid = d["id"]
        if rid is not None and type(rid) not in (int, str):
            return self._skip("bad_field", "id")
        if "result" in d:
            self.counts["control"] += 1
            return ControlReply(rid, d["result"])
        err = d.get("error", d)
        if type(err) is not dict:
            return self._skip("bad_field", "error")
        code, msg = err.get("code"), err.get("msg")
        if type(code) is not int or type(msg) is not str:
            return self._skip("missing_field" if code is None or msg is None else "bad_field")
        self.counts["control"] += 1
        return ControlError(rid, code, msg)

    def _shutdown(self, d: dict[str, Any]) -> Event:
        """``{"e":"serverShutdown","E":1770123456789}`` (raw), or inside
        ``{"stream":"!serverShutdown","data":...}`` (combined); §3."""
        when = d.get("E")
        if type(when) is not int:
            return self._skip("missing_field" if when is None else "bad_field", "E")
        self.counts["shutdown"] += 1
        return ServerShutdown(when)


def _preview(text: str | bytes, limit: int = 80) -> str:
    """The start of a bad frame, for a log line that cannot flood the log."""
    if isinstance(text, bytes):
        text = text[:limit].decode("utf-8", "replace")
    return text[:limit]


# -- building requests -----------------------------------------------------------------


def stream_names(pair_map: PairMap, kind: str) -> list[str]:
    """``["btcusdt@ticker", "ethusdt@ticker"]``: lowercase symbol, kind as documented
    (§1)."""
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r}; expected one of {', '.join(KINDS)}")
    return [pair_map.stream_for(p, kind) for p in pair_map.pairs]


def combined_url(base: str, names: Sequence[str]) -> str:
    """``wss://host:9443`` + names -> ``wss://host:9443/stream?streams=a/b`` (§1).

    With no names it is the bare ``/stream`` URL, to be followed by ``SUBSCRIBE``.
    """
    root = base.rstrip("/")
    if not names:
        return root + "/stream"
    return root + "/stream?streams=" + "/".join(names)


def subscribe_message(
    method: str, params: Iterable[Any] | None = None, id: int | str | None = 1
) -> str:
    """A compact control request, e.g.
    ``{"method":"SUBSCRIBE","params":["btcusdt@ticker"],"id":1}`` (§2).

    ``params`` is left out when ``None`` (LIST_SUBSCRIPTIONS takes none).
    """
    if method not in CONTROL_METHODS:
        raise ValueError(f"unknown control method {method!r}")
    msg: dict[str, Any] = {"method": method}
    if params is not None:
        msg["params"] = list(params)
    msg["id"] = id
    return json.dumps(msg, separators=(",", ":"))


# -- stream names ----------------------------------------------------------------------

#: Kline/candlestick intervals, in the documented order ("Kline/Candlestick chart
#: intervals" in the WebSocket Streams documentation).
KLINE_INTERVALS = (
    "1s",
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
)

#: Window sizes of the rolling-window ticker streams (``<symbol>@ticker_<w>``).
TICKER_WINDOWS = ("1h", "4h", "1d")

#: Levels of the partial book depth streams (``<symbol>@depth<levels>``).
DEPTH_LEVELS = (5, 10, 20)

#: Every stream type of the Spot WebSocket Streams documentation, by the name
#: :attr:`Stream.type` gives it: the per-symbol ones, then the two market-wide arrays.
STREAM_TYPES = (
    "aggTrade",
    "trade",
    "blockTrade",
    "kline",
    "miniTicker",
    "ticker",
    "rollingTicker",
    "bookTicker",
    "avgPrice",
    "partialDepth",
    "depth",
    "referencePrice",
    "allMiniTickers",
    "allRollingTickers",
)

# Suffix -> (type, update period in ms; 0 = real time) for the fixed suffixes.
_FIXED_SUFFIXES = {
    "aggTrade": ("aggTrade", 0),
    "trade": ("trade", 0),
    "blockTrade": ("blockTrade", 0),
    "bookTicker": ("bookTicker", 0),
    "miniTicker": ("miniTicker", 1000),
    "ticker": ("ticker", 1000),
    "avgPrice": ("avgPrice", 1000),
    "referencePrice": ("referencePrice", 1000),
    "depth": ("depth", 1000),
    "depth@100ms": ("depth", 100),
}
#: The one timezone offset kline streams take (``<symbol>@kline_<i>@+08:00``).
_KLINE_OFFSET = "+08:00"


class InvalidStream(ValueError):
    """A name that is not a stream of Binance's Spot WebSocket Streams documentation."""


@dataclass(frozen=True, slots=True)
class Stream:
    """One parsed stream name: what it carries, for which symbol, how often.

    ``symbol`` is the exchange symbol in upper case (``"BTCUSDT"`` for
    ``btcusdt@trade``), ``None`` for a market-wide stream (``!miniTicker@arr``).
    ``param`` is the kline interval or the ticker window (``"1m"``, ``"4h"``),
    ``levels`` the partial depth's 5, 10 or 20, ``utc_offset`` ``"+08:00"`` for a
    kline stream in that timezone. ``period_ms`` is the documented update speed
    (0 for real-time streams).
    """

    name: str
    type: str
    symbol: str | None
    period_ms: int
    param: str | None = None
    levels: int | None = None
    utc_offset: str | None = None


def parse_stream(name: str) -> Stream:
    """The stream a name denotes, or :class:`InvalidStream` saying why it is none.

    The grammar is the "Detailed Stream information" of Binance's WebSocket Streams
    documentation (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):
    ``<symbol>@<type>`` with the symbol in lower case, and the market-wide
    ``!miniTicker@arr`` and ``!ticker_<w>@arr``. The retired ``!ticker@arr`` and
    ``!bookTicker`` are refused, and so is a symbol with capitals: the documentation
    says stream symbols are lower case, and such a name delivers nothing.

    Pure, so a client can check names before it subscribes::

        parse_stream("btcusdt@kline_1m")   # Stream(type="kline", symbol="BTCUSDT", param="1m", ...)
        parse_stream("btcusdt@depth7")     # InvalidStream
    """
    if not isinstance(name, str):
        raise InvalidStream(f"a stream name is a string, got {type(name).__name__}")
    if name == "!miniTicker@arr":
        return Stream(name, "allMiniTickers", None, 1000)
    if name.startswith("!"):
        window = name.removeprefix("!ticker_").removesuffix("@arr")
        if name == f"!ticker_{window}@arr" and window in TICKER_WINDOWS:
            return Stream(name, "allRollingTickers", None, 1000, param=window)
        raise InvalidStream(f"{name!r} is not a market-wide stream (retired or unknown)")
    sym, at, suffix = name.partition("@")
    if not at or not sym or not suffix:
        raise InvalidStream(f"{name!r} is not <symbol>@<type>")
    if not sym.isalnum():
        raise InvalidStream(f"{name!r}: a symbol is letters and digits")
    if sym != sym.lower():
        raise InvalidStream(f"{name!r}: stream symbols are lower case")
    symbol = sym.upper()
    fixed = _FIXED_SUFFIXES.get(suffix)
    if fixed is not None:
        return Stream(name, fixed[0], symbol, fixed[1])
    if suffix.startswith("ticker_"):
        window = suffix.removeprefix("ticker_")
        if window in TICKER_WINDOWS:
            return Stream(name, "rollingTicker", symbol, 1000, param=window)
    elif suffix.startswith("kline_"):
        interval, _, offset = suffix.removeprefix("kline_").partition("@")
        if interval in KLINE_INTERVALS and offset in ("", _KLINE_OFFSET):
            return Stream(
                name,
                "kline",
                symbol,
                1000 if interval == "1s" else 2000,
                param=interval,
                utc_offset=offset or None,
            )
    elif suffix.startswith("depth"):
        levels, _, speed = suffix.removeprefix("depth").partition("@")
        if levels in ("5", "10", "20") and speed in ("", "100ms"):
            return Stream(name, "partialDepth", symbol, 100 if speed else 1000, levels=int(levels))
    raise InvalidStream(f"{name!r}: unknown stream type {suffix!r}")
