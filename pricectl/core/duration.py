"""Durations: seconds as a float, written ``250ms``, ``15s``, ``2m``, ``23h``
(config/pricectl.yaml).

A policy says which of its fields are durations by declaring them with :func:`duration`.
The config reads those fields with :func:`parse_duration` and writes them back with
:func:`format_duration`, and a policy that refuses a value shows it the way it was
written (``15s``, not ``15.0``)::

    @dataclass(frozen=True)
    class LeasePolicy:
        ttl: float = duration(15.0)

    parse_duration("250ms"), format_duration(0.25)   # (0.25, "250ms")
"""

from __future__ import annotations

import re
from dataclasses import Field, field
from typing import Any

__all__ = ["DURATION", "duration", "format_duration", "is_duration", "parse_duration"]

#: The field metadata key that marks a duration.
DURATION = "duration"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(default: float) -> float:
    """A dataclass field holding seconds that the config reads and writes as a duration."""
    return field(default=default, metadata={DURATION: True})


def is_duration(f: Field[Any]) -> bool:
    """Whether ``f`` was declared with :func:`duration`."""
    return bool(f.metadata.get(DURATION))


def parse_duration(value: object) -> float:
    """``"250ms"`` -> 0.25, ``"15s"`` -> 15.0, ``"2m"`` -> 120.0, ``3`` -> 3.0 (seconds)."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 250ms, 15s, 2m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration >= 0")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2) or "s"]
    raise ValueError("a duration such as 250ms, 15s, 2m")


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, shortest exact unit: 0.25 -> ``250ms``."""
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= scale and (seconds / scale).is_integer():
            return f"{int(seconds / scale)}{unit}"
    ms = seconds * 1000.0
    if ms.is_integer():
        return f"{int(ms)}ms"
    return f"{seconds}s"
