"""Redis failover through Sentinel as the browsers see it: 2 `pricectl ingest`, 2 `pricectl
serve`, all on ``redis+sentinel://`` to a real deployment (1 primary, 1 replica, 3
``redis-sentinel``), the simulator, one recording SSE client per serve.

``SENTINEL FAILOVER`` and then SIGKILL of the (new) primary, with no operator action:
prices resume at every client within 3 s of the promotion, no client sees an older epoch
after a newer one or a duplicate, and every hole is marked by a snapshot (resync).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.ingest.test_candidate import PAIRS
from tests.ingest.test_cluster import Stack, Watcher, stack
from tests.redis_sentinel import SERVICE, SentinelDeployment, sentinel_deployment
from tests.waiting import UNIT, until, wait_for

pytestmark = pytest.mark.timeout(120 * UNIT)

#: The promise: prices again at every client within this long of the promotion.
RESUME_WITHIN = 3.0


def _first_price_after(w: Watcher, pair: str, after: float) -> float | None:
    for at, e in w.events:
        if at > after and e.event == "price" and json.loads(e.data)["pair"] == pair:
            return at
    return None


async def _promote(deployment: SentinelDeployment, old: int, kill: bool) -> tuple[int, float]:
    """Fail the primary on ``old`` over (SIGKILL or SENTINEL FAILOVER); the new primary's
    port and when the test saw it promoted (monotonic)."""
    if kill:
        deployment.kill(old)
    else:
        deployment.failover()
    new = await asyncio.to_thread(wait_for, lambda: deployment.promoted(old), 30, "a promotion")
    assert isinstance(new, int)
    return new, time.monotonic()


async def _resumed(s: Stack, promoted_at: float) -> list[float]:
    """Wait for a live price of every pair at every client after ``promoted_at``; the
    delays."""
    await until(
        lambda: all(
            _first_price_after(w, p, promoted_at) is not None for w in s.watchers for p in PAIRS
        ),
        RESUME_WITHIN + 5,
        "prices at every client after the promotion",
    )
    out = []
    for w in s.watchers:
        for p in PAIRS:
            at = _first_price_after(w, p, promoted_at)
            assert at is not None
            out.append(at - promoted_at)
    return out


async def test_sentinel_failover_and_sigkill_are_followed_by_every_process(
    tmp_path: Path,
) -> None:
    """Both failovers in a row, no process restarted or repointed: prices resume within
    3 s of each promotion at every client, health names the new master, and the clients'
    records hold (epochs never go back, no duplicate, each hole marked by a snapshot)."""
    data = tmp_path / "redis"
    data.mkdir()
    with sentinel_deployment(data) as deployment:
        async with stack(tmp_path, deployment, stale_after=30.0, ingests=2, servers=2) as s:
            first = deployment.master_port()
            assert first is not None
            docs = await s.all_health("ok", 10, "ok everywhere")
            assert docs[0]["bus"]["mode"] == "sentinel" and docs[0]["bus"]["role"] == "master"
            assert docs[0]["bus"]["service"] == SERVICE
            assert docs[0]["bus"]["master"] == f"127.0.0.1:{first}"

            # SENTINEL FAILOVER (the old primary stays up and is demoted seconds later),
            # then SIGKILL of the primary it promoted (promotes the first one back).
            for kill in (False, True):
                old = deployment.master_port()
                assert old is not None
                new, promoted_at = await _promote(deployment, old, kill=kill)
                delays = await _resumed(s, promoted_at)
                how = "SIGKILL" if kill else "SENTINEL FAILOVER"
                assert max(delays) < RESUME_WITHIN, f"{how}: prices resumed after {delays}"
                docs = await s.all_health("ok", 10, f"ok everywhere after {how}")
                for doc in docs:
                    assert doc["bus"]["master"] == f"127.0.0.1:{new}", doc["bus"]
                    assert doc["bus"]["failovers"] >= 1
            for w in s.watchers:
                w.check()
                snapshots = [e for _, e in w.events if e.event == "snapshot"]
                # The opening one per pair, and a resync after each failover.
                assert len(snapshots) >= 3 * len(PAIRS), len(snapshots)
            assert s.sim.connections == 1
