"""The application's own routes: the REST snapshot the browser falls back to."""

from __future__ import annotations

import aiohttp

from tests.server.harness import running


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
