"""The price update: the one JSON shape on the bus, over SSE and in ``tail --json``.

::

    {"pair":"BTC/USD","symbol":"BTCUSDT","price":"43250.12","bid":"43250.11","ask":"43250.13",
     "open":"42700.00","high":"43500.00","low":"42600.00","change_pct":"1.29","volume":"12345.67",
     "event_ms":1700000000123,"ingest_ns":1700000000125000000,"epoch":7,"seq":1042,
     "gseq":5210,"source":"ws","stale":false}

Prices and quantities stay the exchange's decimal strings: never floats, never re-rounded.
A field the stream kind does not carry (bid/ask on ``miniTicker``, say) is ``null``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["SOURCES", "PriceUpdate", "decode_update"]

#: Where an update came from: the live WebSocket, REST polling, or the cached last value.
SOURCES = ("ws", "rest", "cache")

_STR_FIELDS = ("price", "bid", "ask", "open", "high", "low", "change_pct", "volume")


@dataclass(frozen=True, slots=True)
class PriceUpdate:
    """One price of one pair at one moment, stamped by ingest with ``(epoch, seq)``."""

    pair: str
    symbol: str
    price: str
    bid: str | None = None
    ask: str | None = None
    open: str | None = None
    high: str | None = None
    low: str | None = None
    change_pct: str | None = None
    volume: str | None = None
    event_ms: int = 0
    ingest_ns: int = 0
    epoch: int = 0
    seq: int = 0
    #: Global sequence of the epoch across all pairs, stamped by ingest with ``seq``;
    #: the SSE event id is ``<epoch>-<gseq>`` (docs/protocol.md, "The stream").
    gseq: int = 0
    source: str = "ws"
    stale: bool = False
    #: Exchange ordering key used only for de-duplication inside ingest (trade id,
    #: book update id, or event time); never serialised.
    order_key: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The update object, keys in the order of docs/protocol.md, "The update object"."""
        return {
            "pair": self.pair,
            "symbol": self.symbol,
            "price": self.price,
            "bid": self.bid,
            "ask": self.ask,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "change_pct": self.change_pct,
            "volume": self.volume,
            "event_ms": self.event_ms,
            "ingest_ns": self.ingest_ns,
            "epoch": self.epoch,
            "seq": self.seq,
            "gseq": self.gseq,
            "source": self.source,
            "stale": self.stale,
        }

    def to_json(self) -> str:
        """Compact JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def stamped(self, epoch: int, seq: int, gseq: int) -> PriceUpdate:
        """The same update carrying the leader's fencing epoch and its sequence numbers."""
        return replace(self, epoch=epoch, seq=seq, gseq=gseq)


def decode_update(data: str | bytes | dict[str, Any]) -> PriceUpdate:
    """Parse an update object (JSON text or dict). Raises ``ValueError`` naming the bad
    field."""
    obj = json.loads(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(obj, dict):
        raise ValueError("price update: expected a JSON object")
    try:
        pair = obj["pair"]
        symbol = obj["symbol"]
        price = obj["price"]
    except KeyError as exc:
        raise ValueError(f"price update: missing field {exc.args[0]!r}") from None
    for key in ("pair", "symbol", "price"):
        if not isinstance(obj[key], str):
            raise ValueError(f"price update: {key} must be a string")
    strs: dict[str, str | None] = {}
    for key in _STR_FIELDS[1:]:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"price update: {key} must be a decimal string or null")
        strs[key] = value
    ints: dict[str, int] = {}
    for key in ("event_ms", "ingest_ns", "epoch", "seq", "gseq"):
        value = obj.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"price update: {key} must be an integer")
        ints[key] = value
    source = obj.get("source", "ws")
    if source not in SOURCES:
        raise ValueError(f"price update: source must be one of {', '.join(SOURCES)}")
    stale = obj.get("stale", False)
    if not isinstance(stale, bool):
        raise ValueError("price update: stale must be true or false")
    return PriceUpdate(
        pair=pair,
        symbol=symbol,
        price=price,
        bid=strs["bid"],
        ask=strs["ask"],
        open=strs["open"],
        high=strs["high"],
        low=strs["low"],
        change_pct=strs["change_pct"],
        volume=strs["volume"],
        event_ms=ints["event_ms"],
        ingest_ns=ints["ingest_ns"],
        epoch=ints["epoch"],
        seq=ints["seq"],
        gseq=ints["gseq"],
        source=source,
        stale=stale,
    )
