"""The floor for serve_bench: the least a Python SSE fan-out does per event, here, today.

A ~150-line prototype of this kind measured 4.7 µs per event and p99 51 ms at 10,000
clients on another day (docs/benchmarks.md). The machine's speed
varies a lot from sitting to sitting (nchan has cost 8.3 and 12.3 µs per event here), so
serve_bench runs this server in the same sitting: raw asyncio protocol, no framework, no
features, each event serialised once and the same bytes written to every subscriber's
transport in one loop. The difference between it and ``pricectl serve`` is what serve's
features and structure cost; the rest is the kernel's.

It sends what serve sends, byte for byte in shape: chunked HTTP/1.1, ``id:``/``event:
price``/``data:`` with an update payload of a real update's size, 10 events a second
(the update rate) with ``ingest_ns`` stamped just before the write loop.

    python -m benchmarks.floor --port 8001 [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from pricectl.core.ticks import PriceUpdate
from pricectl.server.fanout import frame

__all__ = ["main"]

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Subscriber(asyncio.Protocol):
    def __init__(self, subscribers: set[asyncio.Transport]) -> None:
        self.subscribers = subscribers
        self.transport: asyncio.Transport | None = None
        self.request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.subscribers:
            return
        self.request += data
        if b"\r\n\r\n" not in self.request:
            return
        if self.request.startswith(b"GET /api/market-data/stream"):
            self.transport.write(_HEAD + frame(b": ok\n\n"))
            self.subscribers.add(self.transport)
        else:  # /metrics, /health...: the floor has none
            self.transport.write(_NOT_FOUND)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.subscribers.discard(self.transport)


def _payload(seq: int, epoch: int) -> bytes:
    """One event as serve frames it, for a bookTicker update (what spawn's serve relays)."""
    update = PriceUpdate(
        pair="BTC/USD",
        symbol="BTCUSDT",
        price="97123.45000000",
        bid="97123.44000000",
        ask="97123.46000000",
        event_ms=time.time_ns() // 1_000_000,
        ingest_ns=time.time_ns(),
        epoch=epoch,
        seq=seq,
        gseq=seq,
        source="ws",
    )
    raw = update.to_json().encode()
    return frame(b"id: %d-%d\nevent: price\ndata: %s\n\n" % (epoch, seq, raw))


async def _run(port: int, rate: float) -> None:
    loop = asyncio.get_running_loop()
    subscribers: set[asyncio.Transport] = set()
    server = await loop.create_server(
        lambda: _Subscriber(subscribers), "127.0.0.1", port, backlog=4096
    )
    print(f"floor: listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    epoch, seq = time.time_ns() // 1_000_000, 0
    next_at = loop.time()
    async with server:
        while True:
            seq += 1
            data = _payload(seq, epoch)
            for transport in subscribers:
                transport.write(data)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def main(argv: list[str] | None = None) -> int:
    """Serve the floor stream on ``--port`` until killed."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=10.0)
    args = ap.parse_args(argv)
    try:
        asyncio.run(_run(args.port, args.rate))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
