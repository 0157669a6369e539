"""Stamping: seq +1 per pair, gseq +1 across pairs, the epoch given, in the order given."""

from __future__ import annotations

from pricectl.core.sequence import SequenceTracker, Verdict
from pricectl.core.stamping import Stamper
from pricectl.core.ticks import PriceUpdate


def _update(pair: str) -> PriceUpdate:
    return PriceUpdate(pair=pair, symbol=pair.replace("/USD", "USDT"), price="1.00")


def test_seq_per_pair_and_gseq_across_pairs_over_batches() -> None:
    """Numbers carry on from one batch to the next; each pair counts its own seq."""
    stamper = Stamper()
    first = stamper.stamp([_update("BTC/USD"), _update("ETH/USD"), _update("BTC/USD")], 7)
    second = stamper.stamp([_update("ETH/USD")], 7)
    assert [(u.pair, u.epoch, u.seq, u.gseq) for u in first + second] == [
        ("BTC/USD", 7, 1, 1),
        ("ETH/USD", 7, 1, 2),
        ("BTC/USD", 7, 2, 3),
        ("ETH/USD", 7, 2, 4),
    ]
    assert (stamper.gseq, stamper.seq("BTC/USD"), stamper.seq("SOL/USD")) == (4, 2, 0)
    assert first[0].price == "1.00" and first[0].symbol == "BTCUSDT"


def test_a_reader_sees_the_stamped_stream_in_order() -> None:
    """What the stamper numbers, the sequence tracker accepts with no gap or duplicate."""
    stamper = Stamper()
    tracker = SequenceTracker()
    pairs = ["BTC/USD", "ETH/USD", "BTC/USD", "BTC/USD", "ETH/USD"]
    verdicts = [
        tracker.check(u.pair, epoch=u.epoch, seq=u.seq).verdict
        for u in stamper.stamp([_update(p) for p in pairs], 3)
    ]
    assert verdicts == [Verdict.FIRST, Verdict.FIRST] + [Verdict.IN_ORDER] * 3
