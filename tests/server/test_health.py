"""/api/market-data/health: ok -> degraded -> down -> ok as the data's source and age change."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from pricectl.server.health import Upstream, upstream_json
from tests.server.harness import make_settings, running
from tests.server.serve_process import serve_process
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


#: The ``upstream`` object's keys, in order, while serve runs the relay itself (as
#: docs/protocol.md, "Health", lists them).
UPSTREAM_KEYS = [
    "epoch",
    "ws",
    "rest",
    "pairs",
    "parser_skips",
    "published",
    "published_by_source",
    "publish_errors",
    "late_updates",
    "exchange_clock_offset_ms",
    "pairs_served",
    "pairs_active",
    "pairs_added",
    "pairs_removed",
    "snapshots_missed",
    "time_to_first_update_ms",
    "time_to_live_ms",
    "exchange",
    "state",
    "breaker",
    "last_frame_age_s",
]
WS_KEYS = [
    "connected",
    "url",
    "stream",
    "breaker",
    "last_frame_age",
    "connection_age",
    "reconnects",
    "connect_attempts",
    "connect_limited",
    "duplicates_dropped",
    "last_disconnect",
    "parsed",
    "skips",
    "streams_wanted",
    "streams_subscribed",
    "connections",
    "control_messages",
    "control_messages_per_s",
    "control_errors",
]
REST_KEYS = [
    "weight_used",
    "weight_budget",
    "paused_for",
    "requests",
    "failures",
    "rate_limited",
    "last_error",
]


async def test_health_upstream_of_the_embedded_relay_keeps_its_wire_shape(tmp_path: Path):
    """serve --simulate: ``upstream`` is the relay's status with the WebSocket's state,
    breaker and frame age lifted to the top, ``leader`` is the embedded relay, and the
    metrics show the same state."""
    async with (
        serve_process(tmp_path / "serve.log", "--simulate") as serve,
        aiohttp.ClientSession() as s,
    ):

        async def live() -> dict | None:
            async with s.get(serve.url(HEALTH)) as resp:
                doc = await resp.json()
            up = doc.get("upstream") or {}
            return doc if doc["status"] == "ok" and up.get("ws", {}).get("parsed") else None

        h = await until(live, 15, "health ok with frames parsed")
        async with s.get(serve.url("/metrics")) as resp:
            metrics = await resp.text()
    up = h["upstream"]
    # Every documented key, in this order; a new field may come in between.
    assert [k for k in up if k in UPSTREAM_KEYS] == UPSTREAM_KEYS, list(up)
    assert list(up)[-3:] == ["state", "breaker", "last_frame_age_s"]
    assert [k for k in up["ws"] if k in WS_KEYS] == WS_KEYS, list(up["ws"])
    assert [k for k in up["rest"] if k in REST_KEYS] == REST_KEYS, list(up["rest"])
    assert up["exchange"] == "simulator" and up["state"] == "connected"
    assert up["breaker"] == up["ws"]["breaker"] == "closed"
    assert up["last_frame_age_s"] == up["ws"]["last_frame_age"]
    assert up["parser_skips"] == up["ws"]["skips"]
    assert up["ws"]["streams_subscribed"] == up["ws"]["streams_wanted"] == up["pairs_active"]
    (conn,) = up["ws"]["connections"]
    assert conn["role"] == "active" and conn["streams"] == up["pairs_active"]
    assert up["time_to_live_ms"] == {"count": 0, "p50": None, "p99": None, "max": None}
    for feed in up["pairs"].values():
        assert list(feed)[:4] == ["source", "stale", "age", "seq"] and feed["source"] == "ws"
    assert set(up["published_by_source"]) == {"ws", "rest", "cache"}
    assert h["leader"]["identity"] == "embedded" and h["leader"]["epoch"] == up["epoch"]
    assert h["leader"]["since"] is None and "holder" in h["leader"]
    assert 'pricectl_upstream_state{state="connected"} 1' in metrics
    assert 'pricectl_upstream_breaker{state="closed"} 1' in metrics


def test_health_upstream_before_the_relay_starts_is_only_its_state():
    """Before the embedded relay runs there is nothing but ``state: starting``."""
    assert upstream_json(Upstream(relay=None)) == {"state": "starting"}
    assert upstream_json(Upstream(relay=None, exchange="simulator")) == {
        "state": "starting",
        "exchange": "simulator",
    }
