"""Pairs on demand on real processes: the simulator, 3 `pricectl ingest`, 2 `pricectl
serve`, a redis-server of the test's own. A client asks for pairs no config names; the
simulator's own subscription lists say what the leader subscribed to."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pricectl.bus.base import Update
from pricectl.bus.redis import RedisBus
from pricectl.core.pairs import bundled_symbols
from pricectl.core.universe import Universe
from pricectl.loadtest.spawn import child_env, free_port
from pricectl.simulator.server import Simulator
from tests.ingest.test_candidate import Cluster
from tests.ingest.test_cluster import Stack, Watcher, stack
from tests.redis_server import RedisServer
from tests.server.harness import SSEConn
from tests.server.serve_process import serve_process
from tests.waiting import UNIT, until

pytestmark = pytest.mark.timeout(120 * UNIT)

IDLE_GRACE = 2.0
FAST_GRACE = {"PRICECTL_EXCHANGE__IDLE_GRACE": f"{IDLE_GRACE:g}s"}


@dataclass
class PairWatcher(Watcher):
    """A :class:`Watcher` of the pairs it is given."""

    pairs: tuple[str, ...] = ()

    async def start(self) -> None:
        self.conn = await SSEConn.open(
            self.port, f"/api/market-data/stream?pairs={','.join(self.pairs)}"
        )
        assert self.conn.status == 200, self.conn.headers
        self.task = asyncio.ensure_future(self._read())


def streams_of(s: Stack, symbol: str) -> int:
    """How many of the simulator's connections carry a stream of ``symbol``."""
    prefix = symbol.lower() + "@"
    return sum(1 for conn in s.sim.state()["subscriptions"] for st in conn if st.startswith(prefix))


async def test_a_pair_no_config_names_gets_a_snapshot_then_live_prices(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """ETH/BTC is pinned nowhere: the client gets its price (the leader's REST snapshot)
    and then live WS prices; two serves wanting it make one exchange subscription; once
    nobody watches it, it is unsubscribed after idle_grace."""
    async with stack(tmp_path, redis_server, **FAST_GRACE) as s:
        assert streams_of(s, "ETHBTC") == 0
        asked = time.monotonic()
        a = PairWatcher(s.ports[0], pairs=("eth-btc",))
        await a.start()
        try:
            await until(
                lambda: any(d["source"] == "ws" for _, d, _ in a.prices("ETH/BTC")),
                10,
                "live ETH/BTC at the first client",
            )
            first_at, first, _ = a.prices("ETH/BTC")[0]
            assert first["pair"] == "ETH/BTC" and first["symbol"] == "ETHBTC"
            assert first["source"] == "rest", first  # the snapshot comes before the first tick
            assert first_at - asked < 3.0 * UNIT
            b = PairWatcher(s.ports[1], pairs=("ETH/BTC",))
            await b.start()
            try:
                await until(lambda: b.prices("ETH/BTC"), 10, "ETH/BTC at the second serve")
                assert streams_of(s, "ETHBTC") == 1
                pairs = await s.http.get(
                    f"http://127.0.0.1:{s.ports[1]}/api/market-data/pairs?q=ETH/BTC"
                )
                doc = await pairs.json()
                assert "ETH/BTC" in doc["wanted"] and "ETH/BTC" in doc["active"]
            finally:
                await b.stop()
        finally:
            await a.stop()
        gone = time.monotonic()
        await until(lambda: streams_of(s, "ETHBTC") == 0, IDLE_GRACE + 8, "ETH/BTC unsubscribed")
        assert time.monotonic() - gone >= IDLE_GRACE - 0.5
        for w in s.watchers:  # the pinned pairs never stopped
            await until(lambda w=w: w.prices("BTC/USD")[-1][0] > gone, 5, "BTC/USD still live")


async def test_unknown_pair_is_a_400_with_suggestions(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A pair the exchange does not list is named in a 400, with the nearest names."""
    async with stack(tmp_path, redis_server, **FAST_GRACE) as s:
        url = f"http://127.0.0.1:{s.ports[0]}/api/market-data/stream?pairs=BTC/USX"
        async with s.http.get(url) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"] == "unknown_pair" and "'BTC/USX'" in body["detail"]
        assert "BTC/USD" in body["suggestions"]


async def test_new_leader_serves_300_wanted_pairs_within_5s(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """300 pairs wanted, the leader SIGKILLed: the next leader publishes every one of
    them within 5 s of taking the lease."""
    extra = {"PRICECTL_EXCHANGE__STREAM": "ticker", "PRICECTL_EXCHANGE__IDLE_GRACE": "120s"}
    async with stack(tmp_path, redis_server, **extra) as s:
        universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
        wanted = [p for p in universe.pairs if p not in ("BTC/USD", "ETH/USD")][:300]
        bus = RedisBus(redis_server.url)
        await bus.start()
        sub = bus.subscribe(wanted)
        try:
            await bus.want(wanted, time.time(), wake=True)
            seen: dict[str, int] = {}

            async def read() -> None:
                async for event in sub:
                    if isinstance(event, Update):
                        u = event.update
                        seen[u.pair] = max(seen.get(u.pair, 0), u.epoch)

            reader = asyncio.ensure_future(read())
            await until(lambda: len(seen) == 300, 20, "all 300 pairs from the first leader")
            old = max(seen.values())
            leader = await s.ingest.leader(redis_server.url)
            assert leader is not None
            leader.kill()
            await until(
                lambda: any(e > old for e in seen.values()), 10, "a new leader's first update"
            )
            took_over = time.monotonic()
            await until(
                lambda: all(e > old for e in seen.values()), 5, "all 300 from the new leader"
            )
            assert time.monotonic() - took_over < 5.0 * UNIT
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        finally:
            await sub.aclose()
            await bus.close()


async def test_a_client_cycling_through_pairs_is_capped_others_unaffected(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """One address asking for pair after pair is refused past its activation rate (429,
    with Retry-After) and the cluster never holds more than max_pairs; the pinned pairs'
    clients keep getting prices all along."""
    extra = {**FAST_GRACE, "PRICECTL_EXCHANGE__MAX_PAIRS": "30"}
    async with stack(tmp_path, redis_server, **extra) as s:
        universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
        others = [p for p in universe.pairs if p not in ("BTC/USD", "ETH/USD")]
        candidates = [others[i % len(others)] for i in range(2000)]  # ~1,260 pairs, cycled
        statuses: dict[int, int] = {}
        admitted: set[str] = set()
        start = time.monotonic()
        url = f"http://127.0.0.1:{s.ports[0]}/api/market-data/prices?pairs="
        retry_after = None
        for pair in candidates:
            async with s.http.get(url + pair) as resp:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    admitted.add(pair)
                if resp.status == 429:
                    retry_after = resp.headers.get("Retry-After")
                    body = await resp.json()
                    assert body["error"] == "too_many_activations", body
        assert set(statuses) == {200, 429}, statuses
        assert len(admitted) == 20, statuses  # server.activations_per_ip per minute
        assert statuses[429] >= 2000 - 2 * 20, statuses
        assert retry_after is not None and int(retry_after) >= 1
        active = await s.http.get(f"http://127.0.0.1:{s.ports[0]}/api/market-data/pairs?q=")
        doc = await active.json()
        assert len(doc["active"]) <= 30
        for w in s.watchers:
            await until(lambda w=w: w.prices("ETH/USD")[-1][0] > start, 5, "ETH/USD still live")
            w.check()
        assert max(len(c) for c in s.sim.state()["subscriptions"]) <= 30 + 2


async def test_over_max_pairs_a_new_pair_is_refused_and_watched_ones_stay(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Every slot of exchange.max_pairs watched: a new pair is a 503 naming the cap, at
    either serve, and the watched pairs keep their live prices."""
    extra = {
        **FAST_GRACE,
        "PRICECTL_EXCHANGE__MAX_PAIRS": "10",
        "PRICECTL_SERVER__ACTIVATIONS_PER_IP": "1000",
        "PRICECTL_EXCHANGE__STREAM": "ticker",
    }
    async with stack(tmp_path, redis_server, **extra) as s:
        universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
        others = [p for p in universe.pairs if p not in ("BTC/USD", "ETH/USD")]
        held = PairWatcher(s.ports[0], pairs=tuple(others[:8]))  # 2 pinned + 8 = 10
        await held.start()
        try:
            await until(lambda: all(held.prices(p) for p in others[:8]), 10, "the 8 pairs live")
            for port in s.ports:

                async def refused(port: int = port) -> bool:
                    url = f"http://127.0.0.1:{port}/api/market-data/prices?pairs={others[9]}"
                    async with s.http.get(url) as resp:
                        if resp.status != 503:
                            return False
                        body = await resp.json()
                        assert (
                            body["error"] == "max_pairs" and "exchange.max_pairs" in body["detail"]
                        )
                        assert "Retry-After" in resp.headers
                        return True

                await until(refused, 5, f"503 max_pairs at :{port}")
            mark = time.monotonic()
            await until(
                lambda: all(held.prices(p)[-1][0] > mark for p in others[:8]),
                5,
                "the watched pairs still live",
            )
            assert not any(
                st.startswith(universe.market(others[9]).symbol.lower())
                for c in s.sim.state()["subscriptions"]
                for st in c
            )
        finally:
            await held.stop()


async def test_tail_any_pair_from_serve_and_from_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`pricectl tail` of pairs no config names, through serve and straight from Redis."""
    async with stack(tmp_path, redis_server, **FAST_GRACE) as s:
        env = s.ingest.env
        runs = [
            ["tail", "ethbtc", "--url", f"http://127.0.0.1:{s.ports[0]}", "--count", "3", "--json"],
            [
                "tail",
                "LTC-BTC",
                "--from",
                "redis",
                "--redis",
                redis_server.url,
                "--count",
                "3",
                "--json",
            ],
        ]
        for args, pair in zip(runs, ("ETH/BTC", "LTC/BTC"), strict=True):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pricectl.cli",
                *args,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(20 * UNIT):
                out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
            assert len(lines) >= 3 and {d["pair"] for d in lines} == {pair}, lines


async def test_serve_without_the_pair_list_says_try_again_and_loads_it_later(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """serve (Redis bus) whose exchangeInfo does not answer at start: pinned BTC/USD is
    served, ETH/BTC gets a 503 universe_not_loaded with Retry-After on /prices and
    /stream, health is degraded saying why, `pricectl tail ETH/BTC` keeps retrying; once
    exchangeInfo answers (retried with backoff), ETH/BTC is served and tail gets it."""
    sim = Simulator()
    await sim.start()
    late_port = free_port()
    late_rest: Simulator | None = None
    env = child_env(
        {
            "REDIS_URL": redis_server.url,
            "BINANCE_WS_URL": sim.ws_url,
            "BINANCE_REST_URL": sim.rest_url,
            "PRICECTL_PAIRS": "BTC/USD",
            "PRICECTL_EXCHANGE__STREAM": "bookTicker",
            "LOG_LEVEL": "info",
        }
    )
    ingest = Cluster(tmp_path, env)
    tail: asyncio.subprocess.Process | None = None
    serve_env = {**env, "BINANCE_REST_URL": f"http://127.0.0.1:{late_port}"}
    try:
        ingest.start(1)
        async with (
            serve_process(tmp_path / "serve.log", env=serve_env) as serve,
            aiohttp.ClientSession() as http,
        ):

            async def health() -> dict[str, Any]:
                async with http.get(serve.url("/api/market-data/health")) as resp:
                    doc: dict[str, Any] = await resp.json()
                return doc

            async def pinned_fresh() -> bool:
                doc = await health()
                return "BTC/USD" in doc["pairs"] and not doc["pairs"]["BTC/USD"]["stale"]

            await until(pinned_fresh, 15, "pinned BTC/USD fresh at serve")
            doc = await health()
            assert doc["status"] == "degraded", doc["reasons"]
            assert any("list of pairs is not loaded" in r for r in doc["reasons"]), doc
            for path in ("/api/market-data/prices", "/api/market-data/stream"):
                async with http.get(serve.url(f"{path}?pairs=ETH/BTC")) as resp:
                    assert resp.status == 503, (path, resp.status)
                    assert int(resp.headers["Retry-After"]) >= 1
                    body = await resp.json()
                assert body["error"] == "universe_not_loaded", body
                assert "'ETH/BTC'" in body["detail"] and "BTC/USD" in body["detail"]
            async with http.get(serve.url("/api/market-data/prices?pairs=BTC/USD")) as resp:
                assert resp.status == 200
            tail = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pricectl.cli",
                "tail",
                "ETH/BTC",
                "--url",
                serve.url(),
                "--json",
                "--count",
                "1",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert tail.stderr is not None and tail.stdout is not None
            said = await asyncio.wait_for(tail.stderr.readline(), 15 * UNIT)
            assert b"universe_not_loaded" in said or b"not loaded" in said, said
            assert tail.returncode is None  # retrying, not a usage error

            late_rest = Simulator()
            await late_rest.start(port=late_port)

            async def loaded() -> bool:
                doc = await health()
                return doc["demand"]["universe"] is not None and doc["status"] == "ok"

            await until(loaded, 30, "exchangeInfo loaded by a retry, health ok")
            line = await asyncio.wait_for(tail.stdout.readline(), 20 * UNIT)
            assert json.loads(line)["pair"] == "ETH/BTC", line
            assert await asyncio.wait_for(tail.wait(), 10 * UNIT) == 0
            async with http.get(serve.url("/api/market-data/prices?pairs=ETH/BTC")) as resp:
                assert resp.status == 200
    except BaseException:
        print(ingest.dump())
        raise
    finally:
        if tail is not None and tail.returncode is None:
            tail.kill()
            await tail.wait()
        ingest.kill_all()
        if late_rest is not None:
            await late_rest.stop()
        await sim.stop()
