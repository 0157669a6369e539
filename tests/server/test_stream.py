"""The SSE endpoint with real sockets: headers and opening, bad requests, limits."""

from __future__ import annotations

import json

import aiohttp

from tests.server.harness import SSEConn, make_settings, running
from tests.waiting import until

STREAM = "/api/market-data/stream"


async def test_snapshot_then_live():
    """A client gets headers, a comment, retry, one snapshot per pair, then live prices."""
    async with running() as r:
        await r.publish_pairs("BTC/USD", "ETH/USD", "SOL/USD")
        await until(lambda: len(r.hub.latest) == 3, 5, "hub has three pairs")
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD,ETH/USD")
        try:
            assert c.status == 200
            assert c.headers["content-type"] == "text/event-stream"
            assert c.headers["cache-control"] == "no-store"
            assert c.headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in c.headers
            evs = await c.wait_events(2)
            assert c.body.startswith(b": ok\n")
            assert 3000 <= c.decoder.retry <= 5000
            assert [(e.event, json.loads(e.data)["pair"]) for e in evs] == [
                ("snapshot", "BTC/USD"),
                ("snapshot", "ETH/USD"),
            ]
            ups = await r.publish_pairs("SOL/USD", "ETH/USD", price="200.5")
            evs = await c.wait_events(3)
            live = evs[2]
            assert live.event == "price"
            assert live.id == f"{ups[1].epoch}-{ups[1].gseq}"
            assert json.loads(live.data)["price"] == "200.5"
        finally:
            c.close()


async def test_bad_requests_are_400_json():
    """Unknown pair (with the allowed list), malformed pair, too many pairs, malformed id: 400."""
    async with running(make_settings(max_pairs_per_connection=2)) as r:
        async with aiohttp.ClientSession() as s:

            async def get(q: str, **headers: str) -> tuple[int, dict]:
                async with s.get(r.url(STREAM + q), headers=headers) as resp:
                    return resp.status, await resp.json()

            st, body = await get("?pairs=DOGE/USD")
            assert st == 400 and body["error"] == "unknown_pair"
            assert body["allowed"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
            assert "BTC/USD" in body["detail"]
            st, body = await get("?pairs=BTC-USD")
            assert st == 400 and body["error"] == "malformed_pair"
            st, body = await get("?pairs=BTC/USD,ETH/USD,SOL/USD")
            assert st == 400 and body["error"] == "too_many_pairs"
            st, body = await get("?pairs=BTC/USD", **{"Last-Event-ID": "banana"})
            assert st == 400 and body["error"] == "malformed_event_id"
            st, body = await get("?pairs=BTC/USD&lastEventId=7-")
            assert st == 400 and body["error"] == "malformed_event_id"
            async with s.get(r.url("/nope")) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"] == "not_found"
            async with s.post(r.url(STREAM), data=b"x" * 10) as resp:
                assert resp.status == 405
        assert r.fanout.clients == 0


async def test_connection_limits():
    """Over max_connections an EventSource gets 200 + long retry and is closed; others get 503."""
    settings = make_settings(max_connections=2, overload_retry=30.0, retry_jitter=2.0)
    async with running(settings) as r:
        a = await SSEConn.open(r.port, STREAM)
        b = await SSEConn.open(r.port, STREAM)
        await until(lambda: r.fanout.clients == 2, 5, "two clients")
        c = await SSEConn.open(r.port, STREAM)
        try:
            assert c.status == 200
            await c.read_until_closed()
            assert c.decoder.retry is not None and 30000 <= c.decoder.retry <= 32000
            assert c.events == []
            async with aiohttp.ClientSession() as s, s.get(r.url(STREAM)) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) == 30
                assert (await resp.json())["error"] == "overloaded"
            assert r.hub.rejected["max_connections"] == 2
            a.close()
            await until(lambda: r.fanout.clients == 1, 5, "a client slot freed")
            d = await SSEConn.open(r.port, STREAM)
            await until(lambda: r.fanout.clients == 2, 5, "new client admitted")
            d.close()
        finally:
            for x in (a, b, c):
                x.close()


async def test_per_ip_limit():
    """max_connections_per_ip turns away the extra stream from the same address."""
    async with running(make_settings(max_connections_per_ip=1)) as r:
        a = await SSEConn.open(r.port, STREAM)
        await until(lambda: r.fanout.clients == 1, 5, "one client")
        async with aiohttp.ClientSession() as s, s.get(r.url(STREAM)) as resp:
            assert resp.status == 503
        assert r.hub.rejected == {"max_connections_per_ip": 1}
        a.close()
