"""The Redis bus and the lease through Sentinel (``redis+sentinel://``), against a real
deployment: 1 primary, 1 replica, 3 ``redis-sentinel`` processes started by the test.

Each failover is real: ``SENTINEL FAILOVER`` (the old primary stays up and is demoted
seconds later) or SIGKILL of the primary (the sentinels agree it is down and promote).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pricectl.bus import Gap, Update, keys
from pricectl.bus.base import Fence
from pricectl.bus.leader import Leader
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.client.health import redis_health
from pricectl.core.lease import LeasePolicy
from pricectl.core.ticks import PriceUpdate, decode_update
from pricectl.errors import BusError
from tests.bus.support import collect, running_bus
from tests.redis_sentinel import SERVICE, SentinelDeployment, sentinel_command, sentinel_deployment
from tests.waiting import UNIT, until, wait_for

pytestmark = pytest.mark.timeout(90 * UNIT)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelDeployment]:
    with sentinel_deployment(tmp_path) as deployment:
        yield deployment


def _update(seq: int, epoch: int) -> PriceUpdate:
    return PriceUpdate(
        pair="BTC/USD",
        symbol="BTCUSDT",
        price="100.5",
        event_ms=1_700_000_000_000 + seq,
        ingest_ns=time.time_ns(),
        seq=seq,
        epoch=epoch,
    )


async def _lease(url: str, token: str = "t1") -> Fence:
    """Write a lease by hand (what Leader's acquire does) on the current master."""
    client = connect_redis(url)
    try:
        epoch = await client.incr(keys.epoch(""))
        await client.set(keys.leader(""), token, px=60_000)
        # Make sure the replica has it too, so it survives the failover.
        await client.execute_command("WAIT", 1, 2000)
    finally:
        await client.aclose()
    return Fence(token=token, epoch=int(epoch))


async def test_the_bus_follows_a_sentinel_failover(sentinels: SentinelDeployment) -> None:
    """SENTINEL FAILOVER while a subscriber listens and a publisher publishes: both move to
    the new master by themselves (the subscriber says so with a Gap), the publisher's
    writes land on the new master, and health names the new master."""
    fence = await _lease(sentinels.url)
    old = sentinels.master_port()
    assert old is not None
    async with running_bus(sentinels.url) as pub, running_bus(sentinels.url) as sub_bus:
        events: list[Update | Gap] = []
        sub = sub_bus.subscribe(["BTC/USD"])
        reader = asyncio.ensure_future(collect(sub, events))
        try:
            await until(lambda: events, 5, "subscribed")
            await until(lambda: pub.role == "master" and sub_bus.role == "master", 5, "roles")
            assert pub.topology() == {
                "mode": "sentinel",
                "role": "master",
                "master": f"127.0.0.1:{old}",
                "service": SERVICE,
                "sentinels": [f"127.0.0.1:{p}" for p in sentinels.sentinel_ports],
                "failovers": 0,
            }
            await pub.publish([_update(1, fence.epoch)], fence)
            await until(lambda: any(isinstance(e, Update) for e in events), 5, "first update")

            sentinels.failover()
            publisher = asyncio.ensure_future(_publish_every(pub, fence, 0.05))
            try:
                new = await asyncio.to_thread(
                    wait_for, lambda: sentinels.promoted(old), 20, "promotion"
                )
                promoted_at = time.monotonic()
                await until(lambda: _resumed(events), 3, "updates after the failover's gap")
                assert time.monotonic() - promoted_at < 3.0 * UNIT
            finally:
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
            assert pub.topology()["master"] == f"127.0.0.1:{new}"
            assert pub.failovers >= 1 and sub_bus.failovers >= 1
            assert sub_bus.reconnects >= 1
            # The writes went to the new master, not to the old one still up.
            direct = connect_redis(f"redis://127.0.0.1:{new}/0")
            try:
                latest = await direct.hget(keys.latest(""), "BTC/USD")
            finally:
                await direct.aclose()
            assert latest is not None
            assert decode_update(latest).seq >= max(
                e.update.seq for e in events if isinstance(e, Update)
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _resumed(events: list[Update | Gap]) -> bool:
    """An update came after the failover's Gap (the one after the opening one)."""
    gaps = [i for i, e in enumerate(events) if isinstance(e, Gap)]
    return len(gaps) > 1 and any(isinstance(e, Update) for e in events[gaps[1] :])


async def _publish_every(bus: RedisBus, fence: Fence, period: float) -> None:
    """Publish one update per ``period`` (failures are expected mid-failover)."""
    seq = 2
    while True:
        with contextlib.suppress(BusError):
            await bus.publish([_update(seq, fence.epoch)], fence)
        seq += 1
        await asyncio.sleep(period)  # the publisher's pace, not a synchronisation


async def test_the_lease_moves_to_the_new_master_after_sigkill(
    sentinels: SentinelDeployment,
) -> None:
    """Two candidates; the primary SIGKILLed after the lease reached the replica: after
    the promotion the same leader holds the lease on the new master, same epoch, no
    takeover, without anyone restarting anything."""
    # renew_deadline well past the ~2.5 s a promotion takes (the default is 10 s).
    policy = LeasePolicy(ttl=8.0, renew_deadline=6.0, retry=0.5)
    leaders = [Leader(sentinels.url, policy=policy) for _ in range(2)]
    terms: list[tuple[str, int]] = []

    def elected(leader: Leader) -> object:
        async def run(fence: Fence) -> None:
            terms.append((leader.identity, fence.epoch))
            await asyncio.Event().wait()

        return run

    tasks = [asyncio.ensure_future(ld.run(elected(ld))) for ld in leaders]  # type: ignore[arg-type]
    try:
        await until(lambda: terms, 10, "a leader")
        first_epoch = terms[-1][1]
        old = sentinels.master_port()
        assert old is not None
        # The lease has reached the replica: it survives the failover.
        direct = connect_redis(f"redis://127.0.0.1:{old}/0")
        try:
            assert await direct.execute_command("WAIT", 1, 2000) == 1
        finally:
            await direct.aclose()
        sentinels.kill(old)
        await asyncio.to_thread(wait_for, lambda: sentinels.promoted(old), 30, "promotion")
        promoted_at = time.monotonic()

        async def leads_on_new_master() -> bool:
            client = connect_redis(sentinels.url, timeout=1.0)
            try:
                token = await client.get(keys.leader(""))
            except Exception:
                return False
            finally:
                await client.aclose()
            return any(ld.is_leader and ld.identity == token for ld in leaders)

        await until(leads_on_new_master, 5, "a leader on the new master")
        assert time.monotonic() - promoted_at < 3.0 * UNIT
        assert sum(ld.is_leader for ld in leaders) == 1
        # The replicated lease carried the same leader through: no takeover.
        await until(lambda: all(ld.renewals > 0 for ld in leaders if ld.is_leader), 5, "a renew")
        renewed_at = time.monotonic()
        await until(lambda: time.monotonic() - renewed_at > 1.5, 3, "past the presence grace")
        assert terms == [terms[0]] and terms[0][1] == first_epoch, terms
        assert sum(ld.takeovers for ld in leaders) == 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ld in leaders:
            await ld.close()


async def test_health_names_the_service_the_master_and_a_replica_is_down(
    sentinels: SentinelDeployment,
) -> None:
    """``health --redis`` through Sentinel says the role, the service and the master; the
    replica's own URL is ``down``: no writable master there."""
    doc = await redis_health(sentinels.url, [])
    master = sentinels.master_port()
    assert doc["bus"]["mode"] == "sentinel" and doc["bus"]["role"] == "master"
    assert doc["bus"]["service"] == SERVICE and doc["bus"]["master"] == f"127.0.0.1:{master}"
    replica = next(p for p in sentinels.data_ports if p != master)
    doc = await redis_health(f"redis://127.0.0.1:{replica}/0", [])
    assert doc["status"] == "down" and doc["bus"]["role"] == "replica"
    # The master it follows, and the node the URL named.
    assert doc["bus"]["master"] == f"127.0.0.1:{master}", doc["bus"]
    assert doc["bus"]["node"] == f"127.0.0.1:{replica}"
    bus = RedisBus(f"redis://127.0.0.1:{replica}/0", probe_interval=0.05)
    await bus.start()
    try:
        await until(lambda: bus.role == "replica", 5, "the role")
        assert bus.topology()["master"] == f"127.0.0.1:{master}"
        assert bus.topology()["node"] == f"127.0.0.1:{replica}"
    finally:
        await bus.close()
    assert any("not a writable master" in r for r in doc["reasons"]), doc


async def test_every_sentinel_gone_is_said_once_and_plainly(
    sentinels: SentinelDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    """Every sentinel SIGKILLed (the data nodes up): the watcher says once that it cannot
    watch, never that it watches again while none is up, and health says no sentinel is
    reachable, naming them, in one short line."""
    caplog.set_level(logging.INFO, logger="pricectl.bus")
    async with running_bus(sentinels.url) as bus:
        await until(lambda: bus.role == "master", 5, "connected")
        for port in sentinels.sentinel_ports:
            sentinels.procs[port].kill()
            sentinels.procs[port].wait(timeout=10)
        await until(lambda: "cannot watch for failovers" in caplog.text, 5, "the warning")
        cut = time.monotonic()
        # Several rounds over the three dead sentinels (0.2 s to 2 s apart).
        await until(lambda: time.monotonic() - cut > 3.0, 5, "3 s of retries")
        assert "watching for failovers of 'mymaster' again" not in caplog.text
        assert caplog.text.count("cannot watch for failovers") == 1
        doc = await redis_health(sentinels.url, [])
        assert doc["status"] == "down"
        (reason,) = doc["reasons"]
        assert reason.startswith("no sentinel reachable at 127.0.0.1:"), reason
        assert len(reason) < 400 and "BoundedRedis(" not in reason, reason


async def test_a_password_on_the_data_nodes(tmp_path: Path) -> None:
    """Data nodes with requirepass (the sentinels without): the URL's password reaches the
    master the sentinels name; a wrong one is "authentication failed", redacted."""
    with sentinel_deployment(tmp_path, password="s3cret") as deployment:
        doc = await redis_health(deployment.url, [])
        assert doc["bus"]["connected"] and doc["bus"]["role"] == "master", doc
        wrong = deployment.url.replace(":s3cret@", ":wrong@")
        doc = await redis_health(wrong, [])
        assert doc["status"] == "down"
        (reason,) = doc["reasons"]
        assert "authentication failed" in reason and "wrong" not in reason, reason


async def test_sentinels_with_their_own_password(tmp_path: Path) -> None:
    """Sentinels with requirepass: without sentinel_password, or with a wrong one, the
    reason says the sentinels refused us and names the query option; with the right one
    the master is found."""
    with sentinel_deployment(tmp_path) as deployment:
        for port in deployment.sentinel_ports:
            reply = sentinel_command(
                port, "ACL", "SETUSER", "default", "on", "resetpass", ">watch-pw"
            )
            assert reply.startswith(b"+OK"), reply
        for url in (deployment.url, deployment.url + "?sentinel_password=bad"):
            doc = await redis_health(url, [])
            assert doc["status"] == "down"
            (reason,) = doc["reasons"]
            assert reason.startswith("authentication failed at the sentinels"), reason
            assert "sentinel_password" in reason and "bad" not in reason, reason
        doc = await redis_health(deployment.url + "?sentinel_password=watch-pw", [])
        assert doc["bus"]["connected"] and doc["bus"]["role"] == "master", doc
