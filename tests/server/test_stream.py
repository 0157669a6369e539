"""The SSE endpoint with real sockets: headers and opening, bad requests, limits."""

from __future__ import annotations

import contextlib
import json

import aiohttp

from tests.server.harness import SSEConn, make_settings, running
from tests.waiting import until

STREAM = "/api/market-data/stream"


def _fields(body: bytes, marker: bytes) -> list[list[bytes]]:
    """The field lines of every event block of ``body`` that has the line ``marker``."""
    blocks = [b.split(b"\n") for b in body.split(b"\n\n")]
    return [[line for line in b if line] for b in blocks if marker in b]


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
    """Unknown pair (with suggestions), malformed pair, too many pairs, malformed id: 400."""
    async with running(make_settings(max_pairs_per_connection=2)) as r:
        async with aiohttp.ClientSession() as s:

            async def get(q: str, **headers: str) -> tuple[int, dict]:
                async with s.get(r.url(STREAM + q), headers=headers) as resp:
                    return resp.status, await resp.json()

            st, body = await get("?pairs=DOGE/USD")
            assert st == 400 and body["error"] == "unknown_pair"
            # No exchangeInfo in this harness: only the pinned pairs are known, and named.
            assert body["suggestions"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
            assert "'DOGE/USD'" in body["detail"] and "BTC/USD" in body["detail"]
            st, body = await get("?pairs=BTC/USD/EUR")
            assert st == 400 and body["error"] == "malformed_pair"
            st, body = await get("?pairs=BTC/USD,ETH/USD,SOL/USD")
            assert st == 400 and body["error"] == "too_many_pairs"
            for empty in (",", ",%20,"):
                st, body = await get(f"?pairs={empty}")
                assert st == 400 and body["error"] == "malformed_pair", (empty, body)
                assert "names no pair" in body["detail"]
            st, body = await get("?pairs=" + "A" * 1400)
            assert st == 400 and body["error"] == "malformed_pair"
            assert "pairs= is too long (1400 characters, at most 1300)" in body["detail"]
            st, body = await get("?pairs=" + ",".join(["BTC/USD"] * 200))
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


async def test_clock_in_the_opening_and_with_every_ping():
    """The opening starts with event: clock (the server's wall clock, no id), and every
    ping brings another; neither moves the client's last event id."""
    import time

    async with running(make_settings(ping_interval=0.2)) as r:
        ups = await r.publish_pairs("BTC/USD")
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=BTC/USD")
        try:
            await c.wait_events(1)

            async def three_clocks() -> bool:
                with contextlib.suppress(TimeoutError):
                    await c._read_more(0.1)
                return len(c.clocks) >= 3

            await until(three_clocks, 5, "clock events with the pings")
            first = c.clocks[0]
            assert _fields(c.body, b"event: clock")[0] == [
                b"event: clock",
                b"data: " + first.data.encode(),
            ]
            server_ms = json.loads(first.data)["server_ms"]
            assert abs(server_ms - time.time() * 1000) < 5000
            assert c.body.index(b"event: clock") < c.body.index(b"event: snapshot")
            assert c.events[0].id == f"{ups[0].epoch}-{ups[0].gseq}"
        finally:
            c.close()


async def test_a_quiet_pair_is_sent_stale_without_an_id():
    """No update of a pair for stale_after: its clients get event: stale (no id, the last
    update's epoch and seq); a stream opened then gets the marker after its snapshot; a
    new update ends it."""
    async with running(make_settings(stale_after=0.5)) as r:
        (up,) = await r.publish_pairs("ETH/USD", price="10.00")
        c = await SSEConn.open(r.port, f"{STREAM}?pairs=ETH/USD")
        try:
            evs = await c.wait_events(2, timeout=3)
            snap, stale = evs[0], evs[1]
            assert snap.event == "snapshot" and stale.event == "stale"
            # No id field: the client's last event id stays the snapshot's.
            assert not any(f.startswith(b"id:") for f in _fields(c.body, b"event: stale")[0])
            assert stale.id == snap.id
            marker = json.loads(stale.data)
            assert marker["pair"] == "ETH/USD" and marker["stale"] is True
            assert (marker["last_epoch"], marker["last_seq"]) == (up.epoch, up.seq)
            assert "seq" not in marker and "epoch" not in marker
            assert r.hub.stale_marked == 1
            late = await SSEConn.open(r.port, f"{STREAM}?pairs=ETH/USD")
            try:
                opening = await late.wait_events(2)
                assert [e.event for e in opening] == ["snapshot", "stale"]
            finally:
                late.close()
            await r.publish_pairs("ETH/USD", price="11.00")
            evs = await c.wait_events(3)
            assert evs[2].event == "price" and "ETH/USD" not in r.hub.quiet
        finally:
            c.close()
