"""`pricectl health` as a real process: against serve (memory bus fed by the test), against a
real Redis, and `--through` a pass-through and a buffering proxy; exit 0 / 1 / 2."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from pricectl.bus.base import Fence
from pricectl.loadtest.spawn import free_port
from tests.client.test_tail import publishing, run_cli, write_config
from tests.redis_server import RedisServer
from tests.server.harness import make_settings, running, tick
from tests.waiting import until

ALL = ("BTC/USD", "ETH/USD", "SOL/USD")


async def test_all_live_is_ok_exit_0(tmp_path: Path) -> None:
    """Every pair fresh from the WebSocket: status ok, exit 0, summary lists the pairs."""
    async with running() as r:
        await r.publish_pairs(*ALL)
        await until(lambda: len(r.hub.latest) == 3, 5, "hub has every pair")
        code, out, err = await run_cli(
            "--config", str(write_config(tmp_path)), "health", "--url", r.url("")
        )
    assert code == 0, err
    assert "OK" in out and all(p in out for p in ALL) and "clients" in out


async def test_pair_on_rest_or_stale_is_degraded_exit_1(tmp_path: Path) -> None:
    """A pair served from REST, or marked stale, makes the status degraded: exit 1."""
    cfg = str(write_config(tmp_path))
    async with running() as r:
        await r.publish_pairs("BTC/USD", "ETH/USD")
        await r.publish_pairs("SOL/USD", source="rest")
        await until(lambda: len(r.hub.latest) == 3, 5, "hub has every pair")
        code, out, _ = await run_cli("--config", cfg, "health", "--url", r.url(""), "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["status"] == "degraded" and doc["pairs"]["SOL/USD"]["source"] == "rest"
        await r.publish_pairs("SOL/USD")
        await r.publish_pairs("ETH/USD", stale=True)
        await until(lambda: r.hub.latest["ETH/USD"].stale, 5, "ETH/USD marked stale")
        code, out, _ = await run_cli("--config", cfg, "health", "--url", r.url(""))
    assert code == 1
    assert "DEGRADED" in out and "STALE" in out


async def test_no_data_or_no_server_is_down_exit_2(tmp_path: Path) -> None:
    """A serve with no fresh data (HTTP 503) and a serve that is not running both exit 2."""
    cfg = str(write_config(tmp_path))
    async with running() as r:
        code, out, _ = await run_cli("--config", cfg, "health", "--url", r.url(""), "--json")
    assert code == 2 and json.loads(out)["status"] == "down"
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli("--config", cfg, "health", "--url", url)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "connection refused" in err and "is `pricectl serve` running" in err


async def test_redis_health_leader_snapshot_and_outage(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """--redis: fresh snapshot + a leader whose heartbeat moves is ok (0); a missing pair,
    or a lease holder with no heartbeat, degraded (1); Redis down (2)."""
    import redis.asyncio as aioredis

    from pricectl.bus import keys
    from pricectl.bus.redis import RedisBus

    cfg = str(write_config(tmp_path))
    raw = aioredis.from_url(redis_server.url)
    await raw.set(keys.leader(""), "host-1-abc", px=15000)
    await raw.set(keys.epoch(""), "9")
    await raw.aclose()
    bus = RedisBus(redis_server.url)
    await bus.start()
    ticker = tick(9)
    try:
        await bus.publish([ticker("BTC/USD"), ticker("ETH/USD")], Fence("host-1-abc", 9))
        code, out, _ = await run_cli(
            "--config", cfg, "health", "--redis", redis_server.url, "--json"
        )
        doc = json.loads(out)
        assert code == 1 and doc["status"] == "degraded"
        assert doc["leader"]["identity"] == "host-1-abc" and doc["leader"]["epoch"] == 9
        assert doc["pairs"]["SOL/USD"]["stale"] and not doc["pairs"]["BTC/USD"]["stale"]
        await bus.publish([ticker("SOL/USD")], Fence("host-1-abc", 9))
        # Every pair fresh, but the lease holder has never beaten: not a live leader.
        code, out, _ = await run_cli(
            "--config", cfg, "health", "--redis", redis_server.url, "--json"
        )
        doc = json.loads(out)
        assert code == 1 and doc["leader"]["heartbeat_age_s"] is None
        assert any("heartbeat has not moved" in r for r in doc["reasons"]), doc
        await bus.heartbeat(Fence("host-1-abc", 9))
        code, out, _ = await run_cli("--config", cfg, "health", "--redis", redis_server.url)
        assert code == 0 and "OK" in out and "host-1-abc" in out
        assert "role" in out and "master" in out
    finally:
        await bus.close()
    redis_server.kill()
    code, out, err = await run_cli("--config", cfg, "health", "--redis", redis_server.url)
    assert code == 2 and "nothing listens at" in err and "connection refused" in err


@asynccontextmanager
async def proxy(upstream: str, flush_every: float | None) -> AsyncIterator[str]:
    """A reverse proxy in front of serve: passes chunks at once, or (``flush_every``) holds
    them and writes what it has every ``flush_every`` seconds, like a buffering proxy."""

    async def handle(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession() as session,
            session.get(upstream + request.path_qs, headers={"Accept": "text/event-stream"}) as up,
        ):
            resp = web.StreamResponse(
                status=up.status, headers={"Content-Type": up.headers["Content-Type"]}
            )
            await resp.prepare(request)
            held = b""
            loop = asyncio.get_running_loop()
            last_flush = loop.time()
            async for chunk in up.content.iter_any():
                if flush_every is None:
                    await resp.write(chunk)
                    continue
                held += chunk
                if loop.time() - last_flush >= flush_every:
                    await resp.write(held)
                    held, last_flush = b"", loop.time()
            return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_through_tells_a_buffering_proxy_from_a_transparent_one(tmp_path: Path) -> None:
    """--through: a pass-through proxy is reported unbuffered (exit 0); one that holds
    bytes for 1.5 s is reported as buffering the stream (exit 1)."""
    cfg = str(write_config(tmp_path))
    async with running(make_settings()) as r:
        await r.publish_pairs(*ALL)
        async with publishing(r, ALL, every=0.05):
            async with proxy(r.url(""), None) as good:
                code, out, err = await run_cli(
                    "--config", cfg, "health", "--url", r.url(""), "--through", good,
                    "--window", "2s",
                )  # fmt: skip
            assert code == 0, out + err
            assert "passes the stream through unbuffered" in out
            async with proxy(r.url(""), 1.5) as bad:
                code, out, err = await run_cli(
                    "--config", cfg, "health", "--url", r.url(""), "--through", bad,
                    "--window", "2s", "--json",
                )  # fmt: skip
    assert code == 1, out + err
    report = json.loads(out)["through"]
    assert report["buffers"] is True
    assert report["ttfb_through_s"] is None or report["ttfb_through_s"] > 1.0
