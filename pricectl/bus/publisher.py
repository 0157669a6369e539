"""Natural batching for the relay: updates that arrive while a publish is in flight go out
together in the next one, as one fenced script call.

One script call costs a Redis round trip plus redis-py's per-call overhead (hundreds of
microseconds on a busy machine), so publishing update by update tops out at a few
thousand a second. Coalescing adds no delay when the feed is quiet (a lone update goes
out at once) and grows the batch by itself when the feed is busy: the faster updates
arrive, the more each call carries (bench.py: ``--mode submit``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pricectl.bus.base import Bus, Fence
from pricectl.core.ticks import PriceUpdate

__all__ = ["Publisher"]


class Publisher:
    """Owns the fenced publishes of one leadership term. Run :meth:`run` as a task.

    ``run`` raises what ``bus.publish`` raises: ``FencedError`` (the caller must step down
    at once: ``leader.lost()``) or ``BusError`` (Redis unreachable; the batch in flight is
    lost, later submissions stay queued for a new ``run``).
    """

    def __init__(self, bus: Bus, fence: Fence, max_batch: int = 1000) -> None:
        self.bus = bus
        self.fence = fence
        self.max_batch = max_batch
        #: Updates published, and script calls it took.
        self.published = 0
        self.batches = 0
        self._pending: list[PriceUpdate] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, update: PriceUpdate) -> None:
        """Queue one update (never blocks); it goes out with whatever else is queued."""
        self._pending.append(update)
        self._idle.clear()
        self._wake.set()

    def submit_many(self, updates: Sequence[PriceUpdate]) -> None:
        """Queue several updates (a REST snapshot on takeover, say)."""
        if updates:
            self._pending.extend(updates)
            self._idle.clear()
            self._wake.set()

    @property
    def pending(self) -> int:
        """Updates queued and not yet handed to the bus."""
        return len(self._pending)

    async def flush(self) -> None:
        """Wait until everything submitted so far has been published (needs :meth:`run`)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Publish queued updates, one batch per call, until cancelled or the bus raises."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self.bus.publish(batch, self.fence)
                self.published += len(batch)
                self.batches += 1
            self._idle.set()
