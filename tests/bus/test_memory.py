"""The in-process bus: same contract as Redis (fenced publish, snapshot, Gap first, epoch drops)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pricectl.bus import Fence, Gap, Update, open_bus
from pricectl.bus.memory import MemoryBus
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import FencedError
from tests.waiting import UNIT


def tick(pair: str, price: str, epoch: int, seq: int) -> PriceUpdate:
    symbol = pair.replace("/", "") + "T"
    return PriceUpdate(pair=pair, symbol=symbol, price=price, epoch=epoch, seq=seq, gseq=seq)


async def next_event(sub: AsyncIterator[Update | Gap]) -> Update | Gap:
    async with asyncio.timeout(2 * UNIT):
        return await anext(sub)


async def test_open_bus_memory_url_gives_a_connected_memory_bus() -> None:
    """memory:// opens the in-process bus, connected from the start."""
    bus = open_bus("memory://", prefix="x:")
    await bus.start()
    assert isinstance(bus, MemoryBus) and bus.connected and bus.reconnects == 0
    await bus.close()


async def test_subscriber_gets_gap_first_then_its_pairs_only() -> None:
    """A subscription starts with Gap('subscribed') and then carries only its pairs, raw JSON."""
    bus = MemoryBus()
    fence = bus.local_fence()
    sub = bus.subscribe(["BTC/USD"])
    first = await next_event(sub)
    assert first == Gap("subscribed")
    btc = tick("BTC/USD", "43250.12", fence.epoch, 1)
    await bus.publish([tick("ETH/USD", "2300.5", fence.epoch, 1), btc], fence)
    event = await next_event(sub)
    assert isinstance(event, Update)
    assert event.update == btc and event.raw == btc.to_json()


async def test_snapshot_holds_the_latest_update_per_pair() -> None:
    """The snapshot has the newest update of each published pair and nothing for the others."""
    bus = MemoryBus()
    fence = bus.local_fence()
    await bus.publish(
        [tick("BTC/USD", "1", fence.epoch, 1), tick("BTC/USD", "2", fence.epoch, 2)], fence
    )
    snap = await bus.snapshot(["BTC/USD", "ETH/USD"])
    assert list(snap) == ["BTC/USD"] and snap["BTC/USD"].price == "2"


async def test_superseded_or_foreign_fence_is_refused() -> None:
    """Once a new local fence is granted, the old one (and any made-up one) is refused."""
    bus = MemoryBus()
    old = bus.local_fence()
    new = bus.local_fence()
    assert new.epoch > old.epoch >= int(time.time()) - 1
    with pytest.raises(FencedError):
        await bus.publish([tick("BTC/USD", "1", old.epoch, 1)], old)
    with pytest.raises(FencedError):
        await bus.publish([tick("BTC/USD", "1", new.epoch, 1)], Fence("intruder", new.epoch))
    assert await bus.snapshot(["BTC/USD"]) == {}
    await bus.publish([tick("BTC/USD", "1", new.epoch, 1)], new)
    assert (await bus.snapshot(["BTC/USD"]))["BTC/USD"].epoch == new.epoch


async def test_lower_epoch_updates_are_dropped_per_pair_and_counted() -> None:
    """After epoch 10 of a pair, an epoch-9 update of that pair is dropped and counted; other
    pairs are unaffected."""
    bus = MemoryBus()
    fence = bus.local_fence()
    sub = bus.subscribe(["BTC/USD", "ETH/USD"])
    assert await next_event(sub) == Gap("subscribed")
    await bus.publish(
        [tick("BTC/USD", "1", 10, 1), tick("BTC/USD", "2", 9, 7), tick("ETH/USD", "3", 9, 1)],
        fence,
    )
    got = [await next_event(sub), await next_event(sub)]
    assert [(e.update.pair, e.update.epoch) for e in got if isinstance(e, Update)] == [
        ("BTC/USD", 10),
        ("ETH/USD", 9),
    ]
    assert bus.epoch_drops == 1


async def test_subscriber_that_falls_behind_gets_one_gap_instead_of_the_backlog() -> None:
    """Past the queue bound, the backlog is dropped for a Gap; newer updates follow it."""
    bus = MemoryBus(queue_bound=5)
    fence = bus.local_fence()
    sub = bus.subscribe(["BTC/USD"])
    await bus.publish([tick("BTC/USD", str(i), fence.epoch, i) for i in range(1, 8)], fence)
    assert await next_event(sub) == Gap("subscriber fell behind")
    # Gap("subscribed") and updates 1-4 filled the queue; 5 overflowed it (it is in the
    # snapshot the consumer re-reads); 6 and 7 follow the Gap.
    rest = [await next_event(sub), await next_event(sub)]
    assert [e.update.price for e in rest if isinstance(e, Update)] == ["6", "7"]
    assert (await bus.snapshot(["BTC/USD"]))["BTC/USD"].price == "7"


async def test_close_ends_open_subscriptions() -> None:
    """Closing the bus ends every subscription's iteration."""
    bus = MemoryBus()
    sub = bus.subscribe(["BTC/USD"])
    assert await next_event(sub) == Gap("subscribed")
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await next_event(sub)


async def test_a_hole_in_the_seqs_is_a_gap_before_the_update() -> None:
    """Updates of an epoch lost on the way (seq 2 never arrives): the subscription yields a
    Gap naming the hole before seq 3, and seq 3 after it (not carried by a resync here);
    a new epoch starting anywhere is no hole."""
    bus = MemoryBus()
    fence = bus.local_fence()
    sub = bus.subscribe(["BTC/USD"])
    assert await next_event(sub) == Gap("subscribed")
    await bus.publish([tick("BTC/USD", "1", fence.epoch, 1)], fence)
    assert isinstance(await next_event(sub), Update)
    await bus.publish([tick("BTC/USD", "3", fence.epoch, 3)], fence)
    gap = await next_event(sub)
    assert gap == Gap("lost updates of BTC/USD: seq 1 then 3") and sub.holes == 1
    event = await next_event(sub)
    assert isinstance(event, Update) and event.update.seq == 3
    # Resynced first: the snapshot carries seq 5, so the held-back live seq 5 is dropped.
    await bus.publish([tick("BTC/USD", "5", fence.epoch, 5)], fence)
    assert isinstance(await next_event(sub), Gap)
    snap = await sub.resync()
    assert snap["BTC/USD"].seq == 5
    await bus.publish([tick("BTC/USD", "6", fence.epoch, 6)], fence)
    event = await next_event(sub)
    assert isinstance(event, Update) and event.update.seq == 6
    newer = bus.local_fence()
    assert newer.epoch > fence.epoch
    await bus.publish([tick("BTC/USD", "7", newer.epoch, 40)], newer)
    event = await next_event(sub)
    assert isinstance(event, Update) and event.update.seq == 40 and sub.holes == 2
