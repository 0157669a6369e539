"""Wait on a condition with a deadline: the only way tests synchronise (never a bare sleep)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

__all__ = ["UNIT", "until", "wait_for"]

#: One time unit in seconds; PRICECTL_TEST_TIME_SCALE stretches every timeout on a slow machine.
UNIT = float(os.environ.get("PRICECTL_TEST_TIME_SCALE", "1"))

_POLL = 0.01


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it is truthy; after ``timeout`` fail naming ``what``."""
    deadline = time.monotonic() + timeout * UNIT
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * UNIT:.1f}s waiting for {what}")
        time.sleep(_POLL)


async def until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float, what: str
) -> object:
    """Async :func:`wait_for`: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout * UNIT
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * UNIT:.1f}s waiting for {what}")
        await asyncio.sleep(_POLL)
