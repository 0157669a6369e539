"""The rate-limited logger: one warning per key per interval, then how many were held back."""

from __future__ import annotations

import logging

import pytest

from pricectl.logs import RateLimitedLog


def test_repeats_are_held_back_and_counted_on_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within the interval a key is warned about once; the next line counts the repeats."""
    now = [0.0]
    rlog = RateLimitedLog(logging.getLogger("pricectl.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pricectl.test"):
        rlog.warning("bus", "publish failed: %s", "down")
        now[0] = 5.0
        rlog.warning("bus", "publish failed: %s", "down")
        rlog.warning("rest", "poll failed")
        rlog.warning("bus", "publish failed: %s", "down")
        now[0] = 10.0
        rlog.warning("bus", "publish failed: %s", "still down")
    assert caplog.messages == [
        "publish failed: down",
        "poll failed",
        "publish failed: still down (and 2 more since last report)",
    ]
