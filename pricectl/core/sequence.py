"""Gap and duplicate detection per pair from ``(epoch, seq)`` (docs/protocol.md,
"The update object").

Ingest stamps every update with the leader's fencing ``epoch`` and a per-pair ``seq``
that grows by one for each update of that pair within an epoch. A client watching a few
pairs can therefore tell, from the updates alone, whether it missed some (a *gap*) or got
one twice (a *duplicate*, e.g. a replay after reconnecting with ``Last-Event-ID`` that
overlapped what it had already shown). ``pricectl tail`` hides duplicates and reports
gaps; ``pricectl loadtest`` counts both.

Snapshots are judged differently from live updates. After a (re)connect the server
sends each pair's latest update as ``event: snapshot``: one we already showed is a
*repeat* (harmless, not a duplicate), and one further ahead is a *resync* that jumped
over updates on purpose and says so, rather than a silent gap.

A higher epoch means a new leader whose ``seq`` restarts, so it re-bases the pair (no
gap can be computed across leaders). A lower epoch is a deposed leader's late write and
is refused, as consumers do on the bus (docs/architecture.md, "The bus").

Pure: no clock and no I/O::

    t = SequenceTracker()
    t.check("BTC/USD", epoch=7, seq=1).verdict   # Verdict.FIRST
    t.check("BTC/USD", epoch=7, seq=2).verdict   # Verdict.IN_ORDER
    t.check("BTC/USD", epoch=7, seq=5)           # Check(Verdict.GAP, missing=2)
    t.check("BTC/USD", epoch=7, seq=4).verdict   # Verdict.DUPLICATE (already past it)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Check", "SequenceStats", "SequenceTracker", "Verdict"]


class Verdict(Enum):
    """What one update means for its pair's sequence."""

    #: The first update seen for the pair: the baseline.
    FIRST = "first"
    #: ``seq`` is exactly one past the last: nothing lost.
    IN_ORDER = "in_order"
    #: ``seq`` jumped ahead: ``missing`` updates were never received.
    GAP = "gap"
    #: ``seq`` at or below the last seen in the same epoch: already delivered.
    DUPLICATE = "duplicate"
    #: A higher epoch (new leader): the sequence restarts from this update.
    NEW_EPOCH = "new_epoch"
    #: A lower epoch than the pair's highest: a deposed leader's write, refused.
    OLD_EPOCH = "old_epoch"
    #: A snapshot of an update already shown (same epoch, ``seq`` not ahead).
    REPEAT = "repeat"
    #: A snapshot ahead of what was shown: the client jumps to it, ``missing`` skipped.
    RESYNC = "resync"

    @property
    def deliver(self) -> bool:
        """True when the update is new information the client should show or count."""
        return self in _DELIVER


_DELIVER = frozenset(
    {Verdict.FIRST, Verdict.IN_ORDER, Verdict.GAP, Verdict.NEW_EPOCH, Verdict.RESYNC}
)


@dataclass(frozen=True, slots=True)
class Check:
    """The verdict on one update; ``missing`` counts updates skipped (GAP and RESYNC)."""

    verdict: Verdict
    missing: int = 0


@dataclass(slots=True)
class SequenceStats:
    """Running totals over every pair, for a summary line or a load-test report."""

    delivered: int = 0
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    repeats: int = 0
    resyncs: int = 0
    skipped_by_resync: int = 0
    epoch_changes: int = 0
    old_epoch: int = 0


class SequenceTracker:
    """The last ``(epoch, seq)`` delivered per pair, and what each new one means.

    Call :meth:`check` for every update in arrival order, with ``snapshot=True`` for
    snapshot events; the tracker advances only on updates worth delivering.
    """

    __slots__ = ("_last", "stats")

    def __init__(self) -> None:
        # [epoch, seq] per pair, updated in place: the common case (the next seq of the
        # same epoch, see :meth:`live`) then allocates nothing.
        self._last: dict[str, list[int]] = {}
        self.stats = SequenceStats()

    def last(self, pair: str) -> tuple[int, int] | None:
        """The last delivered ``(epoch, seq)`` of ``pair``, or ``None`` if none yet."""
        last = self._last.get(pair)
        return None if last is None else (last[0], last[1])

    def forget(self, pair: str | None = None) -> None:
        """Drop what is known about ``pair`` (all pairs if ``None``): the next is FIRST."""
        if pair is None:
            self._last.clear()
        else:
            self._last.pop(pair, None)

    def live(self, pair: str, epoch: int, seq: int) -> bool:
        """:meth:`check` for a live update (not a snapshot), answering only "deliver?".

        The same judgement and the same :attr:`stats` as ``check(pair, epoch, seq)``;
        True for FIRST, IN_ORDER, GAP and NEW_EPOCH, False for DUPLICATE and OLD_EPOCH.
        The load tester calls it for every event, so the usual case, ``seq`` one past
        the last in the same epoch, is a dictionary lookup and two integer compares,
        with no :class:`Check` built.
        """
        last = self._last.get(pair)
        if last is not None and seq - 1 == last[1] and epoch == last[0]:
            last[1] = seq
            self.stats.delivered += 1
            return True
        return self.check(pair, epoch, seq).verdict in _DELIVER

    def check(self, pair: str, epoch: int, seq: int, *, snapshot: bool = False) -> Check:
        """Judge one update of ``pair`` and record it if it is to be delivered."""
        result = self._judge(pair, epoch, seq, snapshot)
        s = self.stats
        v = result.verdict
        if v in _DELIVER:
            self._last[pair] = [epoch, seq]
            s.delivered += 1
        if v is Verdict.GAP:
            s.gaps += 1
            s.missing += result.missing
        elif v is Verdict.DUPLICATE:
            s.duplicates += 1
        elif v is Verdict.REPEAT:
            s.repeats += 1
        elif v is Verdict.RESYNC:
            s.resyncs += 1
            s.skipped_by_resync += result.missing
        elif v is Verdict.NEW_EPOCH:
            s.epoch_changes += 1
        elif v is Verdict.OLD_EPOCH:
            s.old_epoch += 1
        return result

    def _judge(self, pair: str, epoch: int, seq: int, snapshot: bool) -> Check:
        last = self._last.get(pair)
        if last is None:
            return Check(Verdict.FIRST)
        last_epoch, last_seq = last[0], last[1]
        if epoch > last_epoch:
            return Check(Verdict.NEW_EPOCH)
        if epoch < last_epoch:
            return Check(Verdict.OLD_EPOCH)
        if seq <= last_seq:
            return Check(Verdict.REPEAT if snapshot else Verdict.DUPLICATE)
        if seq == last_seq + 1:
            return Check(Verdict.IN_ORDER)
        missing = seq - last_seq - 1
        return Check(Verdict.RESYNC if snapshot else Verdict.GAP, missing)
