"""serve's edge against a hostile client, on a real ``pricectl serve --simulate`` process:
malformed requests, forged log lines, slow and idle connections, the Server header, the
resume cap, and the open-file limit under a slowloris attack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pricectl.simulator import Simulator, SimulatorConfig, symbols_for_pairs
from tests.server.harness import SSEConn
from tests.server.serve_process import ServeProcess, serve_process
from tests.waiting import UNIT, until

STREAM = "/api/market-data/stream?pairs=BTC/USD,ETH/USD"


async def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is and read the whole answer (serve closes after an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout * UNIT)
    finally:
        writer.close()


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@contextlib.asynccontextmanager
async def simulated_serve(tmp_path: Path, **env: str) -> AsyncIterator[ServeProcess]:
    """``pricectl serve --simulate`` (live prices, no network) with ``PRICECTL_*`` env."""
    async with serve_process(
        tmp_path / "serve.log",
        "--simulate",
        env={"PRICECTL_PAIRS": "[BTC/USD, ETH/USD]", **env},
    ) as serve:
        yield serve


FORGED = "/x%0a06:00:00%20CRITICAL%20pricectl.relay:%20FORGED%0d%00%1b[31m"

MALFORMED = {
    "header_too_large": (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
    "too_many_headers": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)) + b"\r\n"
    ),
    "bad_method": b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad_request_line": b"GET / FOO/1.1\r\n\r\n",
    "bad_url": b"GET /\x1b[31m HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad_request": b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
}


async def test_malformed_requests_get_json_and_one_escaped_line_each(tmp_path: Path) -> None:
    """A 100 KB header, 10,000 headers, a NUL in the method and a broken request line get
    the API's JSON error body; each cause is logged once per interval (100 tries of each
    write one line per cause), without a traceback; a forged path is escaped."""
    async with simulated_serve(tmp_path) as serve:
        for error, request in MALFORMED.items():
            status, headers, body = split(await raw_request(serve.port, request))
            doc = json.loads(body)
            assert status in (400, 431) and doc["error"] == error and doc["detail"], doc
            assert headers["content-type"].startswith("application/json")
            assert headers["server"] == "pricectl"
        for _ in range(100):
            for request in MALFORMED.values():
                await raw_request(serve.port, request)
        forged = f"GET {FORGED} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
        status, _, body = split(await raw_request(serve.port, forged))
        assert status == 404 and json.loads(body)["error"] == "not_found"
        await until(lambda: "FORGED" in serve.log, 5, "the access line of the forged path")
        log = serve.log
    assert "Traceback" not in log and "Error handling request" not in log
    for error in MALFORMED:
        lines = [line for line in log.splitlines() if f": {error} (" in line]
        assert len(lines) == 1, (error, lines)
    forged_lines = [line for line in log.splitlines() if "FORGED" in line]
    assert len(forged_lines) == 1
    line = forged_lines[0]
    assert re.match(r"^\d\d:\d\d:\d\d INFO +pricectl\.access: GET /x\\n06:00:00 CRITICAL", line)
    assert "\\r\\x00\\x1b[31m 404" in line
    assert "\x00" not in log and "\x1b" not in log and "\r" not in log


async def test_server_header_names_no_version(tmp_path: Path) -> None:
    """Every answer (page, JSON, 404, a parse error, a stream) says Server: pricectl."""
    async with simulated_serve(tmp_path) as serve, aiohttp.ClientSession() as session:
        for path in ("/", "/api/market-data/health", "/metrics", "/nope"):
            async with session.get(serve.url(path)) as resp:
                assert resp.headers["Server"] == "pricectl", path
        _, headers, _ = split(await raw_request(serve.port, MALFORMED["bad_method"]))
        assert headers["server"] == "pricectl"
        conn = await SSEConn.open(serve.port, STREAM)
        try:
            assert conn.status == 200 and conn.headers["server"] == "pricectl"
        finally:
            conn.close()


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (reading whatever it sends)."""
    start = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), limit * UNIT):
        pass
    return time.monotonic() - start


async def test_slow_head_and_idle_connections_are_closed_but_streams_are_not(
    tmp_path: Path,
) -> None:
    """With 1 s deadlines: a head sent a byte every 0.2 s, a connection that sends nothing
    and a kept-alive idle one are closed in about a second; a stream open for 4 s keeps
    receiving prices all along."""
    async with simulated_serve(
        tmp_path,
        PRICECTL_SERVER__REQUEST_HEAD_TIMEOUT="1s",
        PRICECTL_SERVER__KEEPALIVE_TIMEOUT="1s",
    ) as serve:
        stream = await SSEConn.open(serve.port, STREAM)
        started = time.monotonic()
        try:
            # a slowloris: the head never ends
            r1, w1 = await asyncio.open_connection("127.0.0.1", serve.port)

            async def drip() -> None:
                for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100:
                    w1.write(bytes([byte]))
                    await asyncio.sleep(0.2)

            dripping = asyncio.ensure_future(drip())
            # a connection that never sends a byte
            r2, w2 = await asyncio.open_connection("127.0.0.1", serve.port)
            # a kept-alive connection that goes idle after one request
            r3, w3 = await asyncio.open_connection("127.0.0.1", serve.port)
            w3.write(b"GET /api/market-data/health HTTP/1.1\r\nHost: a\r\n\r\n")
            await r3.readuntil(b"\r\n\r\n")
            slow, idle, kept = await asyncio.gather(
                _closed_after(r1, 5), _closed_after(r2, 5), _closed_after(r3, 5)
            )
            dripping.cancel()
            for w in (w1, w2, w3):
                w.close()
            assert slow < 2.5 * UNIT and idle < 2.5 * UNIT and kept < 2.5 * UNIT
            # the stream outlived both deadlines and is still live
            await until(lambda: time.monotonic() - started > 4, 10, "4 s of streaming")
            before = len(stream.events)
            await stream.wait_events(before + 3, timeout=5)
            assert not stream.eof
        finally:
            stream.close()
        metrics = await _metrics(serve)
    assert metrics.get('pricectl_connections_closed_total{reason="head_timeout"}', 0) >= 2


async def _metrics(serve: ServeProcess) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(serve.url("/metrics")) as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_resume_is_capped_in_events_and_bytes(tmp_path: Path) -> None:
    """A resume within resume_max_events is replayed; one from further back, or one whose
    replay would pass resume_max_bytes, gets the snapshot instead (as an uncovered one)."""
    async with simulated_serve(
        tmp_path,
        PRICECTL_EXCHANGE__STREAM="bookTicker",
        PRICECTL_SERVER__RESUME_MAX_EVENTS="20",
        PRICECTL_SERVER__RESUME_MAX_BYTES="3000",
    ) as serve:
        watcher = await SSEConn.open(serve.port, STREAM)
        try:
            await watcher.wait_events(80, timeout=20)
        finally:
            watcher.close()
        prices = [e for e in watcher.events if e.event == "price"]
        sizes = [len(e.data) + len(e.id or "") + 30 for e in prices]
        assert prices and max(sizes) * 20 > 3000  # the byte cap is the tighter one here

        async def opening(last_id: str) -> list[str]:
            conn = await SSEConn.open(serve.port, STREAM, {"Last-Event-ID": last_id})
            try:
                await conn.wait_events(1)
                return [e.event or "message" for e in conn.events[:2]]
            finally:
                conn.close()

        near = prices[-3].id
        far = prices[-60].id
        assert near and far
        assert (await opening(near))[0] == "price"
        assert (await opening(far))[0] == "snapshot"


async def test_open_file_limit_is_raised_and_reported(tmp_path: Path) -> None:
    """serve started with a soft open-file limit of 1,024 under a hard one of 4,096 raises
    the soft one to 4,096 and says so, and says max_connections does not fit in it."""
    async with serve_process(
        tmp_path / "serve.log",
        "--simulate",
        nofile=(1024, 4096),
        env={"PRICECTL_PAIRS": "[BTC/USD]"},
    ) as serve:
        with open(f"/proc/{serve.proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
        log = serve.log
    assert "open files: soft limit raised from 1024 to 4096 (the hard limit)" in log
    assert "server.max_connections (19900) does not fit in the open-file limit (4096)" in log


class _Reader:
    """Reads one stream all along, noting each price event's latency as it arrives."""

    def __init__(self, conn: SSEConn) -> None:
        self.conn = conn
        self.latencies: list[float] = []
        self.measuring = False

    async def run(self) -> None:
        seen = 0
        while not self.conn.eof:
            try:
                await self.conn._read_more(1.0)
            except TimeoutError:
                pass
            except (OSError, ValueError):
                return
            now_ns = time.time_ns()
            for event in self.conn.events[seen:]:
                if self.measuring and event.event == "price":
                    sent_ns = json.loads(event.data)["ingest_ns"]
                    self.latencies.append((now_ns - sent_ns) / 1e9)
            seen = len(self.conn.events)


@pytest.mark.slow
async def test_slowloris_at_an_open_file_limit_of_1024(tmp_path: Path) -> None:
    """serve at 1,024 open files (soft and hard, it cannot raise them) under 1,000
    slowloris connections from another process: /health answers in under 100 ms, fast
    clients' events arrive at p99 under 100 ms, and the log grows by less than 100 KB."""
    async with serve_process(
        tmp_path / "serve.log",
        "--simulate",
        nofile=1024,
        env={"PRICECTL_PAIRS": "[BTC/USD, ETH/USD]", "PRICECTL_EXCHANGE__STREAM": "bookTicker"},
    ) as serve:
        await until(lambda: "SIMULATED" in serve.log, 10, "serve started")
        assert "does not fit in the open-file limit (1024)" in serve.log
        readers = [_Reader(await SSEConn.open(serve.port, STREAM)) for _ in range(20)]
        health: list[float] = []
        async with asyncio.TaskGroup() as tg:
            for reader in readers:
                tg.create_task(reader.run())
            await until(lambda: all(len(r.conn.events) >= 3 for r in readers), 10, "streams")
            log_before = serve.log_path.stat().st_size
            attacker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.server.slowloris",
                str(serve.port),
                "1000",
                str(25 * UNIT),
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert attacker.stdout is not None
                while True:
                    line = await asyncio.wait_for(attacker.stdout.readline(), 10 * UNIT)
                    assert line, "the attacker stopped"
                    if int(line.split()[1]) >= 950:
                        break
                for reader in readers:
                    reader.measuring = True
                deadline = time.monotonic() + 10 * UNIT
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as session:
                    while time.monotonic() < deadline:
                        t0 = time.monotonic()
                        async with session.get(serve.url("/api/market-data/health")) as resp:
                            await resp.read()
                            assert resp.status in (200, 503)
                        health.append(time.monotonic() - t0)
                        await asyncio.sleep(0.2)
                grown = serve.log_path.stat().st_size - log_before
            finally:
                if attacker.returncode is None:
                    attacker.kill()
                await attacker.wait()
            for reader in readers:
                reader.conn.close()
                reader.conn.eof = True
        log = serve.log
    latencies = [x for r in readers for x in r.latencies]
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert len(health) > 20 and max(health) < 0.1 * UNIT, sorted(health)[-5:]
    assert len(latencies) > 100 and p99 < 0.1 * UNIT, p99
    assert grown < 100_000, grown
    assert "Traceback" not in log


def tcp_memory() -> int:
    """Host TCP memory in bytes: ``/proc/net/sockstat``'s ``TCP ... mem`` (in pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * resource.getpagesize()
    raise AssertionError("no TCP line in /proc/net/sockstat")


def never_reading_client(port: int, path: str) -> socket.socket:
    """A client that asks for the stream and never reads a byte. Its receive buffer is
    kept small, so what the host's TCP memory shows is serve's side of the connection."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


@pytest.mark.slow
async def test_never_reading_clients_pin_little_kernel_memory(tmp_path: Path) -> None:
    """300 clients that never read, at 100 events/s each: host TCP memory stays under
    100 MB above where it was, and when serve drops them (write_timeout) it falls back
    within 2 s: the send buffer is bounded and a drop is a reset."""
    pairs = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD")
    sim = Simulator(
        SimulatorConfig(symbols=symbols_for_pairs(pairs), trade_rate=20, ticker_interval=3600)
    )
    await sim.start()
    clients: list[socket.socket] = []
    try:
        async with serve_process(
            tmp_path / "serve.log",
            env={
                "BINANCE_WS_URL": sim.ws_url,
                "BINANCE_REST_URL": sim.rest_url,
                "PRICECTL_PAIRS": "[" + ", ".join(pairs) + "]",
                "PRICECTL_EXCHANGE__STREAM": "bookTicker",
                "PRICECTL_SERVER__WRITE_TIMEOUT": "6s",
            },
        ) as serve:
            probe = await SSEConn.open(serve.port, "/api/market-data/stream")
            await probe.wait_events(100, timeout=20)  # the feed runs at full rate
            rate = len([e for e in probe.events if e.event == "price"])
            probe.close()
            assert rate >= 50
            baseline = tcp_memory()
            clients = [
                never_reading_client(serve.port, "/api/market-data/stream") for _ in range(300)
            ]
            peak = baseline
            dropped_at = None
            deadline = time.monotonic() + 30 * UNIT
            while time.monotonic() < deadline:
                peak = max(peak, tcp_memory())
                metrics = await _metrics(serve)
                if metrics.get("pricectl_slow_dropped_total", 0) >= 300:
                    dropped_at = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            assert dropped_at is not None, "serve did not drop the clients"
            assert metrics["pricectl_slow_conflated_total"] >= 300
            await until(lambda: tcp_memory() - baseline < 10_000_000, 2 * UNIT, "TCP memory freed")
            freed_in = time.monotonic() - dropped_at
    finally:
        for sock in clients:
            sock.close()
        await sim.stop()
    assert peak - baseline < 100_000_000, (peak - baseline) / 1e6
    assert freed_in < 2 * UNIT
