"""What one event costs the loader's Python code, without the network.

``pricectl loadtest`` must stay well below the server it measures: at 10,000 clients x
10 updates/s that is 100,000 events/s on one loader core. This driver times the hot
path alone, :meth:`pricectl.loadtest.client.Client.data_received` on the bytes a real
``serve`` writes (one HTTP chunk per event, captured from ``serve``), for many clients
of one worker, each event a fresh ``bytes`` object as ``recv`` gives:

* ``--clients`` clients, each fed the response head and a snapshot, then ``--events``
  price events each, in the order a fan-out delivers them (event 1 to every client,
  then event 2, ...), inside the measurement window so every branch of the window
  accounting runs;
* the figure is nanoseconds per event (median of ``--runs`` runs), and the counts are
  checked (every event in the window, no gap, no duplicate) so a faster path cannot
  silently measure less.

It leaves out what the event loop and the kernel add per event (``epoll_wait``,
``recv``, the worker's pump): measure those in place with ``pricectl loadtest``.
Timings on a shared machine are noisy; instruction counts are not. Run it under
callgrind twice, feeding two numbers of the same prepared events, and divide the
difference (the driver's own loop is about 800 instructions of it)::

    python -m benchmarks.loader_bench                      # ns/event
    valgrind --tool=callgrind --callgrind-out-file=a.out \\
        python -m benchmarks.loader_bench --clients 200 --events 40 --feed 10 --runs 1
    # ... and --feed 30 into b.out; (Ir(b) - Ir(a)) / (200 * 20) = instructions per event
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any

from pricectl.loadtest.client import Client
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.worker import _Worker

__all__ = ["frame", "main", "run"]

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n"
    b"Date: Thu, 26 Nov 2026 01:33:15 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n"
    b"Connection: close\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
    b"\r\n"
)
_EPOCH = 1795656795


def frame(seq: int, ingest_ns: int, kind: str = "price") -> bytes:
    """One event as ``serve`` writes it (captured 2026-11-26): a chunk, id/event/data."""
    data = (
        '{"pair":"BTC/USD","symbol":"BTCUSDT","price":"43657.45000000",'
        '"bid":"43657.45000000","ask":"43657.47000000","open":null,"high":null,"low":null,'
        f'"change_pct":null,"volume":null,"event_ms":{ingest_ns // 1_000_000},'
        f'"ingest_ns":{ingest_ns},"epoch":{_EPOCH},"seq":{seq},"gseq":{seq},'
        '"source":"ws","stale":false}'
    )
    body = f"id: {_EPOCH}-{seq}\nevent: {kind}\ndata: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(body), body)


def run(clients: int, events: int, runs: int, feed: int | None = None) -> dict[str, Any]:
    """Time ``events`` price events to each of ``clients`` clients, ``runs`` times.

    ``feed`` (default ``events``) events are fed; all ``events`` are prepared, so two runs
    with the same ``events`` and different ``feed`` differ only in the events fed (for
    instruction counts under callgrind).
    """
    feed = events if feed is None else feed
    return asyncio.run(_run(clients, events, runs, feed))


async def _run(clients: int, events: int, runs: int, feed: int) -> dict[str, Any]:
    plan = Plan(
        host="127.0.0.1",
        port=1,
        pairs=("BTC/USD",),
        clients=clients,
        ramp=1.0,
        duration=1.0,
        processes=1,
    )
    parent, child = multiprocessing.Pipe()
    per_event: list[float] = []
    try:
        for _ in range(runs):
            worker = _Worker(plan, 0, clients, child)
            worker.window.t0, worker.window.t1 = 0, 1 << 62
            group = [Client(i, worker) for i in range(clients)]
            now = time.time_ns()
            for c in group:
                c.data_received(_HEAD)
                c.data_received(frame(1, now, "snapshot"))
            # a fresh bytes object per client and event, as recv() makes them
            wire = [
                [bytes(bytearray(frame(seq, now))) for _ in group] for seq in range(2, events + 2)
            ]
            t0 = time.perf_counter()
            for k in range(feed):
                row = wire[k]
                for i, c in enumerate(group):
                    c.data_received(row[i])
            elapsed = time.perf_counter() - t0
            s = worker.stats
            expected = clients * feed
            gaps = sum(c.tracker.stats.gaps + c.tracker.stats.duplicates for c in group)
            if s.events_window != expected or s.window.count != expected or gaps:
                raise RuntimeError(
                    f"loader_bench: counted {s.events_window} events ({s.window.count} "
                    f"latencies, {gaps} gaps or duplicates), expected {expected}"
                )
            per_event.append(1e9 * elapsed / max(1, expected))
            worker.epoll.close()
    finally:
        parent.close()
        child.close()
    return {
        "clients": clients,
        "events": feed,
        "runs": runs,
        "ns_per_event": statistics.median(per_event),
        "ns_per_event_runs": [round(x, 1) for x in per_event],
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Print ns per event (median of the runs), or the whole result with ``--json``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loader_bench")
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--events", type=int, default=50, help="price events per client")
    ap.add_argument("--feed", type=int, default=None, help="feed only this many of them")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.clients, args.events, args.runs, args.feed)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['ns_per_event']:.0f} ns/event (median of {args.runs}: "
            f"{result['ns_per_event_runs']}), {args.clients} clients x {result['events']} events"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
