"""A Redis Cluster under the whole system: 2 `pricectl ingest` on ``redis+cluster://`` (every
node listed) and 2 `pricectl serve`, each seeded with a different single node, one
recording SSE client per serve; the cluster (3 primaries, a replica each) is started by
the test.

Every serve delivers every pair whatever node it was pointed at (the price channels are
sharded over the cluster); the primary that holds the lease's slot SIGKILLed, its replica
promoted: delivery resumes at every client by itself, no client sees an older epoch after
a newer one or a duplicate, and every hole is marked by a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from pricectl.bus import keys
from tests.ingest.test_candidate import PAIRS
from tests.ingest.test_cluster import Watcher, stack
from tests.redis_cluster import redis_cluster
from tests.waiting import UNIT, until, wait_for

pytestmark = pytest.mark.timeout(120 * UNIT)


def _price_after(w: Watcher, pair: str, after: float) -> float | None:
    for at, e in w.events:
        if at > after and e.event == "price" and json.loads(e.data)["pair"] == pair:
            return at
    return None


async def test_every_serve_delivers_and_a_killed_primary_is_followed(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    with redis_cluster(data) as cluster:
        seeds = cluster.primaries()
        urls = [cluster.url_via(seeds[0]), cluster.url_via(seeds[-1])]
        async with stack(
            tmp_path, cluster, stale_after=30.0, ingests=2, servers=2, serve_urls=urls
        ) as s:
            docs = await s.all_health("ok", 10, "ok everywhere")
            assert all(d["bus"]["mode"] == "cluster" for d in docs)
            victim = cluster.owner(keys.leader(keys.slot_prefix("")))
            cluster.kill(victim)
            killed_at = time.monotonic()  # for the message if the bound fails
            await asyncio.to_thread(wait_for, lambda: cluster.promoted(victim), 30, "promotion")
            promoted_at = time.monotonic()
            await until(
                lambda: all(
                    _price_after(w, p, promoted_at) is not None for w in s.watchers for p in PAIRS
                ),
                15,
                "prices at every client after the promotion",
            )
            await s.all_health("ok", 15, "ok everywhere after the failover")
            for w in s.watchers:
                w.check()
                for p in PAIRS:
                    at = _price_after(w, p, promoted_at)
                    # Measured about 0.7 s; the bound leaves room for a loaded machine.
                    assert at is not None and at - promoted_at < 5.0, (p, at - killed_at)
            assert s.sim.connections == 1
