"""Failover gap of ``pricectl ingest`` under SIGKILL (or SIGTERM) of the leader.

Run ``python -m benchmarks.failover_bench`` (a few seconds a run with the default
lease: ttl 15 s, renew_deadline 10 s, retry 2 s). It starts a private redis-server, the
simulator (``bookTicker`` at ``--rate`` events per symbol per second, so the gap is
measured to ~1/(2*rate) s), ``--candidates`` ingest processes, and a bus consumer. Each
run SIGKILLs the process holding the lease and measures, at the consumer, the gap
between the last update of the old epoch and the first of the new one; a fresh ingest
process replaces the dead one, and the next run starts once it is a ready standby, so
every run starts with the same number of warm candidates.

With SIGKILL the dead leader's Redis connections close at once, and with them its
presence subscription; a standby's next acquire attempt (every ``watch``, 0.3 s to
0.45 s with jitter) finds ``PUBSUB NUMSUB`` of the holder's channel at 0 and takes
over with a fresh epoch, then publishes its REST snapshot. Expect well under a second
plus the relay's start (exchangeInfo and a REST snapshot). Before presence was watched
the gap was bounded by the lease ttl instead (median 15.35 s over 20 runs).
``--ttl/--renew-deadline/--retry`` change the lease for the run; ``--signal TERM``
measures a graceful handover (release and announce) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.waiting import until
from pricectl.bus import keys
from pricectl.bus.base import Gap
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.loadtest.spawn import child_env
from pricectl.simulator import Simulator
from tests.redis_server import private_redis

__all__ = ["main", "run_failovers"]

_PAIRS = ["BTC/USD", "ETH/USD"]


async def run_failovers(
    runs: int,
    candidates: int,
    rate: float,
    lease: dict[str, str],
    folder: str,
    on_run: object = print,
    sig: int = signal.SIGKILL,
) -> list[float]:
    """``runs`` failovers by sending ``sig`` to the leader; the gap of each, in seconds."""
    with private_redis() as url:
        sim = Simulator(symbols=("BTCUSDT", "ETHUSDT"), trade_rate=rate)
        await sim.start()
        env = child_env(
            {
                "REDIS_URL": url,
                "BINANCE_WS_URL": sim.ws_url,
                "BINANCE_REST_URL": sim.rest_url,
                "PRICECTL_PAIRS": ",".join(_PAIRS),
                "PRICECTL_EXCHANGE__STREAM": "bookTicker",
                "LOG_LEVEL": "info",
                **lease,
            }
        )
        procs: list[subprocess.Popen[bytes]] = []

        def spawn() -> None:
            with open(os.path.join(folder, f"ingest-{len(procs)}.log"), "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "pricectl.cli", "ingest"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

        bus = RedisBus(url)
        await bus.start()
        seen: list[tuple[float, int]] = []  # (arrival, epoch)

        async def consume() -> None:
            async for event in bus.subscribe(_PAIRS):
                if not isinstance(event, Gap):
                    seen.append((time.monotonic(), event.update.epoch))

        consumer = asyncio.create_task(consume())
        client = connect_redis(url)
        gaps: list[float] = []
        try:
            for _ in range(candidates):
                spawn()
            for i in range(runs):
                await until(lambda: len(seen) > 20, 60)
                token = None
                while token is None:
                    token = await client.get(keys.leader(""))
                    await asyncio.sleep(0.05)
                victim = next(p for p in procs if p.poll() is None and f"-{p.pid}-" in token)
                mark = len(seen)
                await until(lambda m=mark: len(seen) > m + 10, 30)  # flowing right now
                old = seen[-1][1]
                victim.send_signal(sig)
                victim.wait()
                await until(lambda o=old: seen[-1][1] > o, 60)
                last_old = max(t for t, e in seen if e == old)
                first_new = min(t for t, e in seen if e > old)
                gaps.append(first_new - last_old)
                spawn()
                await _ready(client, procs[-1], folder, len(procs) - 1, candidates)
                if callable(on_run):
                    on_run(f"run {i + 1}/{runs}: gap {gaps[-1]:.2f}s")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            consumer.cancel()
            await bus.close()
            await asyncio.gather(consumer, return_exceptions=True)
            await client.aclose()
            await sim.stop()
        return gaps


async def _ready(
    client: Any, proc: subprocess.Popen[bytes], folder: str, index: int, candidates: int
) -> None:
    """Wait until the replacement is a warm standby (its presence channel is up and it has
    checked the pairs), so every run starts with ``candidates`` ready processes and a run
    never measures a process start."""
    log_path = os.path.join(folder, f"ingest-{index}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        alive = await client.pubsub_channels(keys.presence_prefix("") + "*")
        with open(log_path, "rb") as f:
            checked = b"exchangeInfo: all" in f.read()
        if len(alive) >= candidates and checked:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"ingest-{index} did not become a ready standby")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run the failovers and print each gap, the median and the max."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.failover_bench", description=__doc__
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="events per symbol per second")
    parser.add_argument("--ttl", help="leader.ttl (default 15s)")
    parser.add_argument("--renew-deadline", help="leader.renew_deadline (default 10s)")
    parser.add_argument("--retry", help="leader.retry (default 2s)")
    parser.add_argument(
        "--signal",
        choices=["KILL", "TERM"],
        default="KILL",
        help="KILL: a crash (takeover when its presence goes); TERM: a release",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the ingest logs")
    args = parser.parse_args(argv)
    lease = {
        f"PRICECTL_LEADER__{name}": value
        for name, value in (
            ("TTL", args.ttl),
            ("RENEW_DEADLINE", args.renew_deadline),
            ("RETRY", args.retry),
        )
        if value
    }
    folder = tempfile.mkdtemp(prefix="pricectl-failover-")
    gaps = asyncio.run(
        run_failovers(
            args.runs,
            args.candidates,
            args.rate,
            lease,
            folder,
            on_run=print,
            sig=getattr(signal, f"SIG{args.signal}"),
        )
    )
    print(
        f"failover gap over {len(gaps)} SIG{args.signal} runs "
        f"({', '.join(f'{k}={v}' for k, v in lease.items()) or 'default lease'}): "
        f"median {statistics.median(gaps):.2f}s, min {min(gaps):.2f}s, max {max(gaps):.2f}s"
    )
    if args.keep_logs:
        print(f"logs in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
