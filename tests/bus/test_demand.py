"""Pairs on demand in the bus, both backends: subscriptions that change their pairs at run
time, the cluster's wanted set with its expiry, and the leader's wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pricectl.bus import Bus, Gap, Update, open_bus
from pricectl.bus.memory import MemoryBus
from pricectl.bus.redis import RedisBus
from pricectl.core.backoff import BackoffPolicy
from tests.bus.test_redis import acquire, tick
from tests.redis_server import RedisServer
from tests.waiting import UNIT

FAST = BackoffPolicy(initial=0.05, max=0.2, multiplier=2.0, reset_after=1.0)


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[Bus]:
    if request.param == "memory":
        b: Bus = MemoryBus()
        await b.start()
        yield b
        await b.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    rb = open_bus(server.url, prefix="t:")
    assert isinstance(rb, RedisBus)
    rb._reconnect = FAST
    await rb.start()
    yield rb
    await rb.close()


async def fence_for(bus: Bus):  # type: ignore[no-untyped-def]
    if isinstance(bus, MemoryBus):
        return bus.local_fence()
    assert isinstance(bus, RedisBus)
    return await acquire(bus.url, "t:", "leader-1")


async def next_update(sub: AsyncIterator[Update | Gap], timeout: float = 5.0) -> Update:
    async with asyncio.timeout(timeout * UNIT):
        while True:
            event = await anext(sub)
            if isinstance(event, Update):
                return event


async def test_subscription_adds_and_removes_pairs_at_run_time(bus: Bus) -> None:
    """A pair added is live once add returns; a pair removed is no longer delivered."""
    fence = await fence_for(bus)
    sub = bus.subscribe(["BTC/USD"])
    assert isinstance(await anext(sub), Gap)
    assert await sub.add(["SOL/USD", "BTC/USD"]) == ["SOL/USD"]
    assert sub.pairs == ("BTC/USD", "SOL/USD")
    await bus.publish([tick("SOL/USD", "1", fence.epoch, 1)], fence)
    got = await next_update(sub)
    assert got.update.pair == "SOL/USD"
    assert await sub.remove(["SOL/USD"]) == ["SOL/USD"]
    await bus.publish([tick("SOL/USD", "2", fence.epoch, 2)], fence)
    await bus.publish([tick("BTC/USD", "3", fence.epoch, 3)], fence)
    got = await next_update(sub)
    assert got.update.pair == "BTC/USD"  # the SOL/USD update was not delivered
    await sub.aclose()


async def test_a_subscription_may_start_with_no_pairs(bus: Bus) -> None:
    """A serve with nothing pinned subscribes to nothing first, then adds."""
    fence = await fence_for(bus)
    sub = bus.subscribe([])
    assert isinstance(await anext(sub), Gap)
    await sub.add(["ETH/BTC"])
    await bus.publish([tick("ETH/BTC", "0.05", fence.epoch, 1)], fence)
    assert (await next_update(sub)).update.price == "0.05"
    await sub.aclose()


async def test_wanted_keeps_the_newest_time_and_expires(bus: Bus) -> None:
    """want never moves a time back; wanted leaves out and forgets what is too old."""
    await bus.want(["A/USD", "B/USD"], wall=1000.0)
    await bus.want(["A/USD"], wall=1010.0)
    await bus.want(["A/USD"], wall=1005.0)  # an older refresh from another serve
    got = await bus.wanted(wall=1012.0, idle_grace=60.0)
    assert got == {"A/USD": pytest.approx(1010.0), "B/USD": pytest.approx(1000.0)}
    got = await bus.wanted(wall=1065.0, idle_grace=60.0)
    assert got == {"A/USD": pytest.approx(1010.0)}
    assert await bus.wanted(wall=1000.0, idle_grace=60.0) == {"A/USD": pytest.approx(1010.0)}


async def test_wake_reaches_the_demand_loop(bus: Bus) -> None:
    """want(wake=True) wakes every demand_wakeups iterator; want without wake does not."""
    wakeups = bus.demand_wakeups()
    got = asyncio.Event()
    count = 0

    async def read() -> None:
        nonlocal count
        async for _ in wakeups:
            count += 1
            got.set()

    task = asyncio.create_task(read())
    try:
        async with asyncio.timeout(5 * UNIT):  # the first yield says "listening"
            await got.wait()
        got.clear()
        start = count
        await bus.want(["C/USD"], wall=1.0, wake=True)
        async with asyncio.timeout(5 * UNIT):
            await got.wait()
        assert count == start + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
