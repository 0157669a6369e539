"""The bus interface both backends implement (DESIGN 3.3).

Consumers iterate a :class:`Subscription` and get :class:`Update` (one price update,
with the exact JSON text that was published, so a server can forward it without
re-serialising) or :class:`Gap` (the stream may have lost messages, e.g. after a Redis
reconnect: call :meth:`Subscription.resync` and resync your clients from what it
returns).

The consumer's half of fencing (DESIGN 3.3) lives in one place, the subscription: an
update whose epoch is below the highest seen for its pair is dropped and counted, and a
re-read snapshot goes through the same filter, so a deposed leader's last write can
never overwrite the new leader's price, live or on resync.

The first event of every subscription is ``Gap("subscribed")``: from then on the
subscription is live, so a snapshot read after it misses nothing (reading the
snapshot *before* subscribing would race with publishes in between).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import BusError

__all__ = [
    "RESYNC_RETRY",
    "Bus",
    "BusEvent",
    "EpochFilter",
    "Fence",
    "Gap",
    "Leadership",
    "PairSet",
    "Subscription",
    "Update",
]

log = logging.getLogger(__name__)

#: Delays between snapshot re-reads after a gap while the bus does not answer: short,
#: because the bus is our own infrastructure and every client waits for the resync.
RESYNC_RETRY = BackoffPolicy(initial=0.2, max=5.0, multiplier=2.0, reset_after=10.0)


@dataclass(frozen=True, slots=True)
class Fence:
    """The caller's lease: a publish is accepted only while the bus agrees it holds it."""

    token: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Update:
    """One update from the bus, with the JSON text as published."""

    update: PriceUpdate
    raw: str


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages may have been lost (reconnect, resubscribe). ``reason`` is for logs."""

    reason: str


BusEvent = Update | Gap


@dataclass(frozen=True, slots=True)
class Leadership:
    """What a consumer can tell of the publisher: who holds the lease, and how long ago
    (seconds, the consumer's monotonic clock) its heartbeat last moved (None: never)."""

    holder: str | None
    heartbeat_age: float | None


class EpochFilter:
    """Per pair, the highest epoch seen and the highest seq within it: updates from a lower
    (deposed) epoch are dropped, and so are live repeats of a seq already delivered.

    This is the consumer's half of fencing (DESIGN 3.3): even if a deposed leader's
    message got through, it never overwrites the new leader's price. The repeat rule
    makes a publish that was retried after a lost reply (the first attempt did reach
    Redis) harmless: its updates carry the same ``(epoch, seq)`` as the ones already seen.
    """

    __slots__ = ("drops", "duplicates", "highest", "seqs")

    def __init__(self) -> None:
        self.highest: dict[str, int] = {}
        #: Highest seq seen for each pair within its highest epoch.
        self.seqs: dict[str, int] = {}
        #: Updates dropped because their epoch was below the pair's highest.
        self.drops = 0
        #: Live updates dropped because their (epoch, seq) had already been delivered.
        self.duplicates = 0

    def accept(self, update: PriceUpdate, *, live: bool = True) -> bool:
        """True if ``update`` should be delivered; counts it otherwise.

        ``live=False`` for a snapshot entry: the latest value is delivered again after a
        gap on purpose, so only the epoch rule applies to it.
        """
        pair = update.pair
        top = self.highest.get(pair)
        if top is not None and update.epoch < top:
            self.drops += 1
            return False
        if top is None or update.epoch > top:
            self.highest[pair] = update.epoch
            self.seqs[pair] = update.seq
            return True
        last = self.seqs.get(pair, 0)
        if update.seq <= last:
            if live:
                self.duplicates += 1
                return False
            return True
        self.seqs[pair] = update.seq
        return True


#: Reads the latest update of each of the given pairs (``Bus.snapshot``).
SnapshotReader = Callable[[Iterable[str]], Awaitable[dict[str, PriceUpdate]]]


class PairSet(Protocol):
    """What a backend's raw event stream offers to change its pairs at run time."""

    async def add(self, pairs: Sequence[str]) -> None:
        """Start delivering ``pairs`` (live once this returns)."""

    async def remove(self, pairs: Sequence[str]) -> None:
        """Stop delivering ``pairs``."""


class Subscription:
    """What :meth:`Bus.subscribe` returns, for every backend: an async iterator of
    :class:`BusEvent` that fences by epoch, with :meth:`resync` and :meth:`aclose`.

    ``events`` is the backend's raw stream (it yields ``Gap("subscribed")`` first and a
    Gap after any loss, and ends when the bus closes); ``snapshot`` reads the backend's
    snapshot; ``on_drop`` is called for every update dropped by the epoch filter, so the
    bus can count drops across its subscriptions.
    """

    __slots__ = (
        "_events",
        "_on_drop",
        "_pairset",
        "_rand",
        "_retry",
        "_snapshot",
        "epochs",
        "pairs",
    )

    def __init__(
        self,
        pairs: Iterable[str],
        events: AsyncIterator[BusEvent],
        snapshot: SnapshotReader,
        *,
        on_drop: Callable[[], None] | None = None,
        retry: BackoffPolicy = RESYNC_RETRY,
        rand: Callable[[], float] = random.random,
        pairset: PairSet | None = None,
    ) -> None:
        self.pairs: tuple[str, ...] = tuple(dict.fromkeys(pairs))
        self._pairset = pairset
        self._events = events
        self._snapshot = snapshot
        self._on_drop = on_drop
        self._retry = retry
        self._rand = rand
        #: The highest epoch seen per pair, live or in a snapshot.
        self.epochs = EpochFilter()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        epochs = self.epochs
        async for event in self._events:
            if type(event) is Update:
                dropped = epochs.drops
                if not epochs.accept(event.update):
                    if epochs.drops != dropped and self._on_drop is not None:
                        self._on_drop()
                    continue
            return event
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribe; the iterator ends."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def add(self, pairs: Iterable[str]) -> list[str]:
        """Subscribe to more pairs at run time; the ones that were new. Once this returns
        they are live, so a snapshot read after it misses nothing of them."""
        new = [p for p in dict.fromkeys(pairs) if p not in self.pairs]
        if new:
            if self._pairset is None:
                raise BusError("this subscription cannot change its pairs")
            self.pairs = self.pairs + tuple(new)
            await self._pairset.add(new)
        return new

    async def remove(self, pairs: Iterable[str]) -> list[str]:
        """Unsubscribe from some pairs at run time; the ones that were subscribed."""
        gone = [p for p in dict.fromkeys(pairs) if p in self.pairs]
        if gone:
            if self._pairset is None:
                raise BusError("this subscription cannot change its pairs")
            self.pairs = tuple(p for p in self.pairs if p not in gone)
            await self._pairset.remove(gone)
        return gone

    async def resync(self, reason: str = "gap") -> dict[str, PriceUpdate]:
        """Re-read the snapshot of this subscription's pairs after a Gap, fenced by epoch.

        Retries with backoff (:data:`RESYNC_RETRY`) until the bus answers, logging each
        failure: after a gap every client waits for this, and the bus reconnects by
        itself. Entries from an epoch below the pair's highest are dropped and counted.
        """
        backoff = Backoff(self._retry, rand=self._rand)
        while True:
            try:
                snap = await self._snapshot(self.pairs)
                break
            except BusError as exc:
                delay = backoff.next_delay(time.monotonic())
                log.warning("snapshot after %s failed (%s); retrying in %.1fs", reason, exc, delay)
                await asyncio.sleep(delay)
        out: dict[str, PriceUpdate] = {}
        for pair, update in snap.items():
            if self.epochs.accept(update, live=False):
                out[pair] = update
            elif self._on_drop is not None:
                self._on_drop()
        return out


class Bus(Protocol):
    """What ingest publishes into and serve reads from."""

    url: str
    #: True while connected (always True for memory://).
    connected: bool
    #: False once the bus has not answered a PING within PING_LIMIT (health: down).
    responsive: bool
    #: Updates dropped by subscriptions because their epoch was below the pair's highest.
    epoch_drops: int
    #: Times a subscription had to reconnect (always 0 for memory://).
    reconnects: int

    async def start(self) -> None:
        """Connect. Must not raise if the backend is unreachable: retry in the background."""

    async def close(self) -> None:
        """Disconnect and end every open subscription."""

    async def publish(self, updates: Sequence[PriceUpdate], fence: Fence) -> None:
        """Write the snapshot and publish each update, atomically fenced.

        Raises ``FencedError`` when the bus refuses the fence (the caller must step
        down at once) and ``BusError`` when the bus is unreachable.
        """

    async def heartbeat(self, fence: Fence) -> None:
        """Tell consumers the leader under ``fence`` is alive (fenced like a publish)."""

    def leadership(self) -> Leadership | None:
        """Who holds the lease and how fresh its heartbeat is; None until first known."""

    async def snapshot(self, pairs: Iterable[str]) -> dict[str, PriceUpdate]:
        """The latest update of each pair that has one."""

    def subscribe(self, pairs: Iterable[str]) -> Subscription:
        """Updates of ``pairs`` as they are published, and a :class:`Gap` after any loss.

        The first event is ``Gap("subscribed")`` once the subscription is live. The
        iterator ends when the bus is closed; ``aclose()`` it to unsubscribe early.
        :meth:`Subscription.add` / :meth:`Subscription.remove` change its pairs.
        """
        ...

    # --- demand (docs/protocol.md, "Pairs on demand") ------------------------------

    async def want(self, pairs: Sequence[str], wall: float, *, wake: bool = False) -> None:
        """Record ``pairs`` as wanted at wall-clock second ``wall`` (a time only ever
        moves forward); ``wake``: tell the leader now (a pair it may not have yet).
        Raises ``BusError`` when the bus is unreachable."""

    async def wanted(self, wall: float, idle_grace: float) -> dict[str, float]:
        """The cluster's wanted pairs, each with the wall-clock second it was last
        wanted, leaving out (and forgetting) those older than ``idle_grace``."""
        ...

    def demand_wakeups(self) -> AsyncIterator[None]:
        """Yields once when listening (read the whole set then), each time a serve woke
        the leader, and after a reconnect (one may have been missed); ends when the bus
        closes."""
        ...
