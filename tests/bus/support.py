"""What the bus tests against real Redis deployments share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from pricectl.bus import Gap, Update
from pricectl.bus.base import Subscription
from pricectl.bus.redis import RedisBus


@contextlib.asynccontextmanager
async def running_bus(url: str) -> AsyncIterator[RedisBus]:
    """A started RedisBus on ``url`` (probing fast), closed at the end."""
    bus = RedisBus(url, probe_interval=0.2)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def collect(sub: Subscription, into: list[Update | Gap]) -> None:
    """Append every event of ``sub`` to ``into`` until cancelled."""
    async for event in sub:
        into.append(event)
