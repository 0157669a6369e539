"""What the local exchange answers to a control message, and which streams a URL names.

Pure functions, no I/O: :func:`answer` takes the text of one client frame and the
connection's state (its streams, its ``combined`` property) and returns an
:class:`Answer`, the reply to send plus the changes to make. The WebSocket side
(:mod:`pricectl.simulator.ws`) applies the changes and sends :func:`encode` of the reply.

The five methods and their replies are those of Binance's WebSocket Streams
documentation, "Live Subscribing/Unsubscribing to streams"
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams)::

    {"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}  ->  {"result":null,"id":1}
    {"method":"LIST_SUBSCRIPTIONS","id":3}          ->  {"result":["btcusdt@aggTrade"],"id":3}
    {"method":"GET_PROPERTY","params":["combined"],"id":2}       ->  {"result":false,"id":2}

Errors are the documented ones (codes 0 to 3) in the wrapped form clients observe,
``{"error":{"code":2,"msg":"Invalid request: too many parameters"},"id":8}``, plus two
that third-party clients report: ``Invalid request: invalid stream`` (code 2) and
``Too many subscriptions`` (code 4) past the stream cap.

Which names are streams is :func:`pricectl.core.binance.parse_stream`'s grammar, the
one pricectl's client checks its own names with. What the exchange does with them
(:class:`Limits`):

* a name the grammar refuses (``btcusdt@depth7``, ``BTCUSDT@trade``, the retired
  ``!ticker@arr``) is ``Invalid request: invalid stream``: the simulator feeds every
  name it accepts, so it refuses the ones it would never feed;
* a well-formed name for a symbol the exchange does not list (``xrpxrp@trade``) is
  accepted and never fed, as Binance does (third parties report a ``{"result":null}``
  and silence for unknown symbols, on Spot and on USD-M futures); the WebSocket side
  counts such streams per connection, so a test can tell. ``refuse_unlisted`` refuses
  them instead, with the invalid-stream error;
* a SUBSCRIBE that would take a connection past ``max_streams`` is code 4 and changes
  nothing; the connection stays open (on USD-M futures a third party also saw a 1008
  close right after it; no report shows that on Spot).

SUBSCRIBE and UNSUBSCRIBE take any number of names in one message: Binance documents
no bound (what third parties observed for big frames is the WebSocket side's
``max_control_bytes``).

The handshake has its own checks (:func:`refuse_handshake`): a request target longer
than ``max_url_length`` is HTTP 414, a URL naming more than ``max_streams`` streams or
an invalid one is HTTP 400.

The method table and the reply values are :mod:`pricectl.core.binance`'s
(:data:`~pricectl.core.binance.CONTROL_METHODS`, :class:`~pricectl.core.binance.ControlReply`,
:class:`~pricectl.core.binance.ControlError`), so what the simulator sends is what
pricectl's own parser reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pricectl.core.binance import (
    CONTROL_METHODS,
    ControlError,
    ControlReply,
    InvalidStream,
    Stream,
    parse_stream,
)

__all__ = [
    "INVALID_STREAM",
    "MAX_URL_LENGTH",
    "Answer",
    "Limits",
    "Refusal",
    "answer",
    "encode",
    "is_combined_path",
    "is_fed",
    "refuse_handshake",
    "stream_symbol",
    "url_streams",
    "valid_id",
]

#: The reply's message for a name that is no stream (observed wording).
INVALID_STREAM = "Invalid request: invalid stream"

#: The longest request target (path and query, as sent) the handshake takes. Binance
#: documents no limit; unicorn-binance-websocket-api measured (2019) that URLs of 8,004
#: characters or more were refused, which for ``wss://stream.binance.com:9443`` (29
#: characters) leaves 7,974 for the path and query.
MAX_URL_LENGTH = 7974

_ID_STR = re.compile(r"^[A-Za-z0-9]{1,36}$")
#: Binance's wording, with the method list taken from the method table.
_UNKNOWN_VARIANT = (
    "Invalid request: unknown variant `{}`, expected one of "
    + ", ".join(f"`{m}`" for m in CONTROL_METHODS)
    + " at line 1 column {}"
)
_PROPERTY = "combined"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the exchange accepts: streams per connection, URL length, listed symbols.

    ``listed`` is the set of exchange symbols the exchange feeds (``None``: any symbol
    counts as listed, as in a replay); ``refuse_unlisted`` refuses a stream for any
    other symbol instead of accepting it silently.
    """

    max_streams: int = 1024
    max_url_length: int = MAX_URL_LENGTH
    listed: Collection[str] | None = None
    refuse_unlisted: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer to a WebSocket handshake instead of the upgrade."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to one control request and what it changes on the connection.

    ``subscribe`` are streams to add (new ones only, in request order), ``unsubscribe``
    streams to drop (ones the connection has), ``combined`` the new value of the
    ``combined`` property (``None``: unchanged). A refused request changes nothing.
    """

    reply: ControlReply | ControlError
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    combined: bool | None = None


def valid_id(rid: Any) -> bool:
    """A request id Binance accepts: a 64-bit signed integer, an alphanumeric string of
    at most 36 characters, or null."""
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and bool(_ID_STR.match(rid))


def _error(code: int, msg: str, rid: Any) -> Answer:
    """A refusal; the id is echoed only when it is a valid one (else null)."""
    return Answer(ControlError(rid if valid_id(rid) else None, code, msg))


def _ok(rid: Any, result: Any = None, **changes: Any) -> Answer:
    return Answer(ControlReply(rid, result), **changes)


def is_fed(stream: Stream, limits: Limits) -> bool:
    """Whether the exchange sends frames on ``stream``: market-wide, or a listed symbol's."""
    return stream.symbol is None or limits.listed is None or stream.symbol in limits.listed


def _streams(params: list[Any], limits: Limits) -> list[Stream] | None:
    """The parsed streams of SUBSCRIBE/UNSUBSCRIBE params; None if one is refused."""
    out = []
    for param in params:
        try:
            stream = parse_stream(param)
        except InvalidStream:
            return None
        if limits.refuse_unlisted and not is_fed(stream, limits):
            return None
        out.append(stream)
    return out


def answer(text: str, streams: Collection[str], combined: bool, limits: Limits) -> Answer:
    """The answer to the control frame ``text`` on a connection subscribed to ``streams``.

    ``combined`` is the connection's property of that name; ``limits`` says how many
    streams one connection may hold (1024 on Binance) and which symbols are listed.
    """
    try:
        req = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", 1)
        col = getattr(exc, "colno", 1)
        return _error(3, f"Invalid JSON: expected value at line {line} column {col}", None)
    if not isinstance(req, dict):
        return _error(2, "Invalid request: expected a JSON object", None)
    rid = req.get("id")
    if "method" not in req:
        return _error(
            2, f"Invalid request: missing field `method` at line 1 column {len(text)}", rid
        )
    if "id" not in req or not valid_id(rid):
        return _error(2, "Invalid request: request ID must be an unsigned integer", None)
    method = req["method"]
    if method not in CONTROL_METHODS:
        quoted = json.dumps(method, separators=(",", ":"))
        col = text.find(quoted) + len(quoted) if quoted in text else len(text)
        return _error(2, _UNKNOWN_VARIANT.format(method, col), rid)
    params = req.get("params", [])
    if not isinstance(params, list):
        return _error(2, "Invalid request: params must be an array", rid)
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if _streams(params, limits) is None:
            return _error(2, INVALID_STREAM, rid)
        wanted = list(dict.fromkeys(params))
        if method == "UNSUBSCRIBE":
            return _ok(rid, unsubscribe=tuple(p for p in wanted if p in streams))
        new = tuple(p for p in wanted if p not in streams)
        if len(streams) + len(new) > limits.max_streams:
            return _error(4, "Too many subscriptions", rid)
        return _ok(rid, subscribe=new)
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return _error(2, "Invalid request: too many parameters", rid)
        return _ok(rid, list(streams))
    setting = method == "SET_PROPERTY"
    if len(params) > (2 if setting else 1):
        return _error(2, "Invalid request: too many parameters", rid)
    if not params or not isinstance(params[0], str):
        return _error(2, "Invalid request: property name must be a string", rid)
    if params[0] != _PROPERTY:
        return _error(0, "Unknown property", rid)
    if not setting:
        return _ok(rid, combined)
    if len(params) < 2 or not isinstance(params[1], bool):
        return _error(1, "Invalid value type: expected Boolean", rid)
    return _ok(rid, combined=params[1])


def encode(reply: ControlReply | ControlError) -> str:
    """The compact frame text of a reply: ``{"result":..,"id":..}`` or
    ``{"error":{"code":..,"msg":..},"id":..}`` (never in the combined envelope)."""
    body: dict[str, Any]
    if isinstance(reply, ControlReply):
        body = {"result": reply.result, "id": reply.id}
    else:
        body = {"error": {"code": reply.code, "msg": reply.msg}, "id": reply.id}
    return json.dumps(body, separators=(",", ":"))


# -- stream names in URLs ------------------------------------------------------------------


def is_combined_path(path: str) -> bool:
    """``/stream...`` connections get the ``{"stream":..,"data":..}`` envelope; ``/ws...``
    connections raw payloads."""
    return path.startswith("/stream")


def url_streams(text: str) -> list[str]:
    """``"btcusdt@trade/ethusdt@trade"`` (the tail of ``/ws/...`` or the ``streams`` query
    of ``/stream``) -> the stream names, empty parts dropped."""
    return [s for s in text.split("/") if s]


def refuse_handshake(target: str, names: Sequence[str], limits: Limits) -> Refusal | None:
    """Why the handshake for request target ``target`` naming ``names`` is refused, if it is.

    In the order a server meets them: the target's length (414: Binance documents no
    limit and no status; 414 is what HTTP has for it), then the number of streams
    (400, past ``max_streams``), then each name (400, as a SUBSCRIBE would refuse it).
    """
    if len(target) > limits.max_url_length:
        return Refusal(
            414,
            {
                "code": -1,
                "msg": f"URL too long: {len(target)} characters, max {limits.max_url_length}",
            },
        )
    if len(dict.fromkeys(names)) > limits.max_streams:
        return Refusal(400, {"code": -1, "msg": f"too many streams: max {limits.max_streams}"})
    if _streams(list(names), limits) is None:
        bad = next(n for n in names if _streams([n], limits) is None)
        return Refusal(400, {"code": 2, "msg": f"{INVALID_STREAM}: {bad}"})
    return None


def stream_symbol(name: str) -> str | None:
    """``"btcusdt@trade"`` -> ``"BTCUSDT"``: the symbol a stream is about, if it names one.

    Stream names carry the symbol in lower case; a part with capitals
    (``!miniTicker@arr``) names no symbol.
    """
    sym = name.partition("@")[0]
    return sym.upper() if sym == sym.lower() else None
