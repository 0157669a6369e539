"""Pairs on demand, end to end: a browser's first request for an inactive pair -> its
first price at the client.

Starts a private redis-server, ``pricectl simulate`` (ticker frames every second, as on
Binance), one ``pricectl ingest`` (the leader) and one ``pricectl serve`` on Redis, all
as their own processes. Then, one pair at a time, ``--pairs`` pairs no config names
(the first TRADING pairs of the bundled list after the pinned ones): open
``GET /api/market-data/stream?pairs=<PAIR>`` and time from sending the request to the
first ``price`` or ``snapshot`` event of that pair that is not stale (the leader's REST
snapshot, normally), and to the first one with ``source: ws`` (live). Each stream is
closed before the next pair is asked for. p50/p99 of both, and as a baseline from the
same sitting the same request for a pair already on (a pinned one: its first price is
the snapshot in serve's opening).

    flock /tmp/bench.lock .venv/bin/python -m benchmarks.demand_bench
    .venv/bin/python -m benchmarks.demand_bench --pairs 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.pairs_bench import _simulator
from pricectl.core.pairs import bundled_symbols
from pricectl.core.sse import SSEDecoder
from pricectl.core.universe import Universe
from tests.redis_server import private_redis

__all__ = ["main"]

_PINNED = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD")


def live_nan() -> float:
    return float("nan")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def _processes(env: dict[str, str], log: Path) -> Iterator[int]:
    procs: list[subprocess.Popen[bytes]] = []
    with open(log / "ingest.log", "wb") as out:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pricectl.cli", "ingest"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    with open(log / "serve.log", "wb") as err:
        serve = subprocess.Popen(
            [sys.executable, "-m", "pricectl.cli", "serve", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    procs.append(serve)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline().decode()
        if not line.startswith("serving on port "):
            raise RuntimeError(f"serve did not start: {line!r}")
        yield int(line.split()[-1])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


async def _first_prices(
    port: int, pair: str, timeout: float, *, live: bool = True
) -> tuple[float, float]:
    """Seconds from the request to the first fresh price of ``pair``, and to the first live."""
    url = f"http://127.0.0.1:{port}/api/market-data/stream?pairs={pair}"
    first = live = float("nan")
    decoder = SSEDecoder()
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{pair}: HTTP {resp.status}: {await resp.text()}")
        async with asyncio.timeout(timeout):
            async for chunk in resp.content.iter_any():
                for event in decoder.feed(chunk):
                    if event.event not in ("price", "snapshot"):
                        continue
                    data = json.loads(event.data)
                    if data["pair"] != pair or data["stale"]:
                        continue
                    at = time.monotonic() - started
                    if first != first:  # nan
                        first = at
                        if not live:
                            return first, live_nan()
                    if data["source"] == "ws":
                        live = at
                        return first, live
    return first, live


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
    pairs = [p for p in universe.pairs if p not in _PINNED][: args.pairs]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"pricectl-demand-bench-{os.getpid()}"
    log.mkdir(exist_ok=True)
    with private_redis() as redis_url, _simulator() as (ws_url, rest_url):
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "BINANCE_WS_URL": ws_url,
            "BINANCE_REST_URL": rest_url,
            "PRICECTL_SERVER__ACTIVATIONS_PER_IP": "100000",
            "PRICECTL_SERVER__ACTIVATIONS": "100000",
            "LOG_LEVEL": "warning",
        }
        with _processes(env, log) as port:
            # Wait for the cluster: a pinned pair's price through serve.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await _first_prices(port, "BTC/USD", 5.0)
                    break
                except (RuntimeError, TimeoutError, aiohttp.ClientError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            # Baseline, same sitting: the same request for a pair already on (pinned),
            # whose first price is the snapshot in serve's opening.
            base: list[float] = []
            for i in range(len(pairs)):
                first, _ = await _first_prices(port, _PINNED[i % len(_PINNED)], 10.0, live=False)
                base.append(first)
            firsts: list[float] = []
            lives: list[float] = []
            for pair in pairs:
                first, live = await _first_prices(port, pair, 10.0)
                firsts.append(first)
                lives.append(live)
    ms = [1000 * f for f in firsts]
    base_ms = [1000 * b for b in base]
    live_ms = [1000 * v for v in lives]
    return {
        "pairs": len(pairs),
        "first_price_ms": {"p50": _quantile(ms, 0.5), "p99": _quantile(ms, 0.99), "max": max(ms)},
        "baseline_active_ms": {
            "p50": _quantile(base_ms, 0.5),
            "p99": _quantile(base_ms, 0.99),
            "max": max(base_ms),
        },
        "first_live_ms": {
            "p50": _quantile(live_ms, 0.5),
            "p99": _quantile(live_ms, 0.99),
            "max": max(live_ms),
        },
        "logs": str(log),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(result))
    else:
        f, v, b = result["first_price_ms"], result["first_live_ms"], result["baseline_active_ms"]
        print(f"{result['pairs']} pairs, first request -> first price at the client:")
        print(f"  first price  p50 {f['p50']:.0f} ms  p99 {f['p99']:.0f} ms  max {f['max']:.0f} ms")
        print(f"  pair already on (baseline) p50 {b['p50']:.0f} ms  p99 {b['p99']:.0f} ms")
        print(f"  first live   p50 {v['p50']:.0f} ms  p99 {v['p99']:.0f} ms  max {v['max']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
