"""The Redis bus and the lease on a real Redis Cluster (``redis+cluster://``): 3 primaries
with a replica each, started by the test (``redis-server --cluster-enabled yes`` and
``redis-cli --cluster create``).

The lease keys share one slot whatever the prefix; price channels are sharded
(SSUBSCRIBE/SPUBLISH) and spread over the shards; a subscriber that knows only one node
gets every pair; a primary SIGKILLed with its replica promoted: delivery resumes; a
slot moved by a resharding: the subscription and the publisher follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pricectl.bus import Gap, Update, keys
from pricectl.bus.base import Fence
from pricectl.bus.leader import Leader
from pricectl.client.health import redis_health
from pricectl.core.lease import LeasePolicy
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import BusError
from tests.bus.support import collect, running_bus
from tests.redis_cluster import RedisClusterNodes, redis_cluster
from tests.waiting import UNIT, until, wait_for

pytestmark = pytest.mark.timeout(90 * UNIT)

#: Enough pairs that their channels land on every shard.
PAIRS = [f"C{i}/USD" for i in range(12)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    with redis_cluster(tmp_path) as nodes:
        yield nodes


def test_slot_prefix_puts_a_hash_tag_in_any_prefix() -> None:
    assert keys.slot_prefix("") == "{pricectl}:"
    assert keys.slot_prefix("staging:") == "{staging}:"
    assert keys.slot_prefix("{mine}:") == "{mine}:"
    assert keys.slot_prefix("a{}b:") == "{a{}b}:"


def _update(pair: str, seq: int, epoch: int) -> PriceUpdate:
    return PriceUpdate(
        pair=pair, symbol=pair.replace("/", "") + "T", price="1", epoch=epoch, seq=seq, gseq=seq
    )


@pytest.mark.parametrize("prefix", ["", "staging:"])
async def test_a_leader_is_elected_and_its_keys_share_a_slot(
    cluster: RedisClusterNodes, prefix: str
) -> None:
    """Default prefix and a plain one: a leader is elected (no CROSSSLOT), the lease, the
    epoch, the heartbeat and the snapshot land in one slot, and health --redis is ok about
    the lease and names the cluster's state and the lease's primary."""
    leader = Leader(cluster.url, prefix, policy=LeasePolicy(ttl=3, renew_deadline=2, retry=1))
    elected: list[Fence] = []

    async def run(fence: Fence) -> None:
        elected.append(fence)
        await asyncio.Event().wait()

    task = asyncio.ensure_future(leader.run(run))
    try:
        await until(lambda: elected, 10, f"a leader with prefix {prefix!r}")
        kp = keys.slot_prefix(prefix)
        names = [keys.leader(kp), keys.epoch(kp), keys.heartbeat(kp), keys.latest(kp)]
        with redis.Redis(port=cluster.ports[0]) as client:
            slots = {int(client.execute_command("CLUSTER KEYSLOT", n)) for n in names}
        assert len(slots) == 1, (names, slots)
        doc = await redis_health(cluster.url, [], prefix=prefix)
        assert doc["leader"]["identity"] == leader.identity
        assert doc["bus"]["mode"] == "cluster" and doc["bus"]["cluster_state"] == "ok"
        assert doc["bus"]["master"] == f"127.0.0.1:{cluster.owner(keys.leader(kp))}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await leader.close()


async def _lease(url: str) -> Fence:
    """Take the lease through a Leader's acquire script, then let it go quiet."""
    leader = Leader(url, policy=LeasePolicy(ttl=60, renew_deadline=50, retry=10))
    result = await leader._acquire(
        keys=leader._lease_keys, args=[leader.identity, leader.policy.ttl_ms]
    )
    await leader.close()
    return Fence(leader.identity, int(result))


async def test_every_node_delivers_every_pair_and_a_failover_is_followed(
    cluster: RedisClusterNodes,
) -> None:
    """One subscriber seeded with each primary alone; updates of 12 pairs whose channels
    live on all three shards reach every subscriber. SIGKILL of a primary that owns some
    of those channels: its replica is promoted and delivery of every pair resumes at every
    subscriber, after a Gap (a resync), without anything restarted."""
    channels = [keys.channel("", p) for p in PAIRS]
    owners = {cluster.owner(c) for c in channels}
    assert len(owners) == 3, "the pairs should spread over every shard"
    fence = await _lease(cluster.url)
    seeds = cluster.primaries()
    async with contextlib.AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(running_bus(cluster.url))
        subs = [await stack.enter_async_context(running_bus(cluster.url_via(p))) for p in seeds]
        events: list[list[Update | Gap]] = [[] for _ in subs]
        readers = [
            asyncio.ensure_future(collect(b.subscribe(PAIRS), into))
            for b, into in zip(subs, events, strict=True)
        ]
        try:
            await until(lambda: all(e for e in events), 10, "every subscription live")
            seq = 1

            def delivered(after: int) -> bool:
                return all(
                    {e.update.pair for e in ev if isinstance(e, Update) and e.update.seq > after}
                    == set(PAIRS)
                    for ev in events
                )

            async def publish_until(after: int, timeout: float, what: str) -> None:
                nonlocal seq

                async def step() -> bool:
                    nonlocal seq
                    with contextlib.suppress(BusError):
                        await publisher.publish(
                            [_update(p, seq, fence.epoch) for p in PAIRS], fence
                        )
                        seq += 1
                    return delivered(after)

                await until(step, timeout, what)

            await publish_until(0, 10, "every pair at every subscriber")
            victim = cluster.owner(channels[0])
            cluster.kill(victim)
            killed_at = time.monotonic()
            await asyncio.to_thread(
                wait_for, lambda: cluster.promoted(victim), 30, "a replica promoted"
            )
            promoted = time.monotonic() - killed_at
            mark = seq
            await publish_until(mark, 15, "every pair at every subscriber after the failover")
            resumed = time.monotonic() - killed_at
            assert resumed < promoted + 10, (promoted, resumed)
            for ev in events:
                gaps = [e for e in ev if isinstance(e, Gap)]
                assert len(gaps) >= 2, gaps  # the opening one and the failover's
        finally:
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)


async def test_a_busy_shard_is_not_held_back_by_quiet_ones(cluster: RedisClusterNodes) -> None:
    """Pairs on every shard subscribed, updates for the pairs of one shard only: each
    arrives as it is published, not one per shard-turn (redis-py's round-robin read waits
    out every quiet shard's timeout between two messages of the busy one)."""
    owner = cluster.owner(keys.channel("", PAIRS[0]))
    busy = [p for p in PAIRS if cluster.owner(keys.channel("", p)) == owner]
    fence = await _lease(cluster.url)
    async with (
        running_bus(cluster.url) as publisher,
        running_bus(cluster.url_via(owner)) as sub_bus,
    ):
        events: list[Update | Gap] = []
        arrivals: list[float] = []

        async def collect() -> None:
            async for event in sub_bus.subscribe(PAIRS):
                events.append(event)
                arrivals.append(time.monotonic())

        reader = asyncio.ensure_future(collect())
        try:
            await until(lambda: events, 10, "subscribed")
            sent = 0
            started = time.monotonic()
            for seq in range(1, 41):  # 40 batches, 20 ms apart: 0.8 s of publishing
                await publisher.publish([_update(p, seq, fence.epoch) for p in busy], fence)
                sent += len(busy)
                await until(lambda s=started, n=seq: time.monotonic() - s >= 0.02 * n, 1, "pace")
            done = time.monotonic()
            await until(
                lambda: sum(isinstance(e, Update) for e in events) >= sent, 10, "every update"
            )
            late = max(arrivals) - done
            assert late < 0.5, f"the last update came {late:.2f}s after it was published"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_pairs_added_at_run_time_on_any_shard(cluster: RedisClusterNodes) -> None:
    """A subscription that starts with one pair and adds the others at run time (on
    shards it had no connection to) gets their updates; a removed pair's stop."""
    fence = await _lease(cluster.url)
    first = PAIRS[0]
    owner = cluster.owner(keys.channel("", first))
    others = [p for p in PAIRS if cluster.owner(keys.channel("", p)) != owner][:3]
    async with (
        running_bus(cluster.url) as publisher,
        running_bus(cluster.url_via(owner)) as sub_bus,
    ):
        sub = sub_bus.subscribe([first])
        events: list[Update | Gap] = []
        reader = asyncio.ensure_future(collect(sub, events))
        try:
            await until(lambda: events, 10, "subscribed")
            added = await sub.add(others)
            assert added == others
            seq = 0

            async def step(want: set[str]) -> bool:
                nonlocal seq
                seq += 1
                await publisher.publish([_update(p, seq, fence.epoch) for p in PAIRS], fence)
                got = {e.update.pair for e in events if isinstance(e, Update)}
                return want <= got

            await until(lambda: step({first, *others}), 10, "updates of the added pairs")
            assert await sub.remove([first]) == [first]
            mark = len(events)
            removed_at = seq

            async def more() -> bool:
                await step(set(others))
                return len(events) > mark + 4 * len(others)

            await until(more, 10, "more updates")
            # Two publishes on, the UNSUBSCRIBE sent on the other connection has long
            # been processed.
            later = {
                e.update.pair
                for e in events
                if isinstance(e, Update) and e.update.seq > removed_at + 2
            }
            assert first not in later and set(others) <= later
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_a_wanted_pair_wakes_the_leader_on_a_cluster(cluster: RedisClusterNodes) -> None:
    """serve's ``want`` (ZADD GT and the wake-up PUBLISH) works on a cluster, and a
    listener of the wake-up channel connected through another node hears it."""
    first, last = cluster.primaries()[0], cluster.primaries()[-1]
    async with (
        running_bus(cluster.url_via(first)) as serve_bus,
        running_bus(cluster.url_via(last)) as leader,
    ):
        wakes = 0

        async def listen() -> None:
            nonlocal wakes
            async for _ in leader.demand_wakeups():
                wakes += 1

        listener = asyncio.ensure_future(listen())
        try:
            await until(lambda: wakes >= 1, 10, "the listener subscribed")
            now = time.time()
            await serve_bus.want(["ZEC/BTC"], now, wake=True)
            await until(lambda: wakes >= 2, 5, "the wake-up")
            wanted = await leader.wanted(now, 60.0)
            assert set(wanted) == {"ZEC/BTC"}
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def test_a_shard_gone_whole_is_named_cluster_down(cluster: RedisClusterNodes) -> None:
    """The lease's primary and its replica both SIGKILLed (the other nodes answer):
    health --redis says the cluster is down with its cluster_state, not "nothing listens",
    and a bus reports cluster_state fail."""
    owner = cluster.owner(keys.leader(keys.slot_prefix("")))
    seed = next(p for p in cluster.primaries() if p != owner)
    async with running_bus(cluster.url_via(seed)) as bus:
        await until(lambda: bus.cluster_state == "ok", 10, "the bus's probe")
        for port in [owner, *cluster.replicas_of(owner)]:
            cluster.kill(port)
        await until(lambda: bus.cluster_state == "fail", 15, "cluster_state fail at the bus")
        assert not bus.connected
        doc = await redis_health(cluster.url_via(seed), [])
        assert doc["status"] == "down" and doc["bus"]["cluster_state"] == "fail", doc
        (reason,) = doc["reasons"]
        assert "is down (cluster_state fail)" in reason, reason


async def test_a_resharding_is_followed(cluster: RedisClusterNodes) -> None:
    """A pair's channel slot moved to another primary with the resharding commands
    (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) while it is published every
    20 ms: Redis drops the subscription on the old owner (``sunsubscribe``) and the
    subscriber subscribes on the new one, after a Gap. Then a new leader (a higher
    epoch) and the lease's slot moved, snapshot and lease keys with it: publishing
    follows the MOVED replies, the subscriber still gets every update it should, never
    an older epoch after a newer one, and every hole in the seqs comes after a Gap."""
    pair = PAIRS[0]
    channel = keys.channel("", pair)
    lease_key = keys.leader(keys.slot_prefix(""))
    with redis.Redis(port=cluster.ports[0]) as client:
        channel_slot = int(client.execute_command("CLUSTER KEYSLOT", channel))
        lease_slot = int(client.execute_command("CLUSTER KEYSLOT", lease_key))
    fence = await _lease(cluster.url)
    source = cluster.owner(channel)
    async with (
        running_bus(cluster.url) as publisher,
        running_bus(cluster.url_via(source)) as sub_bus,
    ):
        events: list[Update | Gap] = []
        reader = asyncio.ensure_future(collect(sub_bus.subscribe([pair]), events))
        seq = 1
        failures: list[str] = []

        async def publish_forever() -> None:
            nonlocal seq
            while True:
                try:
                    await publisher.publish([_update(pair, seq, fence.epoch)], fence)
                    seq += 1
                except BusError as exc:
                    failures.append(str(exc))
                started = time.monotonic()
                await until(lambda s=started: time.monotonic() - s >= 0.02, 1, "pace")

        def received_after(mark: int, epoch: int) -> bool:
            return any(
                isinstance(e, Update) and e.update.epoch == epoch and e.update.seq > mark
                for e in events
            )

        writer = asyncio.ensure_future(publish_forever())
        try:
            await until(lambda: received_after(1, fence.epoch), 10, "updates before the move")
            target = next(p for p in cluster.primaries() if p != source)
            assert await asyncio.to_thread(cluster.migrate_slot, channel_slot, target) == source
            moved_at, mark = time.monotonic(), seq
            await until(
                lambda: received_after(mark, fence.epoch), 10, "updates after the channel moved"
            )
            channel_resumed = time.monotonic() - moved_at
            # A new leader (the old lease expired), then the lease's slot (lease, epoch,
            # heartbeat, snapshot) moved.
            old_epoch = fence.epoch
            with redis.Redis(port=cluster.owner(lease_key)) as client:
                client.delete(lease_key)
            fence, seq = await _lease(cluster.url), 1
            assert fence.epoch > old_epoch
            await until(lambda: received_after(1, fence.epoch), 10, "the new epoch's updates")
            lease_owner = cluster.owner(lease_key)
            lease_target = next(p for p in cluster.primaries() if p != lease_owner)
            await asyncio.to_thread(cluster.migrate_slot, lease_slot, lease_target)
            moved_at, mark = time.monotonic(), seq
            await until(
                lambda: received_after(mark + 10, fence.epoch), 10, "updates after the lease moved"
            )
            lease_resumed = time.monotonic() - moved_at
            latest = (await sub_bus.snapshot([pair]))[pair]
            assert latest.epoch == fence.epoch and latest.seq > mark
        finally:
            writer.cancel()
            reader.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
    assert channel_resumed < 5 and lease_resumed < 5, (channel_resumed, lease_resumed, failures)
    last: tuple[int, int] | None = None
    gap_since_last = False
    for event in events:
        if isinstance(event, Gap):
            gap_since_last = True
            continue
        here = (event.update.epoch, event.update.seq)
        if last is not None:
            assert here[0] >= last[0], f"epoch {here[0]} after epoch {last[0]}"
            if here[0] == last[0] and here[1] > last[1] + 1:
                assert gap_since_last, f"seqs {last[1]} -> {here[1]} with no Gap between"
        last, gap_since_last = here, False
    assert sum(isinstance(e, Gap) for e in events) >= 2, "the move's resubscription is a Gap"
