"""Shared fixture for the simulator tests: one running simulator per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pricectl.simulator import Simulator
from tests.simulator.client import start_sim


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A simulator on a free port, 20 trades per symbol per second, stopped afterwards."""
    s = await start_sim(trade_rate=20.0)
    try:
        yield s
    finally:
        await s.stop()
