"""Pairs on demand in one `pricectl serve --simulate` process (memory://, the relay
embedded): a pair no config names is turned on by a stream, reported by health and
/metrics, and turned off again after idle_grace."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.server.harness import SSEConn
from tests.server.serve_process import serve_process
from tests.waiting import until


async def test_embedded_relay_follows_demand_and_reports_it(tmp_path: Path) -> None:
    """ETH/BTC asked for: a price then live ones, health's demand object and /metrics say
    it is active with one first price measured; nobody watching, it goes after idle_grace."""
    env = {"PRICECTL_EXCHANGE__IDLE_GRACE": "2s", "PRICECTL_PAIRS": "BTC/USD"}
    async with (
        serve_process(tmp_path / "serve.log", "--simulate", env=env) as serve,
        aiohttp.ClientSession() as http,
    ):
        await until(lambda: serve.log.count("exchangeInfo:") > 0, 10, "exchangeInfo read")
        conn = await SSEConn.open(serve.port, "/api/market-data/stream?pairs=ethbtc")
        try:
            assert conn.status == 200
            events = await conn.wait_events(2, timeout=10)
            first = json.loads(events[0].data)
            assert first["pair"] == "ETH/BTC" and first["source"] == "rest"
            await until(
                lambda: any(json.loads(e.data)["source"] == "ws" for e in conn.events),
                10,
                "a live ETH/BTC price",
            )
            async with http.get(serve.url("/api/market-data/health")) as resp:
                health = await resp.json()
            demand = health["demand"]
            assert demand["pinned"] == ["BTC/USD"] and "ETH/BTC" in demand["active"]
            assert demand["first_price_ms"]["count"] == 1
            assert demand["universe"] and demand["universe"] > 1000
            assert health["status"] in ("ok", "degraded"), health["reasons"]
            async with http.get(serve.url("/metrics")) as resp:
                metrics = await resp.text()
            assert 'pricectl_pairs{kind="active"} 2' in metrics
            assert "pricectl_first_price_count 1" in metrics
            assert "pricectl_exchange_connections 1" in metrics
            assert "pricectl_exchange_control_messages_per_second" in metrics
        finally:
            conn.close()

        async def gone() -> bool:
            async with http.get(serve.url("/api/market-data/health")) as resp:
                doc = await resp.json()
            return doc["demand"]["active"] == ["BTC/USD"] and doc["demand"]["wanted"] == []

        await until(gone, 10, "ETH/BTC turned off after idle_grace")
        assert "ETH/BTC no longer wanted here" in serve.log


async def test_a_watched_pair_is_never_dropped_at_the_shortest_idle_grace(tmp_path: Path) -> None:
    """idle_grace at its floor (1s) and one client watching ETH/BTC for 4 graces: the relay
    never removes it (no stale cache copy, no REST re-snapshot, pairs_removed 0)."""
    env = {"PRICECTL_EXCHANGE__IDLE_GRACE": "1s", "PRICECTL_PAIRS": "BTC/USD"}
    async with (
        serve_process(tmp_path / "serve.log", "--simulate", env=env) as serve,
        aiohttp.ClientSession() as http,
    ):
        await until(lambda: serve.log.count("exchangeInfo:") > 0, 10, "exchangeInfo read")
        conn = await SSEConn.open(serve.port, "/api/market-data/stream?pairs=ETH/BTC")
        try:
            assert conn.status == 200

            # About one update a second: 6 live ones span more than 4 idle graces.
            events = await conn.wait_events(7, timeout=15)
            seen = [json.loads(e.data)["source"] for e in events]
            assert "cache" not in seen, seen
            assert seen.count("rest") <= 1, seen
            async with http.get(serve.url("/api/market-data/health")) as resp:
                health = await resp.json()
            assert health["upstream"]["pairs_removed"] == 0, health["upstream"]
            assert "ETH/BTC" in health["demand"]["active"]
            assert "no longer wanted" not in serve.log
        finally:
            conn.close()


async def test_pinned_pairs_in_the_exchanges_quote_are_known_as_pinned(tmp_path: Path) -> None:
    """pairs: VET/USDT, ADA/USDT with USD: USDT are pinned as VET/USD, ADA/USD (the names
    requests resolve to): asking for them turns nothing on, so no activation limit."""
    env = {"PRICECTL_PAIRS": "VET/USDT,ADA/USDT", "PRICECTL_SERVER__ACTIVATIONS_PER_IP": "1"}
    async with (
        serve_process(tmp_path / "serve.log", "--simulate", env=env) as serve,
        aiohttp.ClientSession() as http,
    ):
        await until(lambda: serve.log.count("exchangeInfo:") > 0, 10, "exchangeInfo read")
        for asked in ("VET/USDT,ADA/USDT", "vet-usd,adausdt"):
            async with http.get(serve.url(f"/api/market-data/prices?pairs={asked}")) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(serve.url("/api/market-data/health")) as resp:
            demand = (await resp.json())["demand"]
        assert demand["pinned"] == ["VET/USD", "ADA/USD"]
        assert demand["activated"] == 0 and demand["wanted"] == []
