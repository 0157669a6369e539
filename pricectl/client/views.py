"""What ``pricectl tail`` shows: one line per update, JSON lines, or a live board.

The text forms are pure functions of an update. The live table is drawn by
:mod:`pricectl.console` (the one module that imports rich) from a :class:`Board`: the
state of every watched pair (latest update, previous price, a short price history for
the sparkline, when it last arrived) and of the connection (state, reconnects). The
board takes ``now`` as an argument, so ages and staleness are computed, not stored, and
tick as the table is redrawn.

A plain line looks like::

    2024-01-02T10:00:01.123Z BTC/USD 43250.12 +1.29% bid 43250.11 ask 43250.13 ws 7-1042
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from pricectl.client.events import (
    Clock,
    Connected,
    Disconnected,
    Notice,
    Price,
    Stale,
    StreamEvent,
)
from pricectl.core.clock import ClockOffset
from pricectl.core.sequence import SequenceStats
from pricectl.core.ticks import PriceUpdate

__all__ = [
    "SPARK_CHARS",
    "Board",
    "Row",
    "event_line",
    "json_line",
    "plain_line",
    "short_decimal",
    "sparkline",
]

#: Eight block heights, lowest to highest.
SPARK_CHARS = "▁▂▃▄▅▆▇█"


def _clock(event_ms: int) -> str:
    if event_ms <= 0:
        return "-"
    secs, ms = divmod(event_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def plain_line(price: Price) -> str:
    """One human line for an update, with markers for snapshot, resync, gap and stale."""
    u = price.update
    parts = [_clock(u.event_ms), u.pair, u.price]
    if u.change_pct is not None:
        parts.append(_signed_pct(u.change_pct))
    if u.bid is not None:
        parts.append(f"bid {u.bid}")
    if u.ask is not None:
        parts.append(f"ask {u.ask}")
    parts.append(u.source)
    parts.append(f"{u.epoch}-{u.seq}")
    if price.snapshot:
        parts.append("[snapshot]")
    if price.resync:
        parts.append(f"[resync: skipped {price.check.missing}]")
    elif price.check.missing:
        parts.append(f"[gap: {price.check.missing} missed]")
    if u.stale:
        parts.append("[STALE]")
    return " ".join(parts)


def json_line(price: Price) -> str:
    """The update object exactly as docs/protocol.md, "The update object", compact JSON."""
    return price.update.to_json()


def event_line(event: Connected | Disconnected | Notice | Stale | Clock) -> str:
    """A status line for a connection event (written to stderr next to plain/JSON output)."""
    if isinstance(event, Connected):
        if event.reconnects:
            resumed = f", resuming after {event.resumed_from}" if event.resumed_from else ""
            return f"reconnected to {event.source} (reconnect #{event.reconnects}{resumed})"
        return f"connected to {event.source}"
    if isinstance(event, Disconnected):
        if event.retry_in <= 0:
            return f"disconnected: {event.reason}; reconnecting"
        return f"disconnected: {event.reason}; reconnecting in {event.retry_in:.1f}s"
    if isinstance(event, Stale):
        return f"{event.pair}: stale ({event.reason}; the last price is not live)"
    if isinstance(event, Clock):
        return f"server clock {event.server_ms} ms"
    return f"{event.kind}: {event.detail}"


def _signed_pct(text: str) -> str:
    return (text if text.startswith("-") or text.startswith("+") else "+" + text) + "%"


def _dec(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def short_decimal(text: str | None, keep: int = 2) -> str:
    """``"43250.12000000"`` -> ``"43250.12"`` for the table: Binance pads prices to the tick
    size's width; dropping zeros past ``keep`` decimals changes no digit (never rounds)."""
    if text is None:
        return "-"
    if "." not in text:
        return text
    whole, frac = text.split(".", 1)
    frac = frac.rstrip("0")
    if len(frac) < keep:
        frac = frac + "0" * (keep - len(frac))
    return f"{whole}.{frac}" if frac else whole


def sparkline(values: Sequence[Decimal], width: int = 20) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return SPARK_CHARS[3] * len(vals)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[int((v - lo) / (hi - lo) * top)] for v in vals)


@dataclass
class Row:
    """One pair on the board."""

    pair: str
    update: PriceUpdate | None = None
    previous: Decimal | None = None
    received: float | None = None
    history: deque[Decimal] = field(default_factory=lambda: deque(maxlen=40))
    updates: int = 0
    #: The monotonic instant the update was made (its ``ingest_ns`` on the server's
    #: clock), when known; else None and ages count from arrival.
    born: float | None = None
    #: serve sent ``event: stale`` for the pair after this update.
    marked: bool = False

    def direction(self) -> int:
        """+1 if the last price rose, -1 if it fell, 0 if unchanged or unknown."""
        if self.update is None or self.previous is None:
            return 0
        now = _dec(self.update.price)
        if now is None or now == self.previous:
            return 0
        return 1 if now > self.previous else -1

    def age(self, now: float) -> float | None:
        """Seconds since this pair's last update was made (monotonic ``now``): from its
        ``ingest_ns`` on the server's clock when known, else since it arrived."""
        start = self.born if self.born is not None else self.received
        return None if start is None else max(0.0, now - start)

    def is_stale(self, now: float, stale_after: float) -> bool:
        """Stale if the source or serve says so, or the price is ``stale_after`` old."""
        if self.marked or (self.update is not None and self.update.stale):
            return True
        age = self.age(now)
        return age is not None and age >= stale_after


@dataclass
class Board:
    """Every watched pair plus the connection, fed by :meth:`apply`."""

    pairs: Sequence[str]
    source: str
    stale_after: float = 30.0
    state: str = "connecting"
    reconnects: int = 0
    last_problem: str = ""
    rows: dict[str, Row] = field(default_factory=dict)
    stats: SequenceStats | None = None
    #: The server's clock minus ours, from ``event: clock``.
    clock: ClockOffset = field(default_factory=ClockOffset)

    def __post_init__(self) -> None:
        for pair in self.pairs:
            self.rows.setdefault(pair, Row(pair))

    def apply(self, event: StreamEvent, now: float) -> None:
        """Fold one event into the board (``now``: monotonic seconds)."""
        if isinstance(event, Price):
            if not event.deliver:
                return
            row = self.rows.setdefault(event.update.pair, Row(event.update.pair))
            if row.update is not None:
                row.previous = _dec(row.update.price)
            row.update = event.update
            row.received = now
            row.marked = False
            row.born = None
            if event.update.ingest_ns and event.received_ns and self.clock.known:
                wall_ms = event.received_ns / 1e6
                made_ms = event.update.ingest_ns / 1e6
                row.born = now - self.clock.age_ms(made_ms, wall_ms) / 1000.0
            row.updates += 1
            value = _dec(event.update.price)
            if value is not None:
                row.history.append(value)
            if event.resync:
                self.last_problem = (
                    f"{event.update.pair}: resynced from snapshot, {event.check.missing} skipped"
                )
        elif isinstance(event, Clock):
            at = event.received_ns / 1e6
            self.clock.add(sent=at, remote=event.server_ms, received=at)
        elif isinstance(event, Stale):
            marked = self.rows.get(event.pair)
            last = marked.update if marked is not None else None
            if marked is not None and last is not None:
                marked.marked = (last.epoch, last.seq) <= (event.epoch, event.seq)
            self.last_problem = event_line(event)
        elif isinstance(event, Connected):
            self.state = "live"
            self.reconnects = event.reconnects
        elif isinstance(event, Disconnected):
            self.state = "reconnecting"
            self.reconnects = event.reconnects
            self.last_problem = f"{event.reason}; retry in {event.retry_in:.1f}s"
        else:
            self.last_problem = event_line(event)
