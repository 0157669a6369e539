"""The Redis bus against a real redis-server: fenced publish, prefixes, reconnects, late Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pricectl.bus import Fence, Gap, Update, open_bus
from pricectl.bus import keys as bus_keys
from pricectl.bus.leader import ACQUIRE_SCRIPT
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.core.backoff import BackoffPolicy
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import BusError, FencedError
from tests.redis_server import RedisServer
from tests.waiting import UNIT, until

FAST = BackoffPolicy(initial=0.05, max=0.2, multiplier=2.0, reset_after=1.0)


def tick(pair: str, price: str, epoch: int, seq: int) -> PriceUpdate:
    symbol = pair.replace("/", "") + "T"
    return PriceUpdate(pair=pair, symbol=symbol, price=price, epoch=epoch, seq=seq, gseq=seq)


async def next_event(sub: AsyncIterator[Update | Gap], timeout: float = 5.0) -> Update | Gap:
    async with asyncio.timeout(timeout * UNIT):
        return await anext(sub)


async def acquire(url: str, prefix: str, token: str, ttl_ms: int = 10_000) -> Fence:
    """Take the lease with the leader's own acquire script (no Leader loop needed here)."""
    client = connect_redis(url)
    try:
        epoch = await client.eval(
            ACQUIRE_SCRIPT, 2, bus_keys.leader(prefix), bus_keys.epoch(prefix), token, ttl_ms
        )
    finally:
        await client.aclose()
    assert epoch, f"{token} could not acquire the lease"
    return Fence(token, int(epoch))


async def open_redis_bus(url: str, prefix: str = "") -> RedisBus:
    bus = open_bus(url, prefix=prefix)
    assert isinstance(bus, RedisBus)
    bus._reconnect = FAST
    await bus.start()
    return bus


async def test_publish_reaches_subscriber_and_snapshot_within_its_prefix(
    redis_server: RedisServer,
) -> None:
    """A fenced publish reaches subscribers and the snapshot of its own prefix only."""
    a = await open_redis_bus(redis_server.url, "a:")
    b = await open_redis_bus(redis_server.url, "b:")
    try:
        fa = await acquire(redis_server.url, "a:", "leader-a")
        fb = await acquire(redis_server.url, "b:", "leader-b")
        sub_a = a.subscribe(["BTC/USD"])
        sub_b = b.subscribe(["BTC/USD"])
        assert await next_event(sub_a) == Gap("subscribed")
        assert await next_event(sub_b) == Gap("subscribed")
        sent = [tick("BTC/USD", "43250.12", fa.epoch, 1), tick("ETH/USD", "2300", fa.epoch, 1)]
        await a.publish(sent, fa)
        event = await next_event(sub_a)
        assert isinstance(event, Update)
        assert event.update == sent[0] and event.raw == sent[0].to_json()
        # b sees only b's publish, never a's.
        await b.publish([tick("BTC/USD", "1.00", fb.epoch, 1)], fb)
        event = await next_event(sub_b)
        assert isinstance(event, Update) and event.update.price == "1.00"
        assert await a.snapshot(["BTC/USD", "ETH/USD", "SOL/USD"]) == {
            "BTC/USD": sent[0],
            "ETH/USD": sent[1],
        }
        assert (await b.snapshot(["BTC/USD", "ETH/USD"]))["BTC/USD"].price == "1.00"
        assert list(await b.snapshot(["ETH/USD"])) == []
        assert a.connected and b.connected
    finally:
        await a.close()
        await b.close()


async def test_publish_with_wrong_token_or_old_epoch_is_refused_by_redis(
    redis_server: RedisServer,
) -> None:
    """Redis refuses (FencedError) a publish whose token is not the leader's or whose epoch
    is not current, and writes nothing."""
    bus = await open_redis_bus(redis_server.url)
    try:
        old = await acquire(redis_server.url, "", "leader-1")
        with pytest.raises(FencedError):
            await bus.publish([tick("BTC/USD", "1", old.epoch, 1)], Fence("intruder", old.epoch))
        # leader-1 loses the key; leader-2 takes a new term.
        client = connect_redis(redis_server.url)
        await client.delete(bus_keys.leader(""))
        await client.aclose()
        new = await acquire(redis_server.url, "", "leader-2")
        assert new.epoch > old.epoch
        with pytest.raises(FencedError):
            await bus.publish([tick("BTC/USD", "1", old.epoch, 1)], old)
        # Same token as the holder but a stale epoch is refused too.
        with pytest.raises(FencedError):
            await bus.publish([tick("BTC/USD", "1", old.epoch, 1)], Fence("leader-2", old.epoch))
        assert await bus.snapshot(["BTC/USD"]) == {}
        await bus.publish([tick("BTC/USD", "2", new.epoch, 1)], new)
        assert (await bus.snapshot(["BTC/USD"]))["BTC/USD"].price == "2"
    finally:
        await bus.close()


async def test_lower_epoch_update_is_dropped_by_the_consumer_and_counted(
    redis_server: RedisServer,
) -> None:
    """An update stamped with an epoch below the pair's highest seen is dropped and counted."""
    bus = await open_redis_bus(redis_server.url)
    try:
        fence = await acquire(redis_server.url, "", "leader")
        sub = bus.subscribe(["BTC/USD"])
        assert await next_event(sub) == Gap("subscribed")
        await bus.publish(
            [
                tick("BTC/USD", "1", fence.epoch, 1),
                tick("BTC/USD", "2", fence.epoch - 1, 2),
                tick("BTC/USD", "3", fence.epoch, 2),
            ],
            fence,
        )
        prices = []
        for _ in range(2):
            event = await next_event(sub)
            assert isinstance(event, Update)
            prices.append(event.update.price)
        assert prices == ["1", "3"] and bus.epoch_drops == 1
    finally:
        await bus.close()


async def test_subscription_survives_a_redis_restart_with_a_gap(redis_server: RedisServer) -> None:
    """Redis killed and restarted on its port: the subscription yields Gap('redis reconnect'),
    then carries updates again; publish meanwhile raises BusError, not FencedError."""
    bus = await open_redis_bus(redis_server.url)
    try:
        fence = await acquire(redis_server.url, "", "leader")
        sub = bus.subscribe(["BTC/USD"])
        assert await next_event(sub) == Gap("subscribed")
        redis_server.kill()
        pending = asyncio.ensure_future(next_event(sub, timeout=15.0))
        await until(lambda: not bus.connected, 5, "the bus to notice Redis is gone")
        with pytest.raises(BusError) as info:
            await bus.publish([tick("BTC/USD", "1", fence.epoch, 1)], fence)
        assert not isinstance(info.value, FencedError)
        redis_server.start()
        assert await pending == Gap("redis reconnect")
        assert bus.reconnects == 1 and bus.connected
        # The restarted Redis has no lease: the old fence is refused, a new one works.
        with pytest.raises(FencedError):
            await bus.publish([tick("BTC/USD", "1", fence.epoch, 1)], fence)
        fresh = await acquire(redis_server.url, "", "leader")
        await bus.publish([tick("BTC/USD", "5", fresh.epoch, 1)], fresh)
        event = await next_event(sub)
        assert isinstance(event, Update) and event.update.price == "5"
    finally:
        await bus.close()


async def test_start_with_redis_absent_then_redis_appears(redis_server: RedisServer) -> None:
    """start() does not raise with Redis down; once Redis appears the bus connects and the
    waiting subscription goes live."""
    redis_server.kill()
    bus = await open_redis_bus(redis_server.url)
    try:
        assert not bus.connected
        with pytest.raises(BusError):
            await bus.snapshot(["BTC/USD"])
        sub = bus.subscribe(["BTC/USD"])
        pending = asyncio.ensure_future(next_event(sub, timeout=15.0))
        redis_server.start()
        assert await pending == Gap("subscribed")
        await until(lambda: bus.connected, 5, "the bus to report connected")
        fence = await acquire(redis_server.url, "", "leader")
        await bus.publish([tick("BTC/USD", "7", fence.epoch, 1)], fence)
        event = await next_event(sub)
        assert isinstance(event, Update) and event.update.price == "7"
    finally:
        await bus.close()


async def test_close_ends_a_subscription(redis_server: RedisServer) -> None:
    """Closing the bus ends an open subscription instead of leaving it blocked."""
    bus = await open_redis_bus(redis_server.url)
    sub = bus.subscribe(["BTC/USD"])
    assert await next_event(sub) == Gap("subscribed")
    pending = asyncio.ensure_future(next_event(sub))
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await pending


async def test_resync_is_fenced_like_live_updates(redis_server: RedisServer) -> None:
    """After a live update of a newer epoch, a snapshot entry from an older epoch is not
    handed back by resync (the deposed leader's last write) and is counted as a drop."""
    bus = await open_redis_bus(redis_server.url)
    try:
        old = await acquire(redis_server.url, "", "old")
        client = connect_redis(redis_server.url)
        await client.delete(bus_keys.leader(""))
        await client.aclose()
        new = await acquire(redis_server.url, "", "new")
        sub = bus.subscribe(["BTC/USD", "ETH/USD"])
        assert await next_event(sub) == Gap("subscribed")
        await bus.publish([tick("BTC/USD", "2", new.epoch, 1)], new)
        event = await next_event(sub)
        assert isinstance(event, Update) and event.update.epoch == new.epoch
        # The old leader's write lands in the snapshot behind Redis's back (as a write that
        # reached a replica before a failover would): resync must not hand it back.
        raw = tick("BTC/USD", "1", old.epoch, 9).to_json()
        client = connect_redis(redis_server.url)
        await client.hset(bus_keys.latest(""), "BTC/USD", raw)
        await client.hset(
            bus_keys.latest(""), "ETH/USD", tick("ETH/USD", "7", old.epoch, 1).to_json()
        )
        await client.aclose()
        snap = await sub.resync("test")
        assert "BTC/USD" not in snap and bus.epoch_drops == 1
        assert snap["ETH/USD"].price == "7"  # no newer epoch seen for ETH: accepted
    finally:
        await bus.close()


async def test_resync_retries_until_redis_answers(redis_server: RedisServer) -> None:
    """resync() keeps re-reading the snapshot with backoff while Redis is down and returns
    what Redis holds once it is back, instead of failing the consumer."""
    bus = await open_redis_bus(redis_server.url)
    try:
        fence = await acquire(redis_server.url, "", "leader")
        sub = bus.subscribe(["BTC/USD"])
        assert await next_event(sub) == Gap("subscribed")
        redis_server.kill()
        pending = asyncio.ensure_future(sub.resync("redis down"))
        await until(lambda: not bus.connected, 5, "the bus to notice Redis is gone")
        assert not pending.done()
        redis_server.start()
        fresh = await acquire(redis_server.url, "", "leader")
        await bus.publish([tick("BTC/USD", "5", fresh.epoch, 1)], fresh)
        async with asyncio.timeout(10 * UNIT):
            snap = await pending
        # The retry may land between the restart and the publish: the restarted Redis held
        # nothing then, and that is what it returns; a resync after the publish has it.
        if not snap:
            snap = await sub.resync("after the publish")
        assert snap["BTC/USD"].price == "5" and snap["BTC/USD"].epoch == fresh.epoch != fence.epoch
    finally:
        await bus.close()


async def test_a_cancel_at_any_point_of_a_command_is_never_swallowed(
    redis_server: RedisServer,
) -> None:
    """A task cancelled at every event-loop step of a command ends cancelled, every time.

    redis-py's socket_timeout sends through asyncio.wait_for, which on Python 3.11 drops a
    cancel that lands as the send completes (the task then carries on as if never
    cancelled: a relay told to stop kept publishing). connect_redis must not use it.
    """
    client = connect_redis(redis_server.url)
    await client.ping()
    swallowed: list[int] = []
    try:
        for step in range(40):
            for _ in range(3):

                async def work() -> None:
                    await client.set("k", "v")
                    await client.set("k", "v")

                task = asyncio.ensure_future(work())
                for _ in range(step):
                    await asyncio.sleep(0)
                if task.done():
                    continue
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    continue
                swallowed.append(step)
    finally:
        await client.aclose()
    assert not swallowed, f"cancels swallowed at steps {swallowed}"
