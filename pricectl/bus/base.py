"""The bus interface both backends implement (docs/architecture.md, "The bus").

Consumers iterate a :class:`Subscription` and get :class:`Update` (one price update,
with the exact JSON text that was published, so a server can forward it without
re-serialising) or :class:`Gap` (the stream may have lost messages, e.g. after a Redis
reconnect: call :meth:`Subscription.resync` and resync your clients from what it
returns).

The consumer's half of fencing (docs/architecture.md, "The bus") lives in one place, the
subscription: an update whose epoch is below the highest seen for its pair is dropped and
counted, and a re-read snapshot goes through the same filter, so a deposed leader's last
write can never overwrite the new leader's price, live or on resync.

A live update that skips seqs of its pair within its epoch (updates lost on the way,
e.g. written to a master that a failover was demoting) is held back behind a ``Gap``,
so the consumer's resync marks the hole with a snapshot before anything else arrives.

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

    This is the consumer's half of fencing (docs/architecture.md, "The bus"): even if a
    deposed leader's message got through, it never overwrites the new leader's price. The
    repeat rule makes a publish that was retried after a lost reply (the first attempt did
    reach Redis) harmless: its updates carry the same ``(epoch, seq)`` as the ones already
    seen.
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

    def hole(self, update: PriceUpdate) -> int | None:
        """The last seq delivered for the pair when ``update`` skips past it within the
        same epoch (updates were lost on the way), else None."""
        top = self.highest.get(update.pair)
        last = self.seqs.get(update.pair)
        if top is None or update.epoch != top or last is None:
            return None
        return last if update.seq > last + 1 else None

    def forget_seqs(self, pairs: Iterable[str]) -> None:
        """Forget where ``pairs`` were in their epoch (kept: the highest epoch, for
        fencing): a pair subscribed again starts wherever the stream is by then."""
        for pair in pairs:
            self.seqs.pop(pair, None)

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
        "_pending",
        "_rand",
        "_retry",
        "_snapshot",
        "epochs",
        "holes",
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
        #: Live updates that skipped seqs of their epoch (each was preceded by a Gap).
        self.holes = 0
        self._pending: Update | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        epochs = self.epochs
        pending, self._pending = self._pending, None
        if pending is not None and self._accept(pending):
            return pending
        async for event in self._events:
            if type(event) is Update:
                last = epochs.hole(event.update)
                if last is not None:
                    # Updates of this epoch were lost on the way (written to a master
                    # that was being demoted, a publish that failed): resync first, so
                    # the hole is marked by a snapshot, then deliver this one if the
                    # snapshot did not already carry it.
                    self.holes += 1
                    self._pending = event
                    u = event.update
                    return Gap(f"lost updates of {u.pair}: seq {last} then {u.seq}")
                if not self._accept(event):
                    continue
            return event
        raise StopAsyncIteration

    def _accept(self, event: Update) -> bool:
        epochs = self.epochs
        dropped = epochs.drops
        if epochs.accept(event.update):
            return True
        if epochs.drops != dropped and self._on_drop is not None:
            self._on_drop()
        return False

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
            # Updates while it was not subscribed are no hole of this subscription's.
            self.epochs.forget_seqs(new)
            await self._pairset.add(new)
        return new

    async def remove(self, pairs: Iterable[str]) -> list[str]:
        """Unsubscribe from some pairs at run time; the ones that were subscribed."""
        gone = [p for p in dict.fromkeys(pairs) if p in self.pairs]
        if gone:
            if self._pairset is None:
                raise BusError("this subscription cannot change its pairs")
            self.pairs = tuple(p for p in self.pairs if p not in gone)
            self.epochs.forget_seqs(gone)
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
