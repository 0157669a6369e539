"""Gap and duplicate detection from (epoch, seq), per pair (pricectl.core.sequence)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.sequence import Check, SequenceTracker, Verdict


def test_in_order_updates_are_delivered() -> None:
    """Consecutive seqs after the first are IN_ORDER and each is delivered."""
    t = SequenceTracker()
    assert t.check("BTC/USD", 7, 10) == Check(Verdict.FIRST)
    assert t.check("BTC/USD", 7, 11) == Check(Verdict.IN_ORDER)
    assert t.check("BTC/USD", 7, 12) == Check(Verdict.IN_ORDER)
    assert t.stats.delivered == 3 and t.stats.gaps == 0 and t.last("BTC/USD") == (7, 12)


def test_jump_ahead_is_a_gap_counting_the_missing() -> None:
    """A seq more than one ahead is a GAP with the number of updates never received."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 1)
    assert t.check("BTC/USD", 7, 5) == Check(Verdict.GAP, missing=3)
    assert t.stats.gaps == 1 and t.stats.missing == 3
    assert t.last("BTC/USD") == (7, 5)


def test_seen_or_older_seq_is_a_duplicate_and_not_recorded() -> None:
    """A seq at or below the last is a DUPLICATE, not delivered, and the baseline stays."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 1)
    t.check("BTC/USD", 7, 2)
    assert t.check("BTC/USD", 7, 2).verdict is Verdict.DUPLICATE
    assert t.check("BTC/USD", 7, 1).verdict is Verdict.DUPLICATE
    assert not Verdict.DUPLICATE.deliver
    assert t.last("BTC/USD") == (7, 2) and t.stats.duplicates == 2 and t.stats.delivered == 2


def test_pairs_are_tracked_independently() -> None:
    """Each pair has its own sequence: interleaving pairs is not a gap."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 1)
    t.check("ETH/USD", 7, 40)
    assert t.check("BTC/USD", 7, 2).verdict is Verdict.IN_ORDER
    assert t.check("ETH/USD", 7, 41).verdict is Verdict.IN_ORDER


def test_new_epoch_rebases_and_old_epoch_is_refused() -> None:
    """A higher epoch restarts the sequence; a deposed leader's lower epoch is refused."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 900)
    assert t.check("BTC/USD", 8, 1).verdict is Verdict.NEW_EPOCH
    assert t.check("BTC/USD", 7, 901).verdict is Verdict.OLD_EPOCH
    assert t.check("BTC/USD", 8, 2).verdict is Verdict.IN_ORDER
    assert t.stats.epoch_changes == 1 and t.stats.old_epoch == 1


def test_snapshot_of_a_shown_update_is_a_repeat_not_a_duplicate() -> None:
    """A snapshot the client already showed is a REPEAT: not delivered, not a duplicate."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 3)
    assert t.check("BTC/USD", 7, 3, snapshot=True).verdict is Verdict.REPEAT
    assert t.stats.duplicates == 0 and t.stats.repeats == 1


def test_snapshot_ahead_is_an_announced_resync() -> None:
    """A snapshot past the last seq is a RESYNC with the skipped count, not a gap."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 3)
    assert t.check("BTC/USD", 7, 10, snapshot=True) == Check(Verdict.RESYNC, missing=6)
    assert t.check("BTC/USD", 7, 11, snapshot=True) == Check(Verdict.IN_ORDER)
    assert t.stats.gaps == 0 and t.stats.resyncs == 1 and t.stats.skipped_by_resync == 6


def test_forget_makes_the_next_update_first() -> None:
    """After forget the next update of the pair is the new baseline."""
    t = SequenceTracker()
    t.check("BTC/USD", 7, 3)
    t.forget("BTC/USD")
    assert t.check("BTC/USD", 7, 1).verdict is Verdict.FIRST
    t.forget()
    assert t.last("BTC/USD") is None


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=80))
def test_missing_plus_delivered_accounts_for_every_seq(seqs: list[int]) -> None:
    """For any arrival order, delivered + missing spans exactly 1..max seq after the first."""
    t = SequenceTracker()
    for s in seqs:
        t.check("BTC/USD", 1, s)
    delivered_seqs = []
    last = 0
    for s in seqs:
        if s > last:
            delivered_seqs.append(s)
            last = s
    assert t.stats.delivered == len(delivered_seqs)
    assert t.stats.duplicates == len(seqs) - len(delivered_seqs)
    assert t.stats.missing == max(seqs) - seqs[0] - (len(delivered_seqs) - 1)


_UPDATES = st.lists(
    st.tuples(
        st.sampled_from(["BTC/USD", "ETH/USD"]),
        st.integers(min_value=6, max_value=8),
        st.integers(min_value=1, max_value=12),
        st.booleans(),
    ),
    max_size=80,
)


@given(_UPDATES)
def test_live_judges_exactly_like_check(updates: list[tuple[str, int, int, bool]]) -> None:
    """live() (the load tester's fast path) answers check().verdict.deliver, same stats."""
    fast, full = SequenceTracker(), SequenceTracker()
    for pair, epoch, seq, snapshot in updates:
        if snapshot:  # snapshots go through check() on both, as the load tester does
            assert fast.check(pair, epoch, seq, snapshot=True) == full.check(
                pair, epoch, seq, snapshot=True
            )
        else:
            assert fast.live(pair, epoch, seq) == full.check(pair, epoch, seq).verdict.deliver
        assert fast.last(pair) == full.last(pair)
    assert fast.stats == full.stats


def test_live_in_order_and_its_exceptions() -> None:
    """live(): next seq and gaps deliver; duplicates and a deposed leader's update do not."""
    t = SequenceTracker()
    assert t.live("BTC/USD", 7, 1) and t.live("BTC/USD", 7, 2)
    assert t.live("BTC/USD", 7, 5) and t.stats.missing == 2
    assert not t.live("BTC/USD", 7, 5) and t.stats.duplicates == 1
    assert t.live("BTC/USD", 8, 1) and t.stats.epoch_changes == 1
    assert not t.live("BTC/USD", 7, 6) and t.stats.old_epoch == 1
    assert t.last("BTC/USD") == (8, 1) and t.stats.delivered == 4
