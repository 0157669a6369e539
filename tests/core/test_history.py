"""The resume ring: replay what a client missed, or say it cannot."""

from __future__ import annotations

import pytest

from pricectl.core.history import HistoryRing, format_event_id, parse_event_id


def filled(capacity: int, epoch: int = 7, upto: int = 10) -> HistoryRing:
    ring = HistoryRing(capacity)
    for g in range(1, upto + 1):
        ring.append(epoch, g, "BTC/USD" if g % 2 else "ETH/USD", b"e%d" % g)
    return ring


def test_since_replays_after_position_for_pairs():
    """Events after the client's position for its pairs come back oldest first."""
    ring = filled(100)
    assert ring.since(7, 6, {"BTC/USD"}) == [b"e7", b"e9"]
    assert ring.since(7, 6, {"BTC/USD", "ETH/USD"}) == [b"e7", b"e8", b"e9", b"e10"]


def test_since_at_latest_position_is_empty_not_none():
    """A client that has everything resumes with nothing to replay."""
    assert filled(100).since(7, 10, {"BTC/USD"}) == []


def test_since_not_covered_after_eviction():
    """Once the ring has dropped events after the position, it says None (snapshot)."""
    ring = filled(4)  # holds 7..10, floor 6
    assert ring.floor == 6
    assert ring.since(7, 6, {"BTC/USD"}) == [b"e7", b"e9"]
    assert ring.since(7, 5, {"BTC/USD"}) is None


def test_since_other_epoch_or_future_position_is_none():
    """Another epoch, or a position beyond what the ring saw, cannot be resumed."""
    ring = filled(100)
    assert ring.since(6, 5, {"BTC/USD"}) is None
    assert ring.since(8, 5, {"BTC/USD"}) is None
    assert ring.since(7, 11, {"BTC/USD"}) is None


def test_new_epoch_restarts_ring():
    """The first event of a higher epoch empties the ring; lower epochs are refused."""
    ring = filled(100)
    assert ring.append(8, 1, "BTC/USD", b"n1")
    assert ring.since(8, 0, {"BTC/USD"}) == [b"n1"]
    assert ring.since(7, 9, {"BTC/USD"}) is None
    assert not ring.append(7, 11, "BTC/USD", b"old")


def test_duplicate_gseq_not_recorded():
    """A replayed or reordered gseq is refused so replay never duplicates."""
    ring = filled(100)
    assert not ring.append(7, 10, "BTC/USD", b"dup")
    assert not ring.append(7, 3, "BTC/USD", b"dup")
    assert ring.since(7, 9, {"ETH/USD"}) == [b"e10"]


def test_reset_at_position():
    """After a reset at a known position, a client exactly there resumes; older ones do not."""
    ring = filled(100)
    ring.reset(7, 12)
    assert ring.since(7, 12, {"BTC/USD"}) == []
    assert ring.since(7, 10, {"BTC/USD"}) is None
    ring.reset()
    assert ring.since(7, 12, {"BTC/USD"}) is None


def test_zero_capacity_tracks_position_only():
    """A ring of size 0 keeps no events but still knows the latest position."""
    ring = HistoryRing(0)
    ring.append(1, 1, "BTC/USD", b"x")
    assert ring.since(1, 1, {"BTC/USD"}) == []
    assert ring.since(1, 0, {"BTC/USD"}) is None


def test_event_id_round_trip_and_malformed():
    """Event ids are <epoch>-<gseq>; anything else is a ValueError."""
    assert parse_event_id(format_event_id(7, 5210)) == (7, 5210)
    for bad in ["", "7", "7-", "-1", "a-1", "7-1-2", "7_1", "٣-1", "1" * 41 + "-1"]:
        with pytest.raises(ValueError):
            parse_event_id(bad)


def test_resume_beyond_the_event_cap_is_not_covered():
    """A replay longer than max_events is refused (None: the client gets the snapshot)."""
    ring = HistoryRing(100, max_events=3)
    for g in range(1, 11):
        ring.append(7, g, "BTC/USD", b"e%d" % g)
    assert ring.since(7, 7, {"BTC/USD"}) == [b"e8", b"e9", b"e10"]
    assert ring.since(7, 6, {"BTC/USD"}) is None
    # only the client's own pairs count against the cap
    assert ring.since(7, 6, {"ETH/USD"}) == []


def test_resume_beyond_the_byte_cap_is_not_covered():
    """A replay of more than max_bytes is refused as well."""
    ring = HistoryRing(100, max_bytes=25)
    for g in range(1, 11):
        ring.append(7, g, "BTC/USD", b"x" * 10)
    assert ring.since(7, 8, {"BTC/USD"}) == [b"x" * 10, b"x" * 10]
    assert ring.since(7, 7, {"BTC/USD"}) is None


def test_caps_must_not_be_negative():
    """A negative cap is a programming error, refused at once."""
    with pytest.raises(ValueError):
        HistoryRing(10, max_events=-1)
