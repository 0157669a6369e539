"""Health and metrics: ok -> degraded -> down -> ok, and a bus outage with resync (real Redis)."""

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

HEALTH = "/api/market-data/health"


async def _health(r) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(r.url(HEALTH)) as resp:
        return resp.status, await resp.json()


async def test_health_ok_degraded_down_ok():
    """Live data is ok; REST-sourced is degraded; no fresh data is down (503); live again is ok."""
    async with running(make_settings(pairs=("BTC/USD", "ETH/USD"), stale_after=0.5)) as r:
        st, h = await _health(r)
        assert (st, h["status"]) == (503, "down") and "no fresh data" in h["reasons"]
        await r.publish_pairs("BTC/USD", "ETH/USD")
        st, h = await _health(r)
        assert (st, h["status"]) == (200, "ok"), h
        assert h["pairs"]["BTC/USD"]["source"] == "ws" and not h["pairs"]["BTC/USD"]["stale"]
        assert h["bus"]["connected"] is True and h["version"]
        assert h["leader"]["epoch"] == r.fence.epoch
        # the exchange stalls: ingest falls back to REST polling
        await r.publish_pairs("BTC/USD", "ETH/USD", source="rest")
        st, h = await _health(r)
        assert (st, h["status"]) == (200, "degraded") and h["pairs"]["ETH/USD"]["source"] == "rest"
        # REST fails too: cached values marked stale, then nothing fresh at all
        await r.publish_pairs("BTC/USD", "ETH/USD", source="cache", stale=True)
        st, h = await _health(r)
        assert (st, h["status"]) == (503, "down")
        # both recover
        await r.publish_pairs("BTC/USD", "ETH/USD")
        assert (await _health(r))[1]["status"] == "ok"

        # and silence alone makes data stale after stale_after
        async def down() -> bool:
            return (await _health(r))[1]["status"] == "down"

        await until(down, 5, "health down once data is older than stale_after")
        await r.publish_pairs("BTC/USD")
        st, h = await _health(r)
        assert h["status"] == "degraded" and h["pairs"]["ETH/USD"]["stale"]


async def test_metrics_text():
    """/metrics is Prometheus text with clients, events, bytes, per-pair age and bus state."""
    async with running() as r:
        c = await SSEConn.open(r.port, "/api/market-data/stream?pairs=BTC/USD")
        try:
            await r.publish_pairs("BTC/USD")
            await c.wait_events(1)
            async with aiohttp.ClientSession() as s, s.get(r.url("/metrics")) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
        finally:
            c.close()
        lines = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
        assert lines["pricectl_clients"] == "1"
        assert int(lines["pricectl_events_sent_total"]) >= 1
        assert int(lines["pricectl_bytes_sent_total"]) > 100
        assert 'pricectl_pair_age_seconds{pair="BTC/USD"}' in lines
        assert lines["pricectl_bus_connected"] == "1"
        assert lines['pricectl_health_status{status="degraded"}'] == "1"  # ETH, SOL have no data
        assert "# TYPE pricectl_slow_dropped_total counter" in text


async def test_prices_rest_snapshot():
    """GET /prices returns the latest 3.2 object per requested pair, raw decimal strings."""
    async with running() as r:
        await r.publish_pairs("BTC/USD", "ETH/USD", price="43250.12")
        async with aiohttp.ClientSession() as s:
            async with s.get(r.url("/api/market-data/prices?pairs=ETH/USD")) as resp:
                assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
                body = await resp.json()
            assert [p["pair"] for p in body["prices"]] == ["ETH/USD"]
            assert body["prices"][0]["price"] == "43250.12"
            async with s.get(r.url("/api/market-data/prices?pairs=XRP/USD")) as resp:
                assert resp.status == 400


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
