"""The bus interface both backends implement (DESIGN 3.3).

Consumers iterate a subscription and get :class:`Update` (one price update, with
the exact JSON text that was published, so a server can forward it without
re-serialising) or :class:`Gap` (the stream may have lost messages, e.g. after
a Redis reconnect: re-read the snapshot and resync your clients). Consumers drop
updates whose epoch is below the highest seen for that pair, and count the drops
(:class:`EpochFilter`, shared by both backends).

The first event of every subscription is ``Gap("subscribed")``: from then on the
subscription is live, so a snapshot read after it misses nothing (reading the
snapshot *before* subscribing would race with publishes in between).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pricectl.core.ticks import PriceUpdate

__all__ = ["Bus", "BusEvent", "EpochFilter", "Fence", "Gap", "Update"]


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


class EpochFilter:
    """Per pair, the highest epoch seen; updates from a lower (deposed) epoch are dropped.

    This is the consumer's half of fencing (DESIGN 3.3): even if a deposed leader's
    message got through, it never overwrites the new leader's price.
    """

    __slots__ = ("drops", "highest")

    def __init__(self) -> None:
        self.highest: dict[str, int] = {}
        #: Updates dropped because their epoch was below the pair's highest.
        self.drops = 0

    def accept(self, update: PriceUpdate) -> bool:
        """True if ``update`` should be delivered; counts it in :attr:`drops` otherwise."""
        top = self.highest.get(update.pair)
        if top is not None and update.epoch < top:
            self.drops += 1
            return False
        if top is None or update.epoch > top:
            self.highest[update.pair] = update.epoch
        return True


class Bus(Protocol):
    """What ingest publishes into and serve reads from."""

    url: str
    #: True while connected (always True for memory://).
    connected: bool
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

    async def snapshot(self, pairs: Iterable[str]) -> dict[str, PriceUpdate]:
        """The latest update of each pair that has one."""

    def subscribe(self, pairs: Iterable[str]) -> AsyncIterator[BusEvent]:
        """Updates of ``pairs`` as they are published, and a :class:`Gap` after any loss.

        The first event is ``Gap("subscribed")`` once the subscription is live. The
        iterator ends when the bus is closed; ``aclose()`` it to unsubscribe early.
        """
        ...
