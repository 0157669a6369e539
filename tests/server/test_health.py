"""/api/market-data/health: ok -> degraded -> down -> ok as the data's source and age change."""

from __future__ import annotations

import aiohttp

from tests.server.harness import make_settings, running
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
