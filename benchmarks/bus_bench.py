"""Fenced-publish throughput of one process into Redis (goal: at least 20,000 updates/s).

Run ``python -m benchmarks.bus_bench`` (starts a private ``redis-server`` on a free port)
or ``python -m benchmarks.bus_bench --url redis://127.0.0.1:6379/0``. It takes the lease
under a throwaway prefix, then publishes ``--updates`` updates over ``--pairs`` pairs in
batches of each ``--batch`` size, one awaited script call per batch (as the relay does
with the updates that arrive together), and prints the median of ``--runs`` runs.
``--subscribe`` also consumes every update through a bus subscription in this process.
``--mode submit`` feeds updates one at a time through :class:`Publisher`
as the relay does, so the batches are whatever queued up during the previous call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import time
from collections.abc import Sequence
from typing import Any

from pricectl.bus import Bus, Fence, Update
from pricectl.bus import keys as bus_keys
from pricectl.bus.leader import ACQUIRE_SCRIPT
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.core.ticks import PriceUpdate
from tests.redis_server import private_redis

__all__ = ["Publisher", "main", "run_bench"]

_PAIRS = ["BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD", "ADA/USD", "DOGE/USD"]


def _updates(n: int, pairs: int, epoch: int) -> list[PriceUpdate]:
    """``n`` ticker-sized updates cycling over ``pairs`` pairs, stamped like the relay does."""
    names = [_PAIRS[i] if i < len(_PAIRS) else f"P{i}/USD" for i in range(pairs)]
    seqs = dict.fromkeys(names, 0)
    out = []
    for i in range(n):
        pair = names[i % pairs]
        seqs[pair] += 1
        out.append(
            PriceUpdate(
                pair=pair,
                symbol=pair.replace("/", "") + "T",
                price=f"{43000 + i % 1000}.12",
                bid="43250.11",
                ask="43250.13",
                open="42700.00",
                high="43500.00",
                low="42600.00",
                change_pct="1.29",
                volume="12345.67",
                event_ms=1_700_000_000_000 + i,
                ingest_ns=time.time_ns(),
                epoch=epoch,
                seq=seqs[pair],
                gseq=i + 1,
            )
        )
    return out


class Publisher:
    """Natural batching: updates that arrive while a publish is in flight go out together in
    the next one, as one fenced script call (a lone update goes out at once).

    Only this benchmark uses it: the relay gets the same effect from the WebSocket
    client, which hands over whatever arrived while the previous batch was published.
    Run :meth:`run` as a task; it raises what ``bus.publish`` raises: ``FencedError``
    (the lease is gone) or ``BusError`` (Redis unreachable; the batch in flight is lost,
    later submissions stay queued for a new ``run``).
    """

    def __init__(self, bus: Bus, fence: Fence, max_batch: int = 1000) -> None:
        self.bus = bus
        self.fence = fence
        self.max_batch = max_batch
        #: Updates published, and script calls it took.
        self.published = 0
        self.batches = 0
        self._pending: list[PriceUpdate] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, update: PriceUpdate) -> None:
        """Queue one update (never blocks); it goes out with whatever else is queued."""
        self._pending.append(update)
        self._idle.clear()
        self._wake.set()

    def submit_many(self, updates: Sequence[PriceUpdate]) -> None:
        """Queue several updates (a REST snapshot on takeover, say)."""
        if updates:
            self._pending.extend(updates)
            self._idle.clear()
            self._wake.set()

    @property
    def pending(self) -> int:
        """Updates queued and not yet handed to the bus."""
        return len(self._pending)

    async def flush(self) -> None:
        """Wait until everything submitted so far has been published (needs :meth:`run`)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Publish queued updates, one batch per call, until cancelled or the bus raises."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self.bus.publish(batch, self.fence)
                self.published += len(batch)
                self.batches += 1
            self._idle.set()


async def run_bench(
    url: str,
    updates: int,
    batch: int,
    pairs: int,
    subscribe: bool,
    mode: str = "batch",
    per_yield: int = 1,
) -> dict[str, Any]:
    """One run: ``rate`` (updates published per second), ``received`` (by the subscriber),
    ``in_order`` (the subscriber saw every pair's seq rise by one each time) and, in
    submit mode, ``batches`` (script calls the Publisher made)."""
    prefix = f"bench:{secrets.token_hex(4)}:"
    client = connect_redis(url)
    try:
        epoch = await client.eval(
            ACQUIRE_SCRIPT, 2, bus_keys.leader(prefix), bus_keys.epoch(prefix), "bench", 60_000
        )
        fence = Fence("bench", int(epoch))
        bus = RedisBus(url, prefix)
        await bus.start()
        received = 0
        in_order = True
        last_seq: dict[str, int] = {}
        batches = 0
        consumer: asyncio.Task[None] | None = None
        if subscribe:
            ready = asyncio.Event()
            sub = bus.subscribe(_PAIRS[:pairs])

            async def consume() -> None:
                nonlocal received, in_order
                async for event in sub:
                    if isinstance(event, Update):
                        received += 1
                        u = event.update
                        in_order = in_order and u.seq == last_seq.get(u.pair, 0) + 1
                        last_seq[u.pair] = u.seq
                    else:
                        ready.set()

            consumer = asyncio.create_task(consume())
            await ready.wait()
        batch_list = _updates(updates, pairs, fence.epoch)
        started = time.perf_counter()
        if mode == "submit":
            # As the relay would: one update per exchange frame, yielding to the loop
            # between frames; the Publisher coalesces what queues up during each call.
            publisher = Publisher(bus, fence)
            writer = asyncio.create_task(publisher.run())
            for i, update in enumerate(batch_list, 1):
                publisher.submit(update)
                if i % per_yield == 0:
                    await asyncio.sleep(0)
            await publisher.flush()
            batches = publisher.batches
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        else:
            for i in range(0, updates, batch):
                await bus.publish(batch_list[i : i + batch], fence)
        elapsed = time.perf_counter() - started
        if consumer is not None:
            deadline = time.monotonic() + 10
            while received < updates and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await bus.close()
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        await client.delete(
            bus_keys.leader(prefix), bus_keys.epoch(prefix), bus_keys.latest(prefix)
        )
        return {
            "rate": updates / elapsed,
            "received": received,
            "in_order": in_order,
            "batches": batches,
        }
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    """Print the median fenced-publish rate for each batch size."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus_bench", description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: start a private redis-server)")
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscribe", action="store_true", help="also consume in-process")
    parser.add_argument(
        "--mode",
        choices=["batch", "submit"],
        default="batch",
        help="batch: fixed --batch sizes; submit: one update at a time through Publisher",
    )
    parser.add_argument(
        "--per-yield",
        type=int,
        default=1,
        help="submit mode: updates submitted between two yields to the event loop",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per run as well")
    args = parser.parse_args(argv)
    batches = args.batch or [1, 10, 100]
    if args.mode == "submit":
        batches = [0]
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(private_redis())
        for batch in batches:
            rates = []
            got = 0
            for _ in range(args.runs):
                run = asyncio.run(
                    run_bench(
                        url,
                        args.updates,
                        batch,
                        args.pairs,
                        args.subscribe,
                        args.mode,
                        args.per_yield,
                    )
                )
                rates.append(run["rate"])
                got = run["received"]
                if args.json:
                    print(json.dumps({"mode": args.mode, "batch": batch, **run}))
            extra = f", subscriber got {got}/{args.updates}" if args.subscribe else ""
            label = "submit (coalesced)" if args.mode == "submit" else f"batch {batch:>5}"
            print(
                f"{label}: median {statistics.median(rates):>9,.0f} updates/s "
                f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}){extra}"
            )


if __name__ == "__main__":
    main()
