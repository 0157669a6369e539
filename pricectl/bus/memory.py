"""The in-process bus (``memory://``): what ``pricectl serve`` uses when it runs ingest itself.

Same contract as the Redis bus (docs/architecture.md, "The bus") so serve cannot tell them
apart: a fenced publish, a per-pair snapshot, subscriptions that start with
``Gap("subscribed")``. The lease is in-process too: :meth:`MemoryBus.local_fence` grants the
embedded relay a fence whose epoch is the wall-clock second (or the previous epoch + 1 if
higher), so epochs keep growing across restarts of the embedded server and clients that
remember an old epoch see the new one as newer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence

from pricectl.bus.base import BusEvent, Fence, Gap, Leadership, Subscription, Update
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import FencedError

__all__ = ["DEFAULT_QUEUE_BOUND", "MemoryBus", "MemoryQueue"]

#: Events a subscriber may fall behind by before its queue is dropped for a Gap. A serve
#: process has one bus subscription; 10,000 is seconds of every pair at full rate.
DEFAULT_QUEUE_BOUND = 10_000


class MemoryQueue:
    """One subscriber's queue, an async iterator fed synchronously by publish (the raw
    events of a :class:`~pricectl.bus.base.Subscription`, which fences them by epoch)."""

    def __init__(self, bus: MemoryBus, pairs: frozenset[str], bound: int) -> None:
        self._bus = bus
        self.pairs: set[str] = set(pairs)
        self._bound = bound
        self._events: deque[BusEvent] = deque([Gap("subscribed")])
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        #: Times this subscriber fell ``bound`` events behind and got a Gap instead.
        self.overflows = 0

    def __aiter__(self) -> MemoryQueue:
        return self

    async def __anext__(self) -> BusEvent:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    async def aclose(self) -> None:
        """Unsubscribe; the iterator ends after the events already queued."""
        self._end()

    async def add(self, pairs: Sequence[str]) -> None:
        """Deliver ``pairs`` too, from the next publish on."""
        if self._closed:
            return
        for pair in pairs:
            if pair not in self.pairs:
                self.pairs.add(pair)
                self._bus._by_pair.setdefault(pair, []).append(self)

    async def remove(self, pairs: Sequence[str]) -> None:
        """Stop delivering ``pairs``."""
        for pair in pairs:
            if pair in self.pairs:
                self.pairs.discard(pair)
                subs = self._bus._by_pair.get(pair)
                if subs and self in subs:
                    subs.remove(self)

    def _deliver(self, event: Update) -> None:
        if self._closed:
            return
        if len(self._events) >= self._bound:
            # Too far behind: what is queued is older than the snapshot, so drop it all
            # and tell the consumer to resync from the snapshot (which holds ``event``).
            self._events.clear()
            self._events.append(Gap("subscriber fell behind"))
            self.overflows += 1
        else:
            self._events.append(event)
        self._wake()

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._forget(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class MemoryBus:
    """In-process bus with an in-process lease; see the module docstring."""

    def __init__(self, prefix: str = "", *, queue_bound: int = DEFAULT_QUEUE_BOUND) -> None:
        self.url = "memory://"
        self.prefix = prefix
        self.connected = True
        self.responsive = True
        self.epoch_drops = 0
        self.reconnects = 0
        self._queue_bound = queue_bound
        self._latest: dict[str, PriceUpdate] = {}
        self._by_pair: dict[str, list[MemoryQueue]] = {}
        self._fence: Fence | None = None
        self._heartbeat_at: float | None = None
        #: Pair -> wall-clock second it was last wanted (the cluster is this process).
        self._wanted: dict[str, float] = {}
        self._wakers: list[asyncio.Event] = []
        self._closed = False

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """End every open subscription and revoke the local lease."""
        subs = {id(s): s for lst in self._by_pair.values() for s in lst}
        for sub in subs.values():
            sub._end()
        self._fence = None
        self._closed = True
        for event in self._wakers:
            event.set()

    def local_fence(self) -> Fence:
        """Grant the embedded relay the lease; any earlier fence is refused from now on."""
        previous = self._fence.epoch if self._fence is not None else 0
        epoch = max(int(time.time()), previous + 1)
        token = f"memory-{os.getpid()}-{secrets.token_hex(4)}"
        self._fence = Fence(token=token, epoch=epoch)
        return self._fence

    async def publish(self, updates: Sequence[PriceUpdate], fence: Fence) -> None:
        """Store each update as its pair's latest and deliver it; FencedError if not current."""
        if fence != self._fence:
            raise FencedError(f"publish refused: epoch {fence.epoch} is not the current lease")
        for update in updates:
            self._latest[update.pair] = update
            subs = self._by_pair.get(update.pair)
            if subs:
                event = Update(update, update.to_json())
                for sub in subs:
                    sub._deliver(event)

    async def snapshot(self, pairs: Iterable[str]) -> dict[str, PriceUpdate]:
        """The latest update of each pair that has one."""
        return {p: self._latest[p] for p in pairs if p in self._latest}

    async def heartbeat(self, fence: Fence) -> None:
        """The embedded relay is alive; FencedError if ``fence`` is not the current one."""
        if fence != self._fence:
            raise FencedError(f"heartbeat refused: epoch {fence.epoch} is not the current lease")
        self._heartbeat_at = time.monotonic()

    def leadership(self) -> Leadership | None:
        """The embedded relay holds the in-process lease (it counts as the leader)."""
        at = self._heartbeat_at
        return Leadership(
            holder=self._fence.token if self._fence is not None else None,
            heartbeat_age=None if at is None else time.monotonic() - at,
        )

    def subscribe(self, pairs: Iterable[str]) -> Subscription:
        """Live at once: publishes after this call are queued for the subscriber."""
        wanted = tuple(dict.fromkeys(pairs))
        queue = MemoryQueue(self, frozenset(wanted), self._queue_bound)
        for pair in queue.pairs:
            self._by_pair.setdefault(pair, []).append(queue)
        return Subscription(wanted, queue, self.snapshot, on_drop=self._count_drop, pairset=queue)

    # --- demand ------------------------------------------------------------------------

    async def want(self, pairs: Sequence[str], wall: float, *, wake: bool = False) -> None:
        """Record ``pairs`` wanted at ``wall``; ``wake`` the embedded relay's demand loop."""
        for pair in pairs:
            if self._wanted.get(pair, -1.0) < wall:
                self._wanted[pair] = wall
        if wake:
            for event in self._wakers:
                event.set()

    async def wanted(self, wall: float, idle_grace: float) -> dict[str, float]:
        """The wanted pairs newer than ``idle_grace``; older ones are forgotten."""
        limit = wall - idle_grace
        for pair in [p for p, t in self._wanted.items() if t <= limit]:
            del self._wanted[pair]
        return dict(self._wanted)

    async def demand_wakeups(self) -> AsyncIterator[None]:
        """Yields once when live, then after each ``want(..., wake=True)``; ends when the
        bus closes."""
        event = asyncio.Event()
        self._wakers.append(event)
        try:
            yield None
            while not self._closed:
                await event.wait()
                event.clear()
                if self._closed:
                    return
                yield None
        finally:
            self._wakers.remove(event)

    def _count_drop(self) -> None:
        self.epoch_drops += 1

    def _forget(self, sub: MemoryQueue) -> None:
        for pair in sub.pairs:
            subs = self._by_pair.get(pair)
            if subs and sub in subs:
                subs.remove(sub)
