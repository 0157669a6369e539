"""A log-linear (HDR-style) histogram of non-negative integers, mergeable across processes.

``pricectl loadtest`` records one latency per delivered event (nanoseconds, up to a few
hundred thousand a second over several processes), so recording must be one index
computation and one list increment, and the per-process histograms must add up exactly.

Buckets: values below 128 have a bucket each; above that, every power of two is split
into 64 equal sub-buckets, so a bucket's width is at most 1/64 of its lower bound and
any quantile read back is within 1.6 % (0.8 % from the midpoint) of a recorded value.
This is the same layout as the independent C loader ``sseload.c`` that the benchmarks
can drive (``SUB_BITS 7``; benchmarks/README.md), so the two loaders' percentiles are
read off identical buckets.

Quantiles return the highest value of the bucket holding the wanted rank, clamped to
the exact maximum recorded (as HdrHistogram and ``sseload`` do), so a reported p99 is
never below the true p99.

Example::

    >>> h = Histogram()
    >>> for v in (1_000, 2_000, 3_000, 50_000):
    ...     h.record(v)
    >>> h.count, h.max, h.quantile(0.5) <= 2_015
    (4, 50000, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["NBUCKETS", "SUB_BITS", "Histogram", "bucket_high", "bucket_of"]

#: log2 of the number of exactly-recorded small values; 2**(SUB_BITS-1) sub-buckets per octave.
SUB_BITS = 7
_HALF = 1 << (SUB_BITS - 1)
_SMALL = 1 << SUB_BITS
#: Buckets needed for any 64-bit value.
NBUCKETS = (64 - SUB_BITS + 1) * _HALF + _HALF
#: ``min`` of an empty histogram, internally: above any value, so ``record`` needs no
#: "is this the first value" test (the ``min`` property reads 0 when empty).
_NO_MIN = 1 << 64


def bucket_of(value: int) -> int:
    """The bucket index of ``value`` (negative values count as 0)."""
    if value < _SMALL:
        return value if value > 0 else 0
    shift = value.bit_length() - SUB_BITS
    return (shift << (SUB_BITS - 1)) + (value >> shift)


def bucket_high(index: int) -> int:
    """The highest value that falls in bucket ``index``."""
    if index < _SMALL:
        return index
    shift = index // _HALF - 1
    sub = index - shift * _HALF
    return ((sub + 1) << shift) - 1


class Histogram:
    """Counts per log-linear bucket plus exact count, sum, min and max.

    ``record`` is the hot path; ``merge`` / ``to_dict`` / ``from_dict`` carry a
    worker process's histogram to the parent, which adds them up.
    """

    __slots__ = ("_min", "count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * NBUCKETS
        self.count = 0
        self.total = 0
        self._min = _NO_MIN
        self.max = 0

    @property
    def min(self) -> int:
        """The smallest value recorded (0 when empty)."""
        return self._min if self.count else 0

    @min.setter
    def min(self, value: int) -> None:
        self._min = value

    def record(self, value: int) -> None:
        """Add ``value``. Negative values are recorded as 0.

        The load tester calls this for every event (a few hundred thousand a second), so
        it is :func:`bucket_of` written out with the layout's numbers as literals
        (``SUB_BITS`` 7: 128 exact values, 64 sub-buckets per octave; a test checks
        both agree) and no branch that the usual value does not need.
        """
        if value >= 128:
            shift = value.bit_length() - 7
            self.counts[(shift << 6) + (value >> shift)] += 1
        else:
            if value < 0:
                value = 0
            self.counts[value] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        if value < self._min:
            self._min = value

    def merge(self, other: Histogram) -> None:
        """Add every count of ``other`` to this histogram."""
        if other.count == 0:
            return
        mine = self.counts
        for i, c in enumerate(other.counts):
            if c:
                mine[i] += c
        if other.min < self._min:
            self._min = other.min
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def quantile(self, q: float) -> int:
        """The value at quantile ``q`` (0..1): the high end of its bucket, at most ``max``."""
        if self.count == 0:
            return 0
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        want = max(1, math.ceil(q * self.count - 1e-9))
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= want:
                    return min(bucket_high(i), self.max)
        return self.max  # pragma: no cover - counts always add up to count

    @property
    def mean(self) -> float:
        """The exact mean of the recorded values (0.0 when empty)."""
        return self.total / self.count if self.count else 0.0

    def reset(self) -> None:
        """Forget everything (used for the per-interval histogram behind live p99)."""
        self.counts = [0] * NBUCKETS
        self.count = self.total = self.max = 0
        self._min = _NO_MIN

    def to_dict(self) -> dict[str, object]:
        """A compact, JSON- and pickle-friendly form: only the non-empty buckets."""
        return {
            "buckets": {i: c for i, c in enumerate(self.counts) if c},
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        """The inverse of :meth:`to_dict` (bucket keys may be strings after JSON)."""
        h = cls()
        buckets = data.get("buckets", {})
        if not isinstance(buckets, Mapping):
            raise ValueError("histogram: buckets must be a mapping")
        for key, c in buckets.items():
            h.counts[int(key)] += int(c)
        h.count = _int(data, "count")
        h.total = _int(data, "total")
        h.min = _int(data, "min") if h.count else _NO_MIN
        h.max = _int(data, "max")
        if sum(h.counts) != h.count:
            raise ValueError("histogram: bucket counts do not add up to count")
        return h

    @classmethod
    def of(cls, values: Iterable[int]) -> Histogram:
        """A histogram of ``values`` (handy in tests and small reports)."""
        h = cls()
        for v in values:
            h.record(v)
        return h


def _int(data: Mapping[str, object], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"histogram: {key} must be an integer")
    return value
