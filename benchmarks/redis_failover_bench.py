"""The silence a consumer sees per Redis failover, through Sentinel (``redis+sentinel://``).

Run ``python -m benchmarks.redis_failover_bench --runs 10 --fault failover`` (or ``--fault
kill``). It starts a private Sentinel deployment (1 primary, 1 replica, 3
``redis-sentinel``; quorum 2, ``down-after-milliseconds`` 1000, ``failover-timeout``
3000), the simulator (``bookTicker`` at ``--rate`` events per symbol per second, 2
pairs), 2 ``pricectl ingest`` processes and a bus consumer (``RedisBus.subscribe``, the
path serve's hub reads), all on the Sentinel URL. Each run fails the primary over:

- ``failover``: ``SENTINEL FAILOVER`` (the old primary stays up; Sentinel demotes it
  seconds later);
- ``kill``: SIGKILL of the primary (the sentinels agree it is down after
  ``down-after-milliseconds`` and promote the replica); it is restarted as a replica
  before the next run.

- ``cluster-kill``: a Redis Cluster instead (3 primaries, a replica each,
  ``cluster-node-timeout`` 1000, ``redis+cluster://`` with every node listed), and
  SIGKILL of the primary that owns the lease's slot; it is restarted (it rejoins as a
  replica) before the next run.

Per run it prints the silence (the longest time between two consecutive updates at the
consumer around the fault), the promotion time (fault to the sentinels naming the new
master, as polled every 10 ms) and the resume time (promotion to the consumer's next
update). The next run starts once the deployment is whole again (every sentinel names
the master and sees a healthy replica in sync) and at least 6.5 s after the last
promotion: Sentinel does not start a new failover of a service within twice its
``failover-timeout`` of the previous one (a first try that did not wait measured a
promotion 8.8 s after the kill).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.waiting import until
from pricectl.bus import keys
from pricectl.bus.base import Gap
from pricectl.bus.redis import RedisBus
from pricectl.loadtest.spawn import child_env
from pricectl.simulator import Simulator
from tests.redis_cluster import RedisClusterNodes, redis_cluster
from tests.redis_sentinel import SentinelDeployment, sentinel_deployment

__all__ = ["main", "run_failovers"]

_PAIRS = ["BTC/USD", "ETH/USD"]

#: Seconds between a promotion and the next fault: more than 2 x failover-timeout (3 s).
SPACING = 6.5


async def run_failovers(
    runs: int, fault: str, rate: float, folder: Path, on_run: object = print
) -> list[tuple[float, float, float]]:
    """``runs`` failovers of kind ``fault``; ``(silence, promotion, resume)`` of each."""
    if fault == "cluster-kill":
        with redis_cluster(folder) as nodes:
            return await _run(runs, fault, rate, folder, nodes, on_run)
    with sentinel_deployment(folder) as deployment:
        return await _run(runs, fault, rate, folder, deployment, on_run)


async def _run(
    runs: int,
    fault: str,
    rate: float,
    folder: Path,
    deployment: SentinelDeployment | RedisClusterNodes,
    on_run: object,
) -> list[tuple[float, float, float]]:
    sim = Simulator(symbols=("BTCUSDT", "ETHUSDT"), trade_rate=rate)
    await sim.start()
    env = child_env(
        {
            "REDIS_URL": deployment.url,
            "BINANCE_WS_URL": sim.ws_url,
            "BINANCE_REST_URL": sim.rest_url,
            "PRICECTL_PAIRS": ",".join(_PAIRS),
            "PRICECTL_EXCHANGE__STREAM": "bookTicker",
            "LOG_LEVEL": "info",
        }
    )
    procs = []
    for i in range(2):
        with open(folder / f"ingest-{i}.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pricectl.cli", "ingest"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    bus = RedisBus(deployment.url)
    await bus.start()
    seen: list[float] = []

    async def consume() -> None:
        async for event in bus.subscribe(_PAIRS):
            if not isinstance(event, Gap):
                seen.append(time.monotonic())

    consumer = asyncio.create_task(consume())
    results: list[tuple[float, float, float]] = []
    last = -SPACING
    try:
        for i in range(runs):
            # Sentinel starts no new failover of a service within 2 x failover-timeout
            # of the last one: a run must not measure that wait.
            await until(lambda t=last: time.monotonic() - t > SPACING, 60)
            old = await _victim(deployment)
            mark = len(seen)
            await until(lambda m=mark: len(seen) > m + 20, 60)  # flowing right now
            fault_at = time.monotonic()
            await _fail(deployment, fault, old)
            promoted_at = last = time.monotonic()
            await until(lambda p=promoted_at: bool(seen) and seen[-1] > p, 60)
            resumed_at = next(t for t in seen if t > promoted_at)
            window = [t for t in seen if fault_at - 1.0 <= t <= resumed_at]
            silence = max(b - a for a, b in itertools.pairwise(window))
            results.append((silence, promoted_at - fault_at, resumed_at - promoted_at))
            if isinstance(deployment, RedisClusterNodes):
                deployment.restart(old)
            elif fault == "kill":
                new = deployment.master_port()
                deployment.start_data(old, replica_of=new)
            if callable(on_run):
                s, p, r = results[-1]
                on_run(
                    f"run {i + 1}/{runs}: silence {s:.2f}s "
                    f"(promotion {p:.2f}s, resume {r:.2f}s after it)"
                )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        consumer.cancel()
        await bus.close()
        await asyncio.gather(consumer, return_exceptions=True)
        await sim.stop()
    return results


async def _victim(deployment: SentinelDeployment | RedisClusterNodes) -> int:
    """Once the deployment is whole again, the port of the primary to fail: Sentinel's
    master, or the cluster primary that owns the lease's slot."""
    if isinstance(deployment, RedisClusterNodes):
        await until(lambda: deployment.healthy() and deployment.replicas_in_sync(), 60)
        return deployment.owner(keys.leader(keys.slot_prefix("")))
    await until(deployment.whole, 60)
    port = deployment.master_port()
    assert port is not None
    return port


async def _fail(deployment: SentinelDeployment | RedisClusterNodes, fault: str, old: int) -> None:
    """Fail the primary on ``old`` over; return once a replica has been promoted."""
    if isinstance(deployment, RedisClusterNodes):
        deployment.kill(old)
        await until(lambda: deployment.promoted(old), 60)
        return
    if fault == "kill":
        deployment.kill(old)
    else:
        await until(lambda: _failover(deployment), 30)
    await until(lambda: deployment.promoted(old) is not None, 60)


def _failover(deployment: SentinelDeployment) -> bool:
    """SENTINEL FAILOVER; False while Sentinel refuses (one already under way)."""
    try:
        deployment.failover()
    except RuntimeError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run the failovers; each run, then median and max."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_failover_bench", description=__doc__
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fault", choices=["failover", "kill", "cluster-kill"], default="failover")
    parser.add_argument("--rate", type=float, default=50.0, help="events per symbol per second")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="pricectl-redis-failover-"))
    results = asyncio.run(run_failovers(args.runs, args.fault, args.rate, folder))
    for name, values in zip(
        ("silence", "promotion", "resume"), zip(*results, strict=True), strict=True
    ):
        print(
            f"{name} over {len(values)} {args.fault} runs: median {statistics.median(values):.2f}s"
            f", min {min(values):.2f}s, max {max(values):.2f}s"
        )
    print(f"logs in {folder}")


if __name__ == "__main__":
    main()
