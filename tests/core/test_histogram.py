"""The log-linear latency histogram: bucket layout, quantiles, merging across processes."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.histogram import NBUCKETS, Histogram, bucket_high, bucket_of


def test_small_values_have_exact_buckets() -> None:
    """Values below 128 each get their own bucket, so small latencies are exact."""
    for v in range(128):
        assert bucket_of(v) == v
        assert bucket_high(v) == v


def test_bucket_layout_matches_the_c_loader() -> None:
    """Bucket indexes equal sseload.c's bucket_of for SUB_BITS 7 (same percentiles)."""
    # Hand-computed with the C formula: msb=7 -> shift=1 -> (1<<6) + (128>>1) = 128.
    assert bucket_of(128) == 128
    assert bucket_of(129) == 128
    assert bucket_of(130) == 129
    assert bucket_of(1_000_000) == (13 << 6) + (1_000_000 >> 13)
    assert bucket_of(2**64 - 1) < NBUCKETS


@given(st.integers(min_value=0, max_value=2**63))
def test_value_lies_in_its_bucket_within_relative_error(v: int) -> None:
    """Each value is at most its bucket's high end, and that end is within 1/64 of it."""
    hi = bucket_high(bucket_of(v))
    assert v <= hi
    assert hi - v <= max(0, v) / 64
    if bucket_of(v) > 0:
        assert bucket_high(bucket_of(v) - 1) < v


def test_quantiles_of_known_values() -> None:
    """p50/p99/max of 1..1000 come back within bucket precision and never below the truth."""
    h = Histogram.of(range(1, 1001))
    assert h.count == 1000
    assert h.min == 1 and h.max == 1000
    assert 500 <= h.quantile(0.5) <= 500 * (1 + 1 / 64)
    assert 990 <= h.quantile(0.99) <= 1000
    assert h.quantile(1.0) == 1000
    assert h.mean == pytest.approx(500.5)


def test_empty_histogram_reads_zero() -> None:
    """An empty histogram reports 0 for quantiles and mean rather than failing."""
    h = Histogram()
    assert h.quantile(0.99) == 0
    assert h.mean == 0.0


def test_quantile_out_of_range_is_an_error() -> None:
    """A quantile outside 0..1 is refused with a message."""
    with pytest.raises(ValueError, match=r"0\.\.1"):
        Histogram.of([1]).quantile(1.5)


def test_negative_values_count_as_zero() -> None:
    """A negative latency (clock skew) is recorded as 0, not lost."""
    h = Histogram()
    h.record(-5)
    assert h.count == 1 and h.max == 0 and h.quantile(0.5) == 0


def test_merge_equals_recording_everything_in_one() -> None:
    """Merging per-process histograms gives exactly the histogram of all values."""
    rng = random.Random(7)
    values = [int(rng.lognormvariate(16, 1.5)) for _ in range(5000)]
    parts = [Histogram.of(values[i::3]) for i in range(3)]
    merged = Histogram()
    for p in parts:
        merged.merge(p)
    whole = Histogram.of(values)
    assert merged.counts == whole.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (
        whole.count,
        whole.total,
        whole.min,
        whole.max,
    )
    for q in (0.5, 0.9, 0.99, 0.999):
        assert merged.quantile(q) == whole.quantile(q)


def test_dict_round_trip_through_json() -> None:
    """to_dict/from_dict survive JSON (string bucket keys) unchanged."""
    h = Histogram.of([3, 300, 30_000, 3_000_000, 3_000_000])
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.counts == h.counts
    assert back.quantile(0.5) == h.quantile(0.5)
    assert (back.count, back.min, back.max, back.total) == (h.count, h.min, h.max, h.total)


def test_from_dict_rejects_inconsistent_counts() -> None:
    """A histogram whose buckets do not add up to its count is refused."""
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_dict({"buckets": {"5": 2}, "count": 3, "total": 10, "min": 5, "max": 5})


def test_reset_forgets_everything() -> None:
    """reset() empties the histogram (the live-p99 interval histogram relies on it)."""
    h = Histogram.of([10, 20])
    h.reset()
    assert h.count == 0 and h.max == 0 and sum(h.counts) == 0


@given(st.lists(st.integers(min_value=-1000, max_value=2**63), min_size=1, max_size=50))
def test_record_fills_the_bucket_of_each_value(values: list[int]) -> None:
    """record (bucket_of written out for speed) fills bucket_of(v), with exact count/sum/min/max."""
    h = Histogram()
    for v in values:
        h.record(v)
    want = [0] * NBUCKETS
    for v in values:
        want[bucket_of(v)] += 1
    clamped = [max(0, v) for v in values]
    assert h.counts == want
    assert (h.count, h.total, h.min, h.max) == (
        len(values),
        sum(clamped),
        min(clamped),
        max(clamped),
    )


def test_min_of_an_empty_histogram_is_zero_until_the_first_value() -> None:
    """An empty histogram reads min 0; the first value recorded becomes the minimum."""
    h = Histogram()
    assert h.min == 0
    h.record(5_000)
    assert h.min == 5_000
    h.reset()
    assert h.min == 0
    empty = Histogram.from_dict(Histogram().to_dict())
    empty.record(7)
    assert empty.min == 7
