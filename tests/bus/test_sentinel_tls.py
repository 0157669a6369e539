"""``rediss+sentinel://``: the bus, the lease keys and ``pricectl health --redis`` through
a Sentinel deployment that speaks TLS only (primary, replica and 3 sentinels, each with
``tls-port`` and ``port 0``, replicating over TLS), with a CA and a server certificate for
127.0.0.1 made by ``openssl`` for the test; and the same URL against plain sentinels.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pricectl.bus import Gap, Update, keys
from pricectl.bus.base import Fence
from pricectl.bus.redis import connect_redis
from pricectl.client.health import redis_health
from tests.bus.support import collect, running_bus
from tests.client.test_tail import run_cli, write_config
from tests.redis_sentinel import make_tls_files, sentinel_deployment
from tests.server.harness import tick
from tests.waiting import UNIT, until

pytestmark = pytest.mark.timeout(60 * UNIT)

PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD")


async def test_rediss_sentinel_publishes_subscribes_and_health_is_ok(tmp_path: Path) -> None:
    """Every process on TLS only: a RedisBus on ``rediss+sentinel://...?ssl_ca_certs=<ca>``
    finds the master through the sentinels, publishes and receives its own update, and
    ``pricectl health --redis`` on the URL is OK (exit 0) with role master. The same URL
    against plain-text sentinels is said to be a TLS mismatch."""
    tls = make_tls_files(tmp_path / "tls")
    for name in ("tls-deployment", "plain-deployment"):
        (tmp_path / name).mkdir()
    with sentinel_deployment(tmp_path / "tls-deployment", tls=tls) as deployment:
        url = deployment.url
        assert url.startswith("rediss+sentinel://") and f"ssl_ca_certs={tls.ca}" in url
        client = connect_redis(url)
        try:
            epoch = int(await client.incr(keys.epoch("")))
            await client.set(keys.leader(""), "host-tls", px=60_000)
        finally:
            await client.aclose()
        fence = Fence("host-tls", epoch)
        ticker = tick(epoch)
        async with running_bus(url) as bus:
            events: list[Update | Gap] = []
            reader = asyncio.ensure_future(collect(bus.subscribe(list(PAIRS)), events))
            try:
                await until(lambda: events, 5, "subscribed")
                await bus.publish([ticker(pair) for pair in PAIRS], fence)
                await until(
                    lambda: {e.update.pair for e in events if isinstance(e, Update)} >= set(PAIRS),
                    5,
                    "the updates back through the subscription",
                )
                await bus.heartbeat(fence)
                await until(lambda: bus.role == "master", 5, "the role")
                assert bus.topology()["master"] == f"127.0.0.1:{deployment.master_port()}"
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        cfg = str(write_config(tmp_path))
        code, out, err = await run_cli("--config", cfg, "health", "--redis", url, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["status"] == "ok", (out, err)
        assert doc["bus"]["mode"] == "sentinel" and doc["bus"]["role"] == "master", doc
        assert doc["leader"]["identity"] == "host-tls", doc

    with sentinel_deployment(tmp_path / "plain-deployment") as plain:
        wrong = plain.url.replace("redis+sentinel://", "rediss+sentinel://", 1)
        doc = await redis_health(wrong + f"?ssl_ca_certs={tls.ca}", [])
        assert doc["status"] == "down"
        (reason,) = doc["reasons"]
        assert reason.startswith("no TLS answer from Redis at rediss+sentinel://"), reason
        assert "TLS mismatch" in reason and "use redis+sentinel:// instead" in reason, reason
        assert len(reason) < 400, reason
