"""Durations: 250ms, 15s, 2m, 23h, read and written back, and the field that marks one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.duration import duration, format_duration, is_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("15s", 15.0), ("2m", 120.0), ("23h", 82800.0), (3, 3.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    """Durations accept ms, s, m, h and bare numbers of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten", "-1s", "5 days", True, None, "1.2.3s"])
def test_parse_duration_rejects(text: object) -> None:
    """Anything else is refused with what was expected."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips(ms: int) -> None:
    """format_duration is the inverse of parse_duration for whole milliseconds."""
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


def test_duration_fields_are_marked() -> None:
    """duration() gives a field its default and the mark config reads; others are unmarked."""

    @dataclass(frozen=True)
    class Timings:
        timeout: float = duration(2.5)
        ratio: float = 2.0

    timeout, ratio = dataclasses.fields(Timings)
    assert Timings().timeout == 2.5
    assert is_duration(timeout) and not is_duration(ratio)
