"""check_health, the whole of `pricectl health` without its command line: serve's answer,
an unreachable serve, and Redis, each to its document and exit code."""

from __future__ import annotations

from pricectl.client.health import HealthCheck, check_health
from pricectl.loadtest.spawn import free_port
from tests.server.harness import running
from tests.waiting import until

ALL = ("BTC/USD", "ETH/USD", "SOL/USD")


async def test_serve_with_every_pair_live_is_ok() -> None:
    """serve with every pair fresh from the WebSocket: status ok, exit code 0."""
    async with running() as r:
        await r.publish_pairs(*ALL)
        await until(lambda: len(r.hub.latest) == 3, 5, "hub has every pair")
        report = await check_health(HealthCheck(serve_url=r.url(""), pairs=ALL))
    assert report.exit_code == 0 and not report.unreachable
    assert report.doc["status"] == "ok" and set(report.doc["pairs"]) == set(ALL)


async def test_unreachable_serve_is_a_down_report_with_the_hint() -> None:
    """Nothing listening is a report, not an error: down, exit code 2, and how to fix it."""
    url = f"http://127.0.0.1:{free_port()}"
    report = await check_health(HealthCheck(serve_url=url, pairs=ALL, timeout=2.0))
    assert report.exit_code == 2 and report.unreachable
    assert report.doc["origin"] == url
    [reason] = report.doc["reasons"]
    assert "connection refused" in reason and "is `pricectl serve` running?" in reason


async def test_redis_down_is_down() -> None:
    """Asked through Redis that does not answer: down, exit code 2, naming Redis."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    report = await check_health(HealthCheck(serve_url="", pairs=ALL, redis_url=url))
    assert report.exit_code == 2 and report.unreachable
    assert "nothing listens at redis://" in report.doc["reasons"][0]
