"""The clock-offset estimate: NTP's midpoint rule, the shortest round trip wins."""

from __future__ import annotations

from pricectl.core.clock import ClockOffset


def test_unknown_until_the_first_sample() -> None:
    """With no sample the offset is 0 and nothing is known."""
    est = ClockOffset()
    assert not est.known and est.offset_ms == 0.0 and est.error_ms is None
    assert est.remote_now(1000.0) == 1000.0


def test_midpoint_of_the_round_trip() -> None:
    """A reply stamped 61,010 for a request out at 1,000 and back at 1,020: +60 s, +-10 ms."""
    est = ClockOffset()
    est.add(sent=1_000, remote=61_010, received=1_020)
    assert est.offset_ms == 60_000.0 and est.error_ms == 10.0
    assert est.remote_now(2_000) == 62_000.0
    assert est.age_ms(61_500, local_ms=2_000) == 500.0
    assert est.age_ms(70_000, local_ms=2_000) == 0.0  # never negative


def test_the_shortest_round_trip_is_believed() -> None:
    """A slow sample does not move the estimate away from a fast one."""
    est = ClockOffset()
    est.add(sent=0, remote=-59_995, received=10)  # offset -60,000, rtt 10
    est.add(sent=100, remote=-59_000, received=2_100)  # offset -60,100, rtt 2,000
    assert est.offset_ms == -60_000.0


def test_a_pushed_clock_has_no_round_trip() -> None:
    """sent == received (a server pushing its time): offset is remote - local."""
    est = ClockOffset()
    est.add(sent=5_000, remote=65_000, received=5_000)
    assert est.offset_ms == 60_000.0 and est.error_ms == 0.0


def test_the_least_delayed_pushed_clock_wins() -> None:
    """Pushed clocks can only arrive late: the largest offset among them is believed."""
    est = ClockOffset()
    est.add(sent=1_000, remote=60_990, received=1_000)  # delivered 10 ms late
    est.add(sent=2_000, remote=62_000, received=2_000)  # on time
    est.add(sent=3_000, remote=62_950, received=3_000)  # 50 ms late
    assert est.offset_ms == 60_000.0


def test_old_samples_are_forgotten() -> None:
    """Only the last KEEP samples count, so a clock that was stepped is followed."""
    est = ClockOffset(keep=2)
    est.add(sent=0, remote=1_000, received=0)
    est.add(sent=10, remote=20, received=30)
    est.add(sent=40, remote=50, received=60)
    assert est.offset_ms == 0.0
