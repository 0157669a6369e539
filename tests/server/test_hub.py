"""The hub's state as streams see it: resume from the ring with Last-Event-ID (or a
snapshot when the ring does not cover it), and a resync after a bus outage (real Redis)."""

from __future__ import annotations

import contextlib
import json

import aiohttp

from pricectl.bus import Fence
from pricectl.bus import keys as bus_keys
from pricectl.bus.leader import ACQUIRE_SCRIPT
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.core.backoff import BackoffPolicy
from pricectl.errors import BusError
from tests.server.harness import SSEConn, Ticker, make_settings, running
from tests.waiting import until

STREAM = "/api/market-data/stream"
HEALTH = "/api/market-data/health"


async def test_resume_from_ring_without_gap_or_duplicate():
    """Reconnecting with Last-Event-ID replays exactly what was missed while the ring covers it."""
    async with running() as r:
        await r.publish_pairs("BTC/USD")
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD")
        await c.wait_events(1)
        await r.publish_pairs("BTC/USD", "ETH/USD", price="1")
        await c.wait_events(2)
        last = c.decoder.last_event_id
        c.close()
        missed = await r.publish_pairs("BTC/USD", "ETH/USD", "BTC/USD", price="2")
        c2 = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD", {"Last-Event-ID": last})
        try:
            evs = await c2.wait_events(2)
            assert [e.event for e in evs] == ["price", "price"]
            seqs = [json.loads(e.data)["seq"] for e in evs]
            assert seqs == [missed[0].seq, missed[2].seq]
            # and live continues with the next one, no duplicate
            nxt = await r.publish_pairs("BTC/USD", price="3")
            evs = await c2.wait_events(3)
            assert json.loads(evs[2].data)["seq"] == nxt[0].seq
            assert len(evs) == 3
        finally:
            c2.close()


async def test_resume_query_parameter_and_uncovered_position_gets_snapshot():
    """lastEventId in the query works; a position the ring no longer covers gets a snapshot."""
    async with running(make_settings(history_size=2)) as r:
        await r.publish_pairs("BTC/USD")
        first = f"{r.hub.epoch}-{r.hub.gseq}"
        await r.publish_pairs("BTC/USD", "BTC/USD", "BTC/USD", price="9")
        await until(lambda: r.hub.gseq == 4, 5, "four updates")
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD&lastEventId={first}")
        try:
            evs = await c.wait_events(1)
            assert evs[0].event == "snapshot"
            assert json.loads(evs[0].data)["seq"] == 4
            assert evs[0].id == f"{r.hub.epoch}-4"
        finally:
            c.close()
        # a position from another epoch is not covered either
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD", {"Last-Event-ID": "1-3"})
        try:
            assert (await c.wait_events(1))[0].event == "snapshot"
        finally:
            c.close()


async def _health(r) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(r.url(HEALTH)) as resp:
        return resp.status, await resp.json()


async def _acquire(url: str) -> Fence:
    """Take the lease with the leader's own acquire script (no Leader loop needed)."""
    client = connect_redis(url)
    try:
        epoch = await client.eval(
            ACQUIRE_SCRIPT, 2, bus_keys.leader(""), bus_keys.epoch(""), "test-leader", 60_000, 0
        )
    finally:
        await client.aclose()
    return Fence("test-leader", int(epoch))


async def test_bus_outage_then_resync(redis_server):
    """Redis dies: health says down (bus unreachable); when it is back every client
    gets a resync snapshot with the value published meanwhile, then live updates again."""
    fast = BackoffPolicy(initial=0.05, max=0.2, multiplier=2.0, reset_after=1.0)
    bus = RedisBus(redis_server.url, reconnect=fast, probe_interval=0.1)
    async with running(make_settings(pairs=("BTC/USD", "ETH/USD")), bus=bus) as r:
        publisher = RedisBus(redis_server.url, reconnect=fast, probe_interval=0.1)
        await publisher.start()
        try:
            fence = await _acquire(redis_server.url)
            ticker = Ticker(fence.epoch)
            await publisher.publish([ticker("BTC/USD", "1"), ticker("ETH/USD", "1")], fence)
            await until(lambda: len(r.hub.latest) == 2, 5, "hub got both pairs")
            c = await SSEConn.open(r.port, "/api/market-data/stream?pairs=BTC/USD")
            await c.wait_events(1)
            assert c.events[0].event == "snapshot"
            redis_server.kill()

            async def bus_down() -> bool:
                st, h = await _health(r)
                return st == 503 and "bus unreachable" in h["reasons"]

            await until(bus_down, 10, "health down while Redis is gone")
            redis_server.start()
            # the lease survives only in memory of the old server: take it again and publish
            # while serve may still be resubscribing, so only the resync can deliver it
            fence = await _acquire(redis_server.url)
            ticker = Ticker(fence.epoch)
            missed = ticker("BTC/USD", "2")

            async def published() -> bool:
                try:
                    await publisher.publish([missed], fence)
                except BusError:  # a pooled connection from before the restart
                    return False
                return True

            await until(published, 10, "publish after Redis is back")
            # Normally serve is still resubscribing (its reconnect backoff), so only the
            # resync snapshot can carry this price; if it won the race, it came live.
            expect = "price" if r.hub.resyncs >= 1 else "snapshot"
            await until(lambda: r.hub.resyncs >= 1, 15, "hub resynced after the gap")

            def got_missed() -> bool:
                return any(
                    e.event == expect and json.loads(e.data)["price"] == "2" for e in c.events
                )

            async def resynced() -> bool:
                if not got_missed():
                    with contextlib.suppress(AssertionError):
                        await c.wait_events(len(c.events) + 1, timeout=1)
                return got_missed() and sum(e.event == "snapshot" for e in c.events) >= 2

            await until(resynced, 15, "resync snapshot after the outage, and the new price")
            _, h = await _health(r)
            assert h["bus"]["connected"] and h["bus"]["resubscribes"] >= 1
            await publisher.publish([ticker("BTC/USD", "3")], fence)
            n = len(c.events)
            await c.wait_events(n + 1)
            assert json.loads(c.events[-1].data)["price"] == "3"
            c.close()
        finally:
            await publisher.close()
