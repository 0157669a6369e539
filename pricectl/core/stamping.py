"""Numbering the stream: each update's ``(epoch, seq, gseq)`` (docs/protocol.md,
"The update object" and "The stream").

Whoever produces the stream stamps every update, in order, with the leader's fencing
``epoch``, a ``seq`` that grows by one per pair, and a ``gseq`` that grows by one across
all pairs; the SSE event id is ``<epoch>-<gseq>``. Readers check the numbers with
:class:`pricectl.core.sequence.SequenceTracker`, so the stamping must be exactly this
wherever it happens: in the relay, before the fenced publish, and in ``pricectl tail
--from binance``, which reads the exchange directly and numbers what it shows (epoch 0).

Pure: no clock and no I/O::

    s = Stamper()
    [u.seq for u in s.stamp([btc, eth, btc], epoch=7)]   # [1, 1, 2]
    s.gseq, s.seq("BTC/USD")                              # (3, 2)
"""

from __future__ import annotations

from collections.abc import Iterable

from pricectl.core.ticks import PriceUpdate

__all__ = ["Stamper"]


class Stamper:
    """The running ``seq`` of each pair and the ``gseq`` of one producer's stream."""

    __slots__ = ("_seqs", "gseq")

    def __init__(self) -> None:
        self._seqs: dict[str, int] = {}
        #: The last gseq given out (0 before the first update).
        self.gseq = 0

    def stamp(self, updates: Iterable[PriceUpdate], epoch: int) -> list[PriceUpdate]:
        """``updates`` in order, each carrying ``epoch`` and its next ``seq`` and ``gseq``."""
        seqs = self._seqs
        gseq = self.gseq
        stamped: list[PriceUpdate] = []
        for u in updates:
            seq = seqs.get(u.pair, 0) + 1
            seqs[u.pair] = seq
            gseq += 1
            stamped.append(u.stamped(epoch, seq, gseq))
        self.gseq = gseq
        return stamped

    def seq(self, pair: str) -> int:
        """The last seq given to ``pair`` (0 before its first update)."""
        return self._seqs.get(pair, 0)
