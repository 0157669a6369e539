"""The fan-out engine: passes a slice of clients per loop iteration (order, merging,
joiners, leavers), slow clients conflated then closed, pings, and streams unregistered
the moment they close; first the engine on its own, with no hub and no bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from pricectl.server.fanout import Fanout, frame
from tests.server.harness import SSEConn, make_settings, running
from tests.waiting import UNIT, until

STREAM = "/api/market-data/stream?pairs=BTC/USD"
TWO_PAIRS = "/api/market-data/stream?pairs=BTC/USD,ETH/USD"
ALL_PAIRS = "/api/market-data/stream"
UPDATES = 40


class _Accepted(asyncio.Protocol):
    """Holds each accepted transport until the test hands it to the fan-out."""

    transports: list[asyncio.Transport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transports.append(transport)


async def test_fanout_alone_writes_each_stream_its_pairs_framed_for_it() -> None:
    """With no hub and no bus: bytes published for a pair reach every attached stream
    that watches it, as one chunk on a chunked stream and as they are on a plain one,
    not a stream of other pairs; finish ends a chunked body with the last chunk."""
    fanout = Fanout(high_water=1 << 16, write_timeout=5.0, ping_interval=0)
    fanout.start()
    transports: list[asyncio.Transport] = []
    _Accepted.transports = transports
    server = await asyncio.get_running_loop().create_server(_Accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        await until(lambda: len(transports) == 3, 5, "three connections accepted")
        by_port = {t.get_extra_info("peername")[1]: t for t in transports}
        accepted = [by_port[w.get_extra_info("sockname")[1]] for _, w in conns]
        watch = [("BTC/USD", True), ("BTC/USD", False), ("ETH/USD", False)]
        clients = [
            fanout.attach(t, frozenset({pair}), chunked, "127.0.0.1", b": ok\n\n")
            for t, (pair, chunked) in zip(accepted, watch, strict=True)
        ]
        assert (fanout.clients, fanout.connections_total) == (3, 3)
        btc, eth = b"event: price\ndata: 1\n\n", b"event: price\ndata: 2\n\n"
        fanout.publish("BTC/USD", btc)
        fanout.publish("ETH/USD", eth)

        async def read(i: int, n: int) -> bytes:
            return await asyncio.wait_for(conns[i][0].readexactly(n), 5 * UNIT)

        expected = [frame(b": ok\n\n") + frame(btc), b": ok\n\n" + btc, b": ok\n\n" + eth]
        for i, want in enumerate(expected):
            assert await read(i, len(want)) == want
        assert fanout.events_sent == 3
        fanout.finish(clients[0], "done")
        assert await read(0, 5) == b"0\r\n\r\n"
        assert await asyncio.wait_for(conns[0][0].read(), 5 * UNIT) == b""
        assert fanout.clients == 2
    finally:
        fanout.disconnect_all()
        fanout.stop()
        for _, w in conns:
            w.close()
        server.close()
        await server.wait_closed()


def _seqs(conn: SSEConn, event: str) -> list[int]:
    return [json.loads(e.data)["seq"] for e in conn.events if e.event == event]


async def test_sliced_fanout_keeps_order_and_a_joiner_gets_each_update_once() -> None:
    """With fan-outs in flight, every client gets every update in order, a client that
    joins gets each update once (in its snapshot or live), one that leaves is skipped,
    and updates that arrive while a pass is under way reach the clients it has not got
    to yet in the same write as the earlier ones."""
    async with running(make_settings()) as r:
        r.fanout.slice_size = 2
        stayers = [await SSEConn.open(r.port, STREAM) for _ in range(6)]
        leaver = await SSEConn.open(r.port, STREAM)
        await until(lambda: r.fanout.clients == 7, 5, "seven clients")
        in_flight: list[int] = []
        attach = r.fanout.attach

        def attach_spy(*args: Any) -> Any:
            in_flight.append(len(r.fanout._active))
            return attach(*args)

        r.fanout.attach = attach_spy  # type: ignore[method-assign,assignment]

        async def publisher() -> None:
            for i in range(UPDATES):
                await r.publish_pairs("BTC/USD", price=f"{i + 1}")
                await asyncio.sleep(0)
                if i == UPDATES // 2:
                    leaver.close()

        pub = asyncio.create_task(publisher())
        joiners: list[SSEConn] = []
        while not pub.done() and len(joiners) < 8:
            joiners.append(await SSEConn.open(r.port, STREAM))
        await pub
        assert any(n > 0 for n in in_flight), f"no client joined during a fan-out: {in_flight}"
        for c in stayers:
            await c.wait_events(UPDATES, timeout=10)
            assert _seqs(c, "price") == list(range(1, UPDATES + 1))
        for j in joiners:

            async def caught_up(j: SSEConn = j) -> bool:
                prices = _seqs(j, "price")
                if prices and prices[-1] == UPDATES:
                    return True
                with contextlib.suppress(AssertionError):
                    await j.wait_events(len(j.events) + 1, timeout=0.2)
                return False

            await until(caught_up, 10, "a joiner's live updates")
            snap = _seqs(j, "snapshot")
            start = snap[-1] if snap else 0
            assert _seqs(j, "price") == list(range(start + 1, UPDATES + 1)), "gap or duplicate"
        await until(lambda: r.fanout.clients == 6 + len(joiners), 5, "the leaver unregistered")
        assert not r.fanout._active
        # Updates came faster than a pass: clients not reached yet got them in one write.
        assert r.fanout.merged_events > 0


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
        fast = await SSEConn.open(r.port, TWO_PAIRS)
        slow = await SSEConn.open(r.port, TWO_PAIRS, rcvbuf=4096)
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
        slow = await SSEConn.open(r.port, TWO_PAIRS, rcvbuf=4096)
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


async def test_heartbeat_ping():
    """Every client gets ': ping' comments at the ping interval."""
    async with running(make_settings(ping_interval=0.05)) as r:
        c = await SSEConn.open(r.port, ALL_PAIRS)
        try:

            async def pinged() -> bool:
                try:
                    await c._read_more(0.2)
                except TimeoutError:
                    pass
                return c.decoder.comments >= 3

            await until(pinged, 5, "three pings")
            assert b": ping\n\n" in c.body
        finally:
            c.close()


async def test_closed_client_is_unregistered():
    """A client that disconnects is removed from the hub at once."""
    async with running() as r:
        c = await SSEConn.open(r.port, ALL_PAIRS)
        await until(lambda: r.fanout.clients == 1, 5, "client registered")
        c.close()
        await until(lambda: r.fanout.clients == 0, 5, "client unregistered")
        await r.publish_pairs("BTC/USD")
        assert r.fanout.clients == 0
