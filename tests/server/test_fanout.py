"""Fan-outs written a slice of clients per loop iteration: order, merging, joiners, leavers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tests.server.harness import SSEConn, make_settings, running
from tests.waiting import until

STREAM = "/api/market-data/stream?pairs=BTC/USD"
UPDATES = 40


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
