"""How far another machine's clock is from ours, from request/reply samples (NTP's idea).

Used twice: ingest estimates the exchange's clock (REST ``/api/v3/time``) so an update's
``event_ms`` can be judged (an event older than ``stale_after`` is not live, whatever
our own clock says), and clients estimate the server's clock from the time the stream
sends (docs/protocol.md, "The stream") so a browser whose clock is a minute behind still
shows the right age.

One sample is ``(sent, remote, received)``: our clock when the request left, the remote
clock in the reply, our clock when the reply arrived, all in milliseconds. Assuming the
reply was stamped half-way through the round trip, the offset is
``remote - (sent + received) / 2``, wrong by at most half the round trip. The estimate
is the sample with the shortest round trip among the last :data:`KEEP`: a slow round
trip says less. A sample with no round trip (a clock pushed by the server, such as an
SSE ``clock`` event) is passed with ``sent == received``: it can only be late, never
early, so among such samples the one with the largest offset (the least delayed) wins::

    est = ClockOffset()
    est.add(sent=1_000, remote=61_010, received=1_020)   # offset 60_000 +- 10
    est.offset_ms                                        # 60000.0
    est.remote_now(2_000)                                # 62000.0
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["KEEP", "ClockOffset", "Sample"]

#: Samples kept: enough to ride out a few slow round trips, few enough to follow drift.
KEEP = 8


@dataclass(frozen=True, slots=True)
class Sample:
    """One exchange of clocks, in milliseconds."""

    sent: float
    remote: float
    received: float

    @property
    def rtt(self) -> float:
        """Round trip on our clock (0 for a pushed clock)."""
        return max(0.0, self.received - self.sent)

    @property
    def offset(self) -> float:
        """Remote clock minus ours at the middle of the round trip."""
        return self.remote - (self.sent + self.received) / 2.0


class ClockOffset:
    """The current estimate of ``remote clock - local clock``; 0 until the first sample."""

    def __init__(self, keep: int = KEEP) -> None:
        self._samples: deque[Sample] = deque(maxlen=max(1, keep))

    def add(self, sent: float, remote: float, received: float) -> None:
        """Record one sample (milliseconds; ``received < sent`` is treated as no round trip)."""
        self._samples.append(Sample(sent, remote, max(sent, received)))

    @property
    def known(self) -> bool:
        """True once a sample has been recorded."""
        return bool(self._samples)

    @property
    def best(self) -> Sample | None:
        """The kept sample with the shortest round trip; among equals the largest offset
        (a delivery delay only ever makes the remote clock look behind)."""
        best: Sample | None = None
        for s in self._samples:
            if best is None or (s.rtt, -s.offset) < (best.rtt, -best.offset):
                best = s
        return best

    @property
    def offset_ms(self) -> float:
        """Remote minus local, in milliseconds (0.0 while unknown)."""
        best = self.best
        return 0.0 if best is None else best.offset

    @property
    def error_ms(self) -> float | None:
        """How wrong :attr:`offset_ms` can be: half the best sample's round trip."""
        best = self.best
        return None if best is None else best.rtt / 2.0

    def remote_now(self, local_ms: float) -> float:
        """The remote clock's reading when ours reads ``local_ms``."""
        return local_ms + self.offset_ms

    def age_ms(self, remote_stamp_ms: float, local_ms: float) -> float:
        """How old a remote timestamp is, judged on the remote clock (never negative)."""
        return max(0.0, self.remote_now(local_ms) - remote_stamp_ms)
