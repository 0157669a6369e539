"""Waiting on a condition with a deadline, for the benchmark drivers (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["until"]


async def until(
    predicate: Callable[[], object], timeout: float, what: str = "the condition"
) -> None:
    """Return once ``predicate()`` is true; SystemExit naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)
