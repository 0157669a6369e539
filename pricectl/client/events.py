"""What a price-stream reader yields, whichever hop it reads (serve, Redis, Binance).

``pricectl tail`` reads the SSE stream, the bus or the exchange with three different
readers; all three yield these values so one view can show any of them:

- :class:`Price`: one update, with the sequence verdict (``check``) that says whether it
  is new, a gap, a duplicate, or a snapshot repeat / resync after a reconnect;
- :class:`Connected` / :class:`Disconnected`: the connection's state changes, with the
  reconnect count and the delay before the next attempt;
- :class:`Notice`: anything else the source said (an unknown SSE event, a malformed
  payload), surfaced rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pricectl.core.sequence import Check, Verdict
from pricectl.core.ticks import PriceUpdate

__all__ = ["Connected", "Disconnected", "Notice", "Price", "StreamEvent"]


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


StreamEvent = Price | Connected | Disconnected | Notice
