"""What a price-stream reader yields, whichever hop it reads (serve, Redis, Binance).

``pricectl tail`` reads the SSE stream, the bus or the exchange with three different
readers; all three yield these values so one view can show any of them:

- :class:`Price`: one update, with the sequence verdict (``check``) that says whether it
  is new, a gap, a duplicate, or a snapshot repeat / resync after a reconnect;
- :class:`Connected` / :class:`Disconnected`: the connection's state changes, with the
  reconnect count and the delay before the next attempt;
- :class:`Stale`: serve says a pair has had nothing for ``stale_after`` (``event:
  stale``): its last price must be shown as stale until a new one arrives;
- :class:`Clock`: the server's wall clock (``event: clock``), so ages are computed on
  the server's clock rather than on a skewed local one;
- :class:`Notice`: anything else the source said (an unknown SSE event, a malformed
  payload), surfaced rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pricectl.core.sequence import Check, Verdict
from pricectl.core.ticks import PriceUpdate

__all__ = ["Clock", "Connected", "Disconnected", "Notice", "Price", "Stale", "StreamEvent"]


@dataclass(frozen=True, slots=True)
class Price:
    """One price update as received.

    ``snapshot`` is True for the latest-value events sent on (re)connect; ``check`` is
    the :class:`~pricectl.core.sequence.SequenceTracker` verdict; ``received`` is the
    local monotonic time and ``received_ns`` the wall clock (latency = ``received_ns -
    update.ingest_ns``, same host).
    """

    update: PriceUpdate
    check: Check
    snapshot: bool = False
    event_id: str | None = None
    received: float = 0.0
    received_ns: int = 0

    @property
    def deliver(self) -> bool:
        """True when this is new information (not a duplicate, repeat or deposed epoch)."""
        return self.check.verdict.deliver

    @property
    def resync(self) -> bool:
        """True when a snapshot jumped the pair forward over updates never received."""
        return self.check.verdict is Verdict.RESYNC


@dataclass(frozen=True, slots=True)
class Connected:
    """The stream is (again) open. ``reconnects`` counts the reconnects so far."""

    source: str
    reconnects: int
    resumed_from: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The stream dropped; the reader tries again in ``retry_in`` seconds."""

    reason: str
    retry_in: float
    reconnects: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the source sent that is not a price (kind: the SSE event name, or an error)."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Stale:
    """serve marked ``pair`` stale: its update ``(epoch, seq)`` is the last one it has."""

    pair: str
    reason: str
    epoch: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Clock:
    """The server's wall clock in ms, and ours (wall ns) when the event arrived."""

    server_ms: int
    received_ns: int


StreamEvent = Price | Connected | Disconnected | Notice | Stale | Clock
