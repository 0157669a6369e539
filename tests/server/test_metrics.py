"""/metrics: Prometheus text from the hub's and the fan-out's counters."""

from __future__ import annotations

import aiohttp

from tests.server.harness import SSEConn, running


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
