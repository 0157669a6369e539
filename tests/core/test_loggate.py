"""The log gate: one line per key per interval, and the count of what it held back."""

from __future__ import annotations

from pricectl.core.loggate import LogGate


def test_log_gate_allows_one_line_per_interval() -> None:
    """LogGate lets one line per key per interval through and counts the rest."""
    gate = LogGate(interval_s=10.0)
    assert gate.allow("invalid_json", now=0.0)
    assert not gate.allow("invalid_json", now=1.0)
    assert not gate.allow("invalid_json", now=9.9)
    assert gate.allow("missing_field", now=9.9)
    assert gate.take_suppressed("invalid_json") == 2
    assert gate.allow("invalid_json", now=10.0)
    assert gate.take_suppressed("invalid_json") == 0
