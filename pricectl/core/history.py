"""The resume ring: recent events by position, so a reconnecting client misses nothing.

A position is ``(epoch, gseq)``: the leader's fencing epoch and the global
sequence ingest stamps on every update of that epoch (docs/protocol.md, "The update object"
and "The stream"). The SSE event id is ``<epoch>-<gseq>``, so a browser's ``Last-Event-ID``
names the last position it has. The ring answers "everything after that position for these
pairs", or ``None`` when it cannot vouch for completeness, in which case the
server sends a fresh snapshot instead: a client is never silently skipped ahead.

A resume is also capped (``max_events``, ``max_bytes``): a client back from far behind
would otherwise get its whole absence as its opening (4,000 events are 1.4 MB, written
at once into one socket). Beyond the cap the ring answers ``None`` as well, and the
client gets the snapshot: what it missed is superseded by the latest price anyway.

The ring covers the half-open range ``(floor, last]`` of one epoch. ``floor``
rises as old entries are evicted; :meth:`reset` (after a bus gap, or a new
epoch) empties it, optionally at a known position so clients that are exactly
there still resume with nothing to replay.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

__all__ = ["HistoryRing", "format_event_id", "parse_event_id"]


def format_event_id(epoch: int, gseq: int) -> str:
    """``(7, 5210) -> "7-5210"``."""
    return f"{epoch}-{gseq}"


def parse_event_id(text: str) -> tuple[int, int]:
    """``"7-5210" -> (7, 5210)``; ``ValueError`` for anything else (a malformed id is a 400)."""
    epoch, dash, gseq = text.strip().partition("-")
    if not dash or not epoch.isascii() or not gseq.isascii():
        raise ValueError(f"malformed event id {text!r}: expected <epoch>-<gseq> such as 7-5210")
    if not epoch.isdigit() or not gseq.isdigit() or len(text) > 40:
        raise ValueError(f"malformed event id {text!r}: expected <epoch>-<gseq> such as 7-5210")
    return int(epoch), int(gseq)


class HistoryRing:
    """At most ``capacity`` recent events of one epoch: ``(gseq, pair, payload bytes)``."""

    __slots__ = ("_entries", "capacity", "epoch", "floor", "last", "max_bytes", "max_events")

    def __init__(self, capacity: int, *, max_events: int = 0, max_bytes: int = 0) -> None:
        if capacity < 0 or max_events < 0 or max_bytes < 0:
            raise ValueError("capacity, max_events and max_bytes must be >= 0")
        self.capacity = capacity
        #: Most events, and bytes, one resume may replay (0: no cap).
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._entries: deque[tuple[int, str, bytes]] = deque()
        #: The epoch the ring covers, or None when it covers nothing.
        self.epoch: int | None = None
        #: Every event of ``epoch`` with ``floor < gseq <= last`` is in the ring.
        self.floor = 0
        self.last = 0

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self, epoch: int | None = None, position: int = 0) -> None:
        """Forget everything; with ``epoch``, the ring is complete (and empty) at ``position``."""
        self._entries.clear()
        self.epoch = epoch
        self.floor = position
        self.last = position

    def append(self, epoch: int, gseq: int, pair: str, payload: bytes) -> bool:
        """Record one event. A new epoch starts the ring afresh; a gseq at or below the
        last one (a replay or reorder) is not recorded and ``False`` is returned."""
        if epoch != self.epoch:
            if self.epoch is not None and epoch < self.epoch:
                return False
            self.reset(epoch, gseq - 1)
        elif gseq <= self.last:
            return False
        if self.capacity == 0:
            self.floor = self.last = gseq
            return True
        entries = self._entries
        if len(entries) >= self.capacity:
            self.floor = entries.popleft()[0]
        entries.append((gseq, pair, payload))
        self.last = gseq
        return True

    def since(self, epoch: int, gseq: int, pairs: Collection[str]) -> list[bytes] | None:
        """Payloads after ``(epoch, gseq)`` for ``pairs``, oldest first; ``None`` when not covered.

        Not covered: another epoch, a position older than the ring reaches back,
        a position the ring has not reached (the client saw more than we did), or a
        replay longer than ``max_events`` events or ``max_bytes`` bytes.
        """
        if self.epoch is None or epoch != self.epoch:
            return None
        if gseq < self.floor or gseq > self.last:
            return None
        max_events = self.max_events or len(self._entries)
        max_bytes = self.max_bytes
        size = 0
        out: list[bytes] = []
        for g, pair, payload in reversed(self._entries):
            if g <= gseq:
                break
            if pair in pairs:
                out.append(payload)
                size += len(payload)
                if len(out) > max_events or (max_bytes and size > max_bytes):
                    return None
        out.reverse()
        return out
