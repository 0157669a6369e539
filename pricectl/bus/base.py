"""The bus interface both backends implement (DESIGN 3.3).

Consumers iterate a subscription and get :class:`Update` (one price update, with
the exact JSON text that was published, so a server can forward it without
re-serialising) or :class:`Gap` (the stream may have lost messages, e.g. after
a Redis reconnect: re-read the snapshot and resync your clients). Consumers drop
updates whose epoch is below the highest seen for that pair, and count the drops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pricectl.core.ticks import PriceUpdate

__all__ = ["Bus", "BusEvent", "Fence", "Gap", "Update"]


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


class Bus(Protocol):
    """What ingest publishes into and serve reads from."""

    url: str
    #: True while connected (always True for memory://).
    connected: bool

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
        """Updates of ``pairs`` as they are published, and a :class:`Gap` after any loss."""
        ...
