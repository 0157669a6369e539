"""The whole cluster on real processes: 3 `pricectl ingest`, 2 `pricectl serve`, a
redis-server the test starts (and freezes, flushes), the simulator, and one SSE client per
serve recording every event it gets. Leadership faults as the browsers see them, and
staleness told at every hop.

Each test asserts what the clients saw, per pair: no older epoch after a newer one, no
duplicate, every hole marked by a snapshot, and when the pair turned stale or came back.
``stale_after`` is 3 s here (the claim is about the mechanism, not the default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pricectl.core.sse import SSEEvent
from pricectl.loadtest.spawn import child_env
from pricectl.simulator.server import Simulator
from tests.ingest.test_candidate import PAIRS, Cluster
from tests.redis_server import RedisServer
from tests.server.harness import SSEConn
from tests.waiting import UNIT, until

STALE_AFTER = 3.0

pytestmark = pytest.mark.timeout(90 * UNIT)


@dataclass
class Watcher:
    """One SSE client of one serve process: every event with its arrival time."""

    port: int
    conn: SSEConn | None = None
    events: list[tuple[float, SSEEvent]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        path = f"/api/market-data/stream?pairs={','.join(PAIRS)}"
        self.conn = await SSEConn.open(self.port, path)
        assert self.conn.status == 200
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.conn is not None
        seen = 0
        while not self.conn.eof:
            with contextlib.suppress(TimeoutError):
                await self.conn._read_more(1.0)
            for event in self.conn.events[seen:]:
                self.events.append((time.monotonic(), event))
            seen = len(self.conn.events)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.conn is not None:
            self.conn.close()

    def prices(self, pair: str) -> list[tuple[float, dict[str, Any], str]]:
        """``(arrival, update, kind)`` of every price or snapshot event of ``pair``."""
        out = []
        for at, e in self.events:
            if e.event in ("price", "snapshot"):
                data = json.loads(e.data)
                if data["pair"] == pair:
                    out.append((at, data, e.event))
        return out

    def last_live(self, pair: str) -> float:
        """Arrival of the last update of ``pair`` that was not stale."""
        return max(at for at, d, _ in self.prices(pair) if not d["stale"])

    def stale_since(self, pair: str, after: float) -> float | None:
        """When the client was first told, after ``after``, that ``pair`` is stale: an
        ``event: stale`` or an update with ``stale: true``."""
        for at, e in self.events:
            if at < after:
                continue
            if e.event in ("price", "snapshot", "stale"):
                data = json.loads(e.data)
                if data["pair"] == pair and data["stale"]:
                    return at
        return None

    def check(self) -> None:
        """Per pair: epochs never go back, no (epoch, seq) twice, holes marked by a snapshot."""
        for pair in PAIRS:
            prev: tuple[int, int] | None = None
            for _, d, kind in self.prices(pair):
                key = (d["epoch"], d["seq"])
                if prev is not None:
                    assert key[0] >= prev[0], f"{pair}: epoch {key[0]} after {prev[0]}"
                    if kind == "price":
                        assert key > prev, f"{pair}: {key} again or out of order after {prev}"
                        contiguous = key == (prev[0], prev[1] + 1) or (key[0] > prev[0])
                        assert contiguous, f"{pair}: unmarked hole {prev} -> {key}"
                prev = key if prev is None or key > prev else prev

    def max_silence(self, pair: str, start: float, end: float) -> float:
        """The longest time between two updates of ``pair`` within ``[start, end]``."""
        times = [start] + [at for at, _, _ in self.prices(pair) if start <= at <= end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


@dataclass
class Stack:
    #: A redis-server, or a Sentinel deployment (tests/redis_sentinel.py): both have ``url``.
    redis: Any
    sim: Simulator
    ingest: Cluster
    serves: list[subprocess.Popen[bytes]]
    ports: list[int]
    watchers: list[Watcher]
    http: aiohttp.ClientSession

    async def health(self, port: int) -> dict[str, Any]:
        async with self.http.get(f"http://127.0.0.1:{port}/api/market-data/health") as resp:
            doc: dict[str, Any] = await resp.json()
            return doc

    async def all_health(self, status: str, timeout: float, what: str) -> list[dict[str, Any]]:
        """Wait until every serve reports ``status``; their documents."""
        docs: list[dict[str, Any]] = []

        async def every() -> bool:
            docs[:] = [await self.health(p) for p in self.ports]
            return all(d["status"] == status for d in docs)

        try:
            await until(every, timeout, what)
        except AssertionError as exc:
            got = [(d["status"], d["reasons"], d.get("leader"), d.get("bus")) for d in docs]
            raise AssertionError(f"{exc}; health was {got}") from None
        return docs

    async def told_stale(self, cut: float, stale_after: float) -> None:
        """Every client is told, after ``cut``, that every pair is stale, each within
        ``stale_after`` + 1 s of the pair's last live update."""
        await until(
            lambda: all(w.stale_since(p, cut) for w in self.watchers for p in PAIRS),
            stale_after + 3,
            "every client told every pair is stale",
        )
        for w in self.watchers:
            for pair in PAIRS:
                told = w.stale_since(pair, cut)
                assert told is not None
                late = told - w.last_live(pair)
                assert late < stale_after + 1.0, f"{pair} stale {late:.2f}s after its last update"

    async def live(self) -> None:
        """Every serve ok and every client getting updates of every pair."""
        await self.all_health("ok", 20, "health ok everywhere")
        marks = [len(w.events) for w in self.watchers]
        await until(
            lambda: all(
                {json.loads(e.data)["pair"] for _, e in w.events[m:] if e.event == "price"}
                == set(PAIRS)
                for w, m in zip(self.watchers, marks, strict=True)
            ),
            10,
            "live updates of every pair at every client",
        )

    def dump(self) -> str:
        return self.ingest.dump() + "\n".join(
            f"--- serve-{i} ---\n{(self.ingest.folder / f'serve-{i}.log').read_text()[-3000:]}"
            for i in range(len(self.serves))
        )


def _serve(folder: Path, env: dict[str, str], i: int) -> tuple[subprocess.Popen[bytes], int]:
    err = open(folder / f"serve-{i}.log", "wb")  # noqa: SIM115 - kept by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "pricectl.cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
    )
    err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("serving on port "):
        proc.kill()
        raise AssertionError(f"serve did not start: {line!r}")
    return proc, int(line.split()[-1])


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path,
    redis: Any,
    stale_after: float = STALE_AFTER,
    *,
    ingests: int = 3,
    servers: int = 2,
    serve_urls: list[str] | None = None,
    **extra: str,
) -> AsyncIterator[Stack]:
    """The simulator, ``ingests`` ingest and ``servers`` serve processes on ``redis`` (a
    :class:`RedisServer` or anything with its ``url``), one recording client per serve;
    yields once every serve is ok and every client gets every pair. ``serve_urls`` gives
    each serve its own bus URL (a cluster node each)."""
    sim = Simulator(symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20.0)
    await sim.start()
    env = child_env(
        {
            "REDIS_URL": redis.url,
            "BINANCE_WS_URL": sim.ws_url,
            "BINANCE_REST_URL": sim.rest_url,
            "PRICECTL_PAIRS": ",".join(PAIRS),
            "PRICECTL_EXCHANGE__STREAM": "bookTicker",
            "PRICECTL_RESILIENCE__HEARTBEAT__STALE_AFTER": f"{stale_after:g}s",
            "PRICECTL_SERVER__PING_INTERVAL": "1s",
            "LOG_LEVEL": "info",
            **extra,
        }
    )
    ingest = Cluster(tmp_path, env)
    serves: list[subprocess.Popen[bytes]] = []
    watchers: list[Watcher] = []
    http = aiohttp.ClientSession()
    s: Stack | None = None
    try:
        ingest.start(ingests)
        ports = []
        for i in range(servers):
            own = env if serve_urls is None else {**env, "REDIS_URL": serve_urls[i]}
            proc, port = await asyncio.to_thread(_serve, tmp_path, own, i)
            serves.append(proc)
            ports.append(port)
        watchers = [Watcher(p) for p in ports]
        for w in watchers:
            await w.start()
        s = Stack(redis, sim, ingest, serves, ports, watchers, http)
        await s.live()
        yield s
    except BaseException:
        if s is not None:
            print(s.dump())
        raise
    finally:
        if isinstance(redis, RedisServer):
            redis.thaw()
        for w in watchers:
            await w.stop()
        await http.close()
        ingest.kill_all()
        for p in serves:
            p.kill()
            p.wait(timeout=10)
        await sim.stop()


async def test_whole_ingest_tier_stopped(tmp_path: Path, redis_server: RedisServer) -> None:
    """Every ingest SIGKILLed: both serves say degraded within 5 s (no update and no
    heartbeat, while the data is still fresh), and every client is told each pair is
    stale within stale_after + 1 s of its last live update, by serve itself."""
    stale_after = 6.0  # longer than the quiet limit, so degraded shows before stale
    async with stack(tmp_path, redis_server, stale_after=stale_after) as s:
        cut = time.monotonic()
        for p in s.ingest.procs:
            p.kill()
        docs = await s.all_health("degraded", 5, "degraded everywhere")
        assert time.monotonic() - cut < 5.0 + 0.5 * UNIT
        assert "no bus message and no leader heartbeat for 3s" in docs[0]["reasons"], docs[0]
        await s.told_stale(cut, stale_after)
        for w in s.watchers:
            w.check()
        health = await s.health(s.ports[0])
        assert all(health["pairs"][p]["stale"] for p in PAIRS)
        assert health["status"] == "down" and "no fresh data" in health["reasons"]


async def test_frozen_redis_is_down_within_two_seconds(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis SIGSTOPped: both serves say down within 2 s (no PING answered in 1 s), the
    clients are told the pairs are stale on time, and all is ok again after SIGCONT."""
    async with stack(tmp_path, redis_server) as s:
        cut = time.monotonic()
        s.redis.freeze()
        try:
            docs = await s.all_health("down", 2, "down everywhere")
            assert time.monotonic() - cut < 2.0 + 0.3 * UNIT
            assert any("PING" in r or "unreachable" in r for r in docs[0]["reasons"]), docs[0]
            await s.told_stale(cut, STALE_AFTER)
        finally:
            s.redis.thaw()
        await s.live()
        for w in s.watchers:
            w.check()


async def test_rest_banned_and_websocket_refused_is_stale_on_time(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The WebSocket refused and REST answering 418 (Retry-After 120 s): every client is
    told each pair is stale within stale_after + 1 s of its last live update."""
    async with stack(tmp_path, redis_server) as s:
        cut = time.monotonic()
        s.sim.set_fault(refuse=True, rest418=True, drop=True)
        await s.told_stale(cut, STALE_AFTER)
        for w in s.watchers:
            w.check()
        docs = await s.all_health("down", 5, "no fresh data anywhere")
        assert "no fresh data" in docs[0]["reasons"]


async def test_three_drops_leave_no_hole(tmp_path: Path, redis_server: RedisServer) -> None:
    """Three WebSocket drops 5 s apart: REST covers every pair while the socket is down, so
    no client waits more than rest_poll_interval + 2 s for an update of any pair."""
    async with stack(tmp_path, redis_server) as s:
        start = time.monotonic()
        for i in range(3):
            s.sim.set_fault(drop=True)
            await until(lambda i=i: time.monotonic() - start >= 5.0 * (i + 1), 10, "5 s apart")
        end = time.monotonic()
        for w in s.watchers:
            for pair in PAIRS:
                silence = w.max_silence(pair, start, end)
                assert silence < 2.0 + 2.0, f"{pair}: {silence:.2f}s without an update"
            w.check()
        assert s.sim.connections == 1


async def test_sigterm_of_every_ingest_is_degraded_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Every ingest stopped gracefully (the lease released, nobody left to take it): both
    serves say degraded because no leader holds the lease."""
    async with stack(tmp_path, redis_server) as s:
        for p in s.ingest.procs:
            p.send_signal(signal.SIGTERM)
        docs = await s.all_health("degraded", 5, "degraded everywhere")
        assert any("no ingest leader" in r for r in docs[0]["reasons"]), docs[0]
        for p in s.ingest.procs:
            assert p.wait(timeout=5 * UNIT) == 0


async def test_leadership_faults_as_the_browsers_see_them(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Default lease. SIGKILL of the leader: every browser gets a new epoch within 3 s;
    FLUSHALL (the leader fenced): a leader again within 2 s and a new epoch at every
    browser; no client ever sees an older epoch after a newer one, a duplicate, or an
    unmarked hole."""
    async with stack(tmp_path, redis_server, stale_after=30.0) as s:

        def newest(w: Watcher) -> int:
            return max((d["epoch"] for p in PAIRS for _, d, _ in w.prices(p)), default=0)

        def first_of(w: Watcher, epoch: int) -> float:
            return min(at for p in PAIRS for at, d, _ in w.prices(p) if d["epoch"] == epoch)

        leader = await _leader_proc(s)
        assert leader is not None
        before = max(newest(w) for w in s.watchers)
        cut = time.monotonic()
        leader.kill()
        await until(
            lambda: all(newest(w) > before for w in s.watchers), 5, "a new epoch everywhere"
        )
        for w in s.watchers:
            took = first_of(w, newest(w)) - cut
            assert took < 3.0, f"new epoch after {took:.2f}s"
        before = max(newest(w) for w in s.watchers)
        cut = time.monotonic()
        s.redis.flushall()
        await until(lambda: _leader_proc(s, wait=False), 2, "a leader after FLUSHALL")
        assert time.monotonic() - cut < 2.0 + 0.3 * UNIT
        await until(
            lambda: all(newest(w) > before for w in s.watchers), 5, "a new epoch everywhere"
        )
        await s.live()
        for w in s.watchers:
            w.check()
        assert s.sim.connections == 1


async def _leader_proc(s: Stack, wait: bool = True) -> subprocess.Popen[bytes] | None:
    """The ingest process holding the lease (waits up to 10 s for one if ``wait``)."""
    found: list[subprocess.Popen[bytes]] = []

    async def known() -> bool:
        p = await s.ingest.leader(s.redis.url)
        if p is not None:
            found.append(p)
        return p is not None

    if not wait:
        return found[-1] if await known() else None
    await until(known, 10, "a leader")
    return found[-1]
