"""Pairs on demand: ingest CPU per update with the whole symbol list, and set_pairs latency.

Starts a private redis-server, ``pricectl simulate`` as its own process (ticker every
second, as on Binance), takes the Redis lease with the leader's own script, and runs
one :class:`~pricectl.ingest.relay.Relay` in this process publishing into Redis. Then:

1. **Time to first update.** From the configured five pairs, ``--new`` more pairs are
   added one at a time (``Relay.set_pairs`` with one more pair every ``--interval``
   seconds); a Redis bus subscriber in this process notes when each new pair's first
   update arrives (its REST snapshot) and its first live WebSocket update. p50/p99 of
   both, over the ``--new`` pairs.
2. **CPU per update, whole list.** ``set_pairs`` with every TRADING symbol of the
   simulator's list (1,262 of the bundled 2021 list); once every pair is subscribed and
   after ``--warmup`` seconds, this process's CPU time (user + system: the relay, its
   parser, stamping and the Redis publishes; no consumer runs) over ``--seconds``,
   divided by the updates published. Measured with ``exchange.streams_per_connection``
   at its default (200: 7 connections) and at 1,024 (2 connections) in the same
   sitting, ``--runs`` times each, alternating; the medians and their ratio.

    flock /tmp/bench.lock .venv/bin/python -m benchmarks.pairs_bench
    .venv/bin/python -m benchmarks.pairs_bench --new 20 --runs 1 --seconds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import aiohttp

from benchmarks.waiting import until
from pricectl.bus import keys
from pricectl.bus.base import Fence, Update
from pricectl.bus.leader import ACQUIRE_SCRIPT
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.config import Settings
from pricectl.core.pairs import PAIR_RE, PairMap, bundled_symbols
from pricectl.core.status import to_json
from pricectl.core.universe import Universe
from pricectl.ingest.relay import Relay
from pricectl.loadtest.plan import stream_target
from pricectl.loadtest.probe import read_metrics, sample_process_tree
from tests.redis_server import private_redis

__all__ = ["main", "trading_pairs"]

_PINNED = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD")
#: Pairs per client of the serve side (server.max_pairs_per_connection's default).
_PER_CLIENT = 50


def trading_pairs(settings: Settings) -> list[str]:
    """Every TRADING symbol of the bundled list as a display pair that maps back to it."""
    out: list[str] = []
    seen: set[str] = set()
    for rec in bundled_symbols():
        if rec["status"] != "TRADING":
            continue
        pair = f"{rec['baseAsset']}/{rec['quoteAsset']}"
        if not PAIR_RE.match(pair):
            continue
        if PairMap.build([pair], settings.quote_aliases).symbol_for(pair) != rec["symbol"]:
            continue
        if rec["symbol"] not in seen:
            seen.add(rec["symbol"])
            out.append(pair)
    return out


def _cpu_s() -> float:
    # process_time (CLOCK_PROCESS_CPUTIME_ID) counts in ns; os.times counts in clock
    # ticks (10 ms here), which reads as 0 over a short, light window.
    return time.process_time()


@contextlib.contextmanager
def _simulator() -> Any:
    cmd = [sys.executable, "-m", "pricectl.cli", "simulate", "--port", "0"]
    cmd += ["--pairs", "BTC/USD,ETH/USD"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("pricectl simulate ended before printing its URLs")
            key, _, value = line.strip().partition("=")
            if key in ("BINANCE_WS_URL", "BINANCE_REST_URL"):
                urls[key] = value
        yield urls["BINANCE_WS_URL"], urls["BINANCE_REST_URL"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _fence(url: str) -> Fence:
    client = connect_redis(url)
    try:
        epoch = await client.eval(
            ACQUIRE_SCRIPT, 2, keys.leader(""), keys.epoch(""), "bench", 3_600_000, 0
        )
    finally:
        await client.aclose()
    return Fence("bench", int(epoch))


class _Running:
    """A relay publishing into Redis, in a task of this loop."""

    def __init__(self, settings: Settings, url: str, fence: Fence) -> None:
        self.bus = RedisBus(url)
        self.settings = settings
        self.fence = fence
        self.relay: Relay

    async def __aenter__(self) -> Relay:
        await self.bus.start()
        self.relay = Relay(
            self.bus,
            self.fence,
            exchange=self.settings.exchange,
            pair_map=self.settings.pair_map,
            resilience=self.settings.resilience,
        )
        await self.relay.publish_rest_snapshot()
        self.task = asyncio.get_running_loop().create_task(self.relay.run())
        return self.relay

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.bus.close()


def _stream_clients(port: int, targets: list[str], count: Any) -> None:
    """A process of SSE clients, one per target, adding the events they read to ``count``."""

    async def one(session: aiohttp.ClientSession, target: str) -> None:
        url = f"http://127.0.0.1:{port}{target}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{target[:60]}...: HTTP {resp.status}: {await resp.text()}")
            async for line in resp.content:
                if line.startswith(b"event: price"):
                    with count.get_lock():
                        count.value += 1

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, t) for t in targets))

    asyncio.run(run())


class _Serve:
    """``pricectl serve`` on the bench's Redis with every pair pinned, and a few clients
    (one per 50 pairs) streaming all of them from another process."""

    def __init__(self, pairs: list[str], url: str, rest_url: str, ws_url: str) -> None:
        # By their canonical names (BTC/USDT is served as BTC/USD): a name that is not
        # pinned as such would be an activation, and those are rate-limited.
        universe = Universe.from_symbols(bundled_symbols(), Settings().quote_aliases)
        self.pairs = [universe.resolve(p) for p in pairs]
        self.env = {
            **os.environ,
            "REDIS_URL": url,
            "BINANCE_WS_URL": ws_url,
            "BINANCE_REST_URL": rest_url,
            "PRICECTL_PAIRS": ",".join(self.pairs),
            "LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes]
        self.port = 0
        ctx = multiprocessing.get_context("spawn")
        self.count = ctx.Value("q", 0)
        self.clients: Any = None
        self.ctx = ctx

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> int:
        return int(self.count.value)

    def __enter__(self) -> _Serve:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pricectl.cli", "serve", "--port", "0"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("serving on port "):
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r}")
        self.port = int(line.split()[-1])
        targets = [
            stream_target(self.pairs[i : i + _PER_CLIENT])
            for i in range(0, len(self.pairs), _PER_CLIENT)
        ]
        self.clients = self.ctx.Process(
            target=_stream_clients, args=(self.port, targets, self.count), daemon=True
        )
        self.clients.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.clients is not None:
            self.clients.terminate()
            self.clients.join(timeout=10)
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latency(
    settings: Settings, url: str, fence: Fence, new: list[str], interval: float
) -> dict[str, Any]:
    """Add ``new`` one by one; per pair, seconds to its first update and to live."""
    asked: dict[str, float] = {}
    first: dict[str, float] = {}
    live: dict[str, float] = {}
    consumer = RedisBus(url)
    await consumer.start()
    sub = consumer.subscribe(new)

    async def consume() -> None:
        async for event in sub:
            if isinstance(event, Update):
                u = event.update
                now = time.monotonic()
                if u.pair in asked:
                    first.setdefault(u.pair, now)
                    if u.source == "ws":
                        live.setdefault(u.pair, now)

    try:
        async with _Running(settings, url, fence) as relay, asyncio.TaskGroup() as tg:
            reader = tg.create_task(consume())
            await asyncio.sleep(1.0)  # the subscription is live
            pairs = list(settings.pair_map.pairs)
            for pair in new:
                pairs.append(pair)
                asked[pair] = time.monotonic()
                relay.set_pairs(PairMap.build(pairs, settings.quote_aliases))
                await asyncio.sleep(interval)
            await until(lambda: len(live) == len(new), 30, "every new pair live")
            reader.cancel()
            status = relay.status()
    finally:
        await consumer.close()
    to_first = [first[p] - asked[p] for p in new]
    to_live = [live[p] - asked[p] for p in new]
    return {
        "pairs": len(new),
        "first_update_p50_ms": 1000 * statistics.median(to_first),
        "first_update_p99_ms": 1000 * _pct(to_first, 0.99),
        "live_p50_ms": 1000 * statistics.median(to_live),
        "live_p99_ms": 1000 * _pct(to_live, 0.99),
        "relay_time_to_first_update_ms": to_json(status.time_to_first_update_ms),
        "relay_time_to_live_ms": to_json(status.time_to_live_ms),
    }


def _serve_received(port: int) -> float:
    return read_metrics(f"http://127.0.0.1:{port}/metrics").get(
        "pricectl_updates_received_total", 0.0
    )


async def _cpu(
    settings: Settings,
    url: str,
    fence: Fence,
    pairs: list[str],
    warmup: float,
    seconds: float,
    serve: _Serve | None = None,
) -> dict[str, Any]:
    """Every pair of ``pairs`` active: this process's CPU per update published, and
    (with ``serve``) serve's CPU per update it received from Redis."""
    async with _Running(settings, url, fence) as relay:
        started = time.monotonic()
        relay.set_pairs(PairMap.build(pairs, settings.quote_aliases))
        await until(lambda: len(relay.active_pairs) == len(pairs), 60, "every pair subscribed")
        subscribed_s = time.monotonic() - started
        await asyncio.sleep(warmup)
        s0 = sample_process_tree(serve.pid) if serve else None
        r0 = _serve_received(serve.port) if serve else 0.0
        e0 = serve.events() if serve else 0
        cpu0, pub0, t0 = _cpu_s(), relay.published, time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, pub1, t1 = _cpu_s(), relay.published, time.monotonic()
        s1 = sample_process_tree(serve.pid) if serve else None
        r1 = _serve_received(serve.port) if serve else 0.0
        e1 = serve.events() if serve else 0
        ws = relay.ws.status()
    updates = pub1 - pub0
    served: dict[str, Any] = {}
    if serve is not None and serve.clients is not None and not serve.clients.is_alive():
        raise RuntimeError("the serve side's clients ended (see their error above)")
    if s0 is not None and s1 is not None:
        received = r1 - r0
        serve_cpu = s1.cpu_s - s0.cpu_s
        served = {
            "serve_received_per_s": received / (s1.at - s0.at),
            "serve_events_per_s": (e1 - e0) / (t1 - t0),
            "serve_cpu_pct": 100 * serve_cpu / (s1.at - s0.at),
            "serve_us_per_update": 1e6 * serve_cpu / received if received else float("nan"),
        }
    return {
        **served,
        "pairs": len(pairs),
        "connections": len(ws.connections),
        "subscribed_s": subscribed_s,
        "updates_per_s": updates / (t1 - t0),
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "us_per_update": 1e6 * (cpu1 - cpu0) / updates if updates else float("nan"),
        "control_messages": ws.control_messages,
        "control_errors": ws.control_errors,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings()
    with private_redis() as url, _simulator() as (ws_url, rest_url):
        settings = replace(
            base,
            pairs=_PINNED,
            exchange=replace(base.exchange, ws_url=ws_url, rest_url=rest_url),
        )
        # By canonical name (BTC/USDT is BTC/USD), as ingest publishes them.
        universe = Universe.from_symbols(bundled_symbols(), settings.quote_aliases)
        every = [universe.resolve(p) for p in trading_pairs(settings)][: args.pairs or None]
        pinned = set(settings.pair_map.symbols)
        fresh = [
            p for p in every if PairMap.build([p], settings.quote_aliases).symbols[0] not in pinned
        ]
        fence = await _fence(url)
        latency = await _latency(settings, url, fence, fresh[: args.new], args.interval)
        print(f"latency: {json.dumps(latency)}", file=sys.stderr)
        cpu: dict[int, list[dict[str, Any]]] = {200: [], 1024: []}
        with contextlib.ExitStack() as stack:
            serve = (
                stack.enter_context(_Serve(every, url, rest_url, ws_url)) if args.serve else None
            )
            for _ in range(args.runs):
                for per in (200, 1024):
                    s = replace(
                        settings, exchange=replace(settings.exchange, streams_per_connection=per)
                    )
                    fence = await _fence(url)
                    run = await _cpu(s, url, fence, every, args.warmup, args.seconds, serve)
                    print(f"cpu {per}: {json.dumps(run)}", file=sys.stderr)
                    cpu[per].append(run)
    rows = {}
    for per, runs in cpu.items():
        rows[per] = {
            "streams_per_connection": per,
            "pairs": runs[0]["pairs"],
            "connections": runs[0]["connections"],
            "updates_per_s": statistics.median(r["updates_per_s"] for r in runs),
            "cpu_pct": statistics.median(r["cpu_pct"] for r in runs),
            "us_per_update": statistics.median(r["us_per_update"] for r in runs),
            "us_per_update_runs": [round(r["us_per_update"], 1) for r in runs],
            "subscribed_s": statistics.median(r["subscribed_s"] for r in runs),
        }
        if args.serve:
            for key in (
                "serve_received_per_s",
                "serve_events_per_s",
                "serve_cpu_pct",
                "serve_us_per_update",
            ):
                rows[per][key] = statistics.median(r[key] for r in runs)
            rows[per]["serve_us_per_update_runs"] = [
                round(r["serve_us_per_update"], 1) for r in runs
            ]
    base = rows[1024]["us_per_update"]
    ratio = rows[200]["us_per_update"] / base if base > 0 else float("nan")
    return {"latency": latency, "cpu": list(rows.values()), "ratio_200_vs_1024": ratio}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new", type=int, default=100, help="pairs added one at a time")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between two adds")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--pairs", type=int, default=0, help="active pairs for the CPU runs (0: every TRADING)"
    )
    ap.add_argument(
        "--serve",
        action="store_true",
        help="also run pricectl serve on the Redis with every pair, a client per 50 pairs:"
        " serve CPU per update",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    result = asyncio.run(_main(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    lat = result["latency"]
    print(f"| set_pairs of one new pair ({lat['pairs']} pairs) | p50 | p99 |")
    print("| --- | ---: | ---: |")
    print(
        f"| to its first update (REST snapshot) at a Redis consumer | "
        f"{lat['first_update_p50_ms']:.0f} ms | {lat['first_update_p99_ms']:.0f} ms |"
    )
    print(
        f"| to its first live WebSocket update | {lat['live_p50_ms']:.0f} ms | "
        f"{lat['live_p99_ms']:.0f} ms |"
    )
    print()
    print(
        "| streams/connection | pairs | connections | updates/s | ingest CPU | µs CPU/update "
        "| runs (µs) | all subscribed after |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in result["cpu"]:
        print(
            f"| {r['streams_per_connection']} | {r['pairs']} | {r['connections']} | "
            f"{r['updates_per_s']:.0f} | {r['cpu_pct']:.1f} % | {r['us_per_update']:.1f} | "
            f"{r['us_per_update_runs']} | {r['subscribed_s']:.2f} s |"
        )
    if args.serve:
        print()
        print(
            "| streams/connection | serve: updates received/s | events to clients/s "
            "| serve CPU | µs CPU/update | runs (µs) |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        for r in result["cpu"]:
            print(
                f"| {r['streams_per_connection']} | {r['serve_received_per_s']:.0f} "
                f"| {r['serve_events_per_s']:.0f} | {r['serve_cpu_pct']:.1f} % "
                f"| {r['serve_us_per_update']:.1f} | {r['serve_us_per_update_runs']} |"
            )
    print(f"\nratio 200 vs 1024 streams per connection: {result['ratio_200_vs_1024']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
