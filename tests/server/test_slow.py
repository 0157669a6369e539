"""Slow clients: conflated (newest per pair) while behind, closed past write_timeout,
and never slowing a fast client on the same pair."""

from __future__ import annotations

import asyncio
import json

from tests.server.harness import SSEConn, make_settings, running
from tests.waiting import until

STREAM = "/api/market-data/stream?pairs=BTC/USD,ETH/USD"


async def _flood_until(r, predicate, what: str, fast=None, batch: int = 200) -> int:
    """Publish BTC/ETH updates in batches until ``predicate()``; returns how many.

    With ``fast``, each batch waits until that client has read everything so far:
    the publisher goes as fast as a healthy reader, not faster.
    """
    sent = 0
    pad = "1" * 200  # bigger events fill socket buffers sooner
    while not predicate():
        if sent > 400_000:
            raise AssertionError(f"{what}: not reached after {sent} updates")
        ups = [
            r.ticker("BTC/USD" if i % 2 else "ETH/USD", f"{sent + i}.{pad}") for i in range(batch)
        ]
        await r.publish(*ups)
        sent += len(ups)
        if fast is not None:
            target = fast.base + sent
            await until(lambda t=target: len(fast.events) >= t, 10, "fast client keeping up")
        else:
            await asyncio.sleep(0)
    return sent


async def test_slow_client_is_conflated_then_closed_fast_client_gets_everything():
    """A stopped reader is conflated, then closed after write_timeout; a fast one misses nothing."""
    settings = make_settings(high_water=4096, write_timeout=0.5)
    async with running(settings) as r:
        fast = await SSEConn.open(r.port, STREAM)
        slow = await SSEConn.open(r.port, STREAM, rcvbuf=4096)
        await until(lambda: r.fanout.clients == 2, 5, "two clients")
        reader = asyncio.create_task(fast.wait_events(10**9, timeout=120))
        fast.base = 0
        try:
            sent = await _flood_until(
                r, lambda: r.fanout.slow_conflated >= 1, "slow client conflating", fast, batch=20
            )
            assert r.fanout.slow_dropped == 0
            # keep the feed going: the slow reader stays unwritable until write_timeout
            fast.base = sent
            sent += await _flood_until(
                r, lambda: r.fanout.slow_dropped == 1, "slow client closed", fast, batch=20
            )
            assert r.fanout.clients == 1
            more = await r.publish_pairs("BTC/USD", "ETH/USD", price="1")
            sent += len(more)
            await until(lambda: len(fast.events) >= sent, 20, "fast client got every event")
            seqs: dict[str, list[int]] = {"BTC/USD": [], "ETH/USD": []}
            for e in fast.events:
                obj = json.loads(e.data)
                seqs[obj["pair"]].append(obj["seq"])
            for pair, got in seqs.items():
                assert got == list(range(1, len(got) + 1)), f"{pair}: gap or duplicate"
            assert sum(len(v) for v in seqs.values()) == sent
        finally:
            reader.cancel()
            fast.close()
            slow.close()


async def test_lagging_client_gets_newest_per_pair_when_it_drains():
    """While a client lags only the newest update per pair waits, sent once the client reads."""
    settings = make_settings(high_water=4096, write_timeout=60.0)
    async with running(settings) as r:
        slow = await SSEConn.open(r.port, STREAM, rcvbuf=4096)
        await until(lambda: r.fanout.clients == 1, 5, "client registered")
        try:
            sent = await _flood_until(r, lambda: r.fanout.slow_conflated >= 1, "client conflating")
            # several more per pair while it lags: only the newest of each may be delivered
            extra = []
            for i in range(5):
                extra += await r.publish_pairs("BTC/USD", "ETH/USD", price=f"9{i}")
            sent += len(extra)
            newest = {u.pair: u.seq for u in extra[-2:]}

            async def drained() -> bool:
                await slow.wait_events(len(slow.events) + 1, timeout=2)
                return (
                    r.fanout.slow_conflated >= 1
                    and not r.fanout.conflating
                    and all(
                        json.loads(e.data)["seq"] == newest[json.loads(e.data)["pair"]]
                        for e in slow.events[-2:]
                    )
                )

            await until(drained, 30, "conflated newest values delivered")
            got = len(slow.events)
            assert got < sent, "nothing was conflated"
            last_seen = {}
            for e in slow.events:
                obj = json.loads(e.data)
                assert obj["seq"] > last_seen.get(obj["pair"], 0), "out of order or duplicate"
                last_seen[obj["pair"]] = obj["seq"]
            assert last_seen == newest
            assert r.fanout.slow_dropped == 0
        finally:
            slow.close()
