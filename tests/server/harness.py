"""Test support for the serve tests: a server on port 0, a raw SSE client, update makers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp.typedefs import Middleware

from pricectl.bus.memory import MemoryBus
from pricectl.config import ServerSettings, Settings
from pricectl.core.sse import SSEDecoder, SSEEvent
from pricectl.core.ticks import PriceUpdate
from pricectl.server.app import create_app, start_server
from pricectl.server.fanout import Fanout
from pricectl.server.hub import Hub
from pricectl.server.keys import HUB
from tests.waiting import UNIT, until

__all__ = ["Running", "SSEConn", "make_settings", "running", "tick"]

PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD")


def make_settings(
    pairs: tuple[str, ...] = PAIRS, stale_after: float = 30.0, **server: Any
) -> Settings:
    """Defaults with the given pairs and server settings (no ping unless asked)."""
    base = Settings()
    server.setdefault("ping_interval", 3600.0)
    hb = dataclasses.replace(base.resilience.heartbeat, stale_after=stale_after)
    res = dataclasses.replace(base.resilience, heartbeat=hb)
    return dataclasses.replace(
        base, pairs=pairs, server=dataclasses.replace(ServerSettings(), **server), resilience=res
    )


class Ticker:
    """Makes stamped updates: per-pair seq and a global gseq within one epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.gseq = 0
        self.seq: dict[str, int] = {}

    def __call__(
        self, pair: str, price: str = "100.00", source: str = "ws", stale: bool = False
    ) -> PriceUpdate:
        self.gseq += 1
        self.seq[pair] = self.seq.get(pair, 0) + 1
        return PriceUpdate(
            pair=pair,
            symbol=pair.replace("/USD", "USDT").replace("/", ""),
            price=price,
            bid=price,
            ask=price,
            change_pct="1.00",
            event_ms=int(time.time() * 1000),
            ingest_ns=time.time_ns(),
            epoch=self.epoch,
            seq=self.seq[pair],
            gseq=self.gseq,
            source=source,
            stale=stale,
        )


def tick(epoch: int = 1) -> Ticker:
    return Ticker(epoch)


@dataclass
class Running:
    """A serve app on a free port with a memory bus the test publishes into."""

    settings: Settings
    bus: Any
    app: Any
    runner: Any
    port: int
    hub: Hub
    fence: Any = None
    ticker: Ticker = field(default_factory=lambda: Ticker(1))

    async def publish(self, *updates: PriceUpdate) -> None:
        await self.bus.publish(list(updates), self.fence)

    async def publish_pairs(
        self, *pairs: str, price: str = "100.00", **kw: Any
    ) -> list[PriceUpdate]:
        ups = [self.ticker(p, price, **kw) for p in pairs]
        await self.publish(*ups)
        return ups

    @property
    def fanout(self) -> Fanout:
        """The hub's fan-out engine: its streams and their delivery counters."""
        return self.hub.fanout

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def running(
    settings: Settings | None = None,
    bus: Any = None,
    upstream: Any = None,
    middlewares: Sequence[Middleware] = (),
) -> AsyncIterator[Running]:
    """serve's app from ``create_app`` on a free port, ready (first snapshot read);
    ``middlewares`` are added after the app's own (a test's faults)."""
    settings = settings or make_settings()
    if bus is None:
        bus = MemoryBus()
    await bus.start()
    app = create_app(settings, bus, upstream)
    app.middlewares.extend(middlewares)
    runner, port = await start_server(app, "127.0.0.1", 0)
    r = Running(settings, bus, app, runner, port, app[HUB])
    if isinstance(bus, MemoryBus):
        r.fence = bus.local_fence()
        r.ticker = Ticker(r.fence.epoch)
    try:
        await until(lambda: r.hub.ready, 5, "hub ready")
        yield r
    finally:
        await runner.cleanup()
        await bus.close()


class SSEConn:
    """A raw-socket SSE client: request, status line, headers, de-chunking, SSEDecoder."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.decoder = SSEDecoder()
        self.events: list[SSEEvent] = []
        #: ``event: clock`` events (the server's time), kept apart from ``events``.
        self.clocks: list[SSEEvent] = []
        self.chunked = False
        self._raw = b""
        self.eof = False
        self.base = 0

    @classmethod
    async def open(
        cls, port: int, path: str, headers: dict[str, str] | None = None, rcvbuf: int | None = None
    ) -> SSEConn:
        self = cls()
        if rcvbuf is not None:
            import socket

            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=2**20)
        else:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        hdrs = {"Host": f"127.0.0.1:{port}", "Accept": "text/event-stream"}
        hdrs.update(headers or {})
        req = (
            f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        )
        self.writer.write(req.encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        return self

    async def _read_more(self, timeout: float) -> bool:
        assert self.reader is not None
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.eof = True
            return False
        if self.chunked:
            self._raw += data
            while True:
                i = self._raw.find(b"\r\n")
                if i < 0:
                    break
                size = int(self._raw[:i], 16)
                if size == 0:
                    self._raw = b""
                    break
                if len(self._raw) < i + 2 + size + 2:
                    break
                chunk = self._raw[i + 2 : i + 2 + size]
                self._raw = self._raw[i + 2 + size + 2 :]
                self._feed(chunk)
        else:
            self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        self.body += data
        for event in self.decoder.feed(data):
            (self.clocks if event.event == "clock" else self.events).append(event)

    async def wait_events(self, n: int, timeout: float = 5.0) -> list[SSEEvent]:
        """Read until at least ``n`` events in total have arrived."""
        deadline = time.monotonic() + timeout * UNIT
        while len(self.events) < n:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(
                    f"got {len(self.events)} events, wanted {n}: {self.events[-3:]}"
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await self._read_more(left)
        return self.events

    async def read_until_closed(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout * UNIT
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("stream not closed by the server")
            try:
                await self._read_more(left)
            except (TimeoutError, ConnectionResetError):
                self.eof = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
