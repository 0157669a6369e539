"""The Redis error classifier: what each reply means, and the one retry on a dead socket."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pricectl.bus import keys
from pricectl.bus.base import Fence
from pricectl.bus.failures import Failure, classify, describe, is_unreachable, retry_once
from pricectl.bus.leader import Leader
from pricectl.bus.redis import RedisBus, connect_redis
from pricectl.core.health import judge
from pricectl.core.lease import LeasePolicy
from pricectl.core.redaction import redact
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import BusError
from pricectl.loadtest.spawn import free_port
from tests.redis_server import RedisServer
from tests.waiting import until


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RedisConnectionError("Error 111 connecting"), Failure.UNREACHABLE),
        (RedisTimeoutError("Timeout reading"), Failure.UNREACHABLE),
        (ConnectionResetError(104, "reset"), Failure.UNREACHABLE),
        (TimeoutError(), Failure.UNREACHABLE),
        (AuthenticationError("NOAUTH Authentication required."), Failure.AUTH),
        (AuthenticationError("WRONGPASS invalid username-password pair"), Failure.AUTH),
        (NoPermissionError("NOPERM this user has no permissions"), Failure.AUTH),
        (BusyLoadingError("LOADING Redis is loading the dataset"), Failure.LOADING),
        (ReadOnlyError("You can't write against a read only replica."), Failure.READONLY),
        (MovedError("3999 127.0.0.1:6381"), Failure.REDIRECT),
        (ResponseError("READONLY You can't write against a read only replica."), Failure.READONLY),
        (ResponseError("unknown command 'EVALSHA', with args beginning with: "), Failure.NOT_REDIS),
        (ResponseError("ERR unknown command 'HMGET'"), Failure.NOT_REDIS),
        (ResponseError("WRONGTYPE Operation against a key"), Failure.ERROR),
        (RedisConnectionError("The previous master is now a slave"), Failure.READONLY),
        (MasterNotFoundError("No master found for 'mymaster'"), Failure.NO_MASTER),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), Failure.CLUSTER_DOWN),
        (SlotNotCoveredError('Slot "1269" is not covered by the cluster.'), Failure.CLUSTER_DOWN),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), Failure.TLS),
    ],
)
def test_each_reply_has_its_kind(exc: BaseException, kind: Failure) -> None:
    """NOAUTH and LOADING (ConnectionError subclasses in redis-py) are not "unreachable";
    READONLY and MOVED have their own kinds."""
    assert classify(exc) is kind
    assert is_unreachable(exc) == (kind is Failure.UNREACHABLE)


def test_describe_says_what_to_fix() -> None:
    """The log wording names the problem and keeps Redis's own text."""
    text = describe(ReadOnlyError("You can't write against a read only replica."))
    assert "connected to a replica" in text and "read only replica" in text
    assert describe(AuthenticationError("NOAUTH x")).startswith("authentication failed")
    assert describe(ResponseError("unknown command 'EVALSHA'")).startswith(
        "this is not a Redis server, perhaps a sentinel port"
    )
    assert describe(TimeoutError()) == "unreachable (TimeoutError)"


async def test_a_demoted_master_is_retried_on_a_fresh_connection() -> None:
    """redis-py's Sentinel pool turns READONLY into a dropped connection: that one is sent
    again at once (the next connection asks the sentinels); a plain READONLY is not."""
    calls = 0

    async def demoted() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("The previous master is now a slave")
        return "ok"

    assert await retry_once(demoted) == "ok" and calls == 2

    async def replica() -> str:
        nonlocal calls
        calls += 1
        raise ReadOnlyError("You can't write against a read only replica.")

    calls = 0
    with pytest.raises(ReadOnlyError):
        await retry_once(replica)
    assert calls == 1


async def test_retry_once_survives_a_redis_restart(redis_server: RedisServer) -> None:
    """After Redis restarts, the first command on a pooled connection meets a dead socket;
    retry_once sends it again on a fresh one and it succeeds."""
    client = connect_redis(redis_server.url)
    try:
        await client.set("k", "1")
        redis_server.restart()
        assert await retry_once(lambda: client.set("k", "2")) is True
        assert await client.get("k") == "2"
    finally:
        await client.aclose()


async def test_retry_once_does_not_retry_a_refusal(redis_server: RedisServer) -> None:
    """A command Redis refuses is raised at once, not sent twice."""
    client = connect_redis(redis_server.url)
    calls = 0

    async def bad() -> object:
        nonlocal calls
        calls += 1
        return await client.execute_command("NOSUCHCOMMAND")

    try:
        with pytest.raises(ResponseError):
            await retry_once(bad)
        assert calls == 1
    finally:
        await client.aclose()


async def test_a_wrong_password_is_named_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong password: the bus and a candidate both say "authentication failed", once, and
    never "unreachable"; serve's health reason says it too."""
    server = RedisServer(tmp_path, password="right")
    server.start()
    caplog.set_level(logging.INFO, logger="pricectl.bus")
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    bus = RedisBus(url, probe_interval=0.05)
    leader = Leader(url, policy=LeasePolicy(ttl=3.0, renew_deadline=2.0, retry=0.2))
    task = asyncio.ensure_future(leader.run(_never_elected))
    try:
        await bus.start()
        await until(lambda: bus.problem is not None, 5, "the bus to fail")
        assert bus.problem.startswith("authentication failed"), bus.problem
        await until(lambda: "standby: redis auth" in caplog.text, 5, "the candidate's line")
        # Several probes and attempts later (each 50 ms / 100 ms), still one line each.
        await until(lambda: caplog.text.count("authentication failed") >= 2, 5, "both lines")
        assert bus.ping_latency is None
        assert caplog.text.count(f"redis at {redact(url)} authentication failed") == 1
        assert caplog.text.count("standby: redis auth") == 1
        assert "unreachable" not in caplog.text
        status, reasons = judge({}, bus_connected=bus.connected, bus_problem=bus.problem)
        assert status == "down" and reasons[0].startswith("bus authentication failed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await leader.close()
        await bus.close()
        server.kill()


async def test_a_replica_is_named_and_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain URL to a read-only replica: the bus knows its role (health: down, no
    writable master), a publish fails as "connected to a replica", and a candidate says so
    (READONLY from the acquire script), not "unreachable"."""
    caplog.set_level(logging.INFO, logger="pricectl.bus")
    client = connect_redis(redis_server.url)
    try:
        # The lease is ours, then the node becomes a replica of a master that is not
        # there (it keeps its data): read-only, as a demoted master is.
        await client.set(keys.leader(""), "t")
        await client.set(keys.epoch(""), "1")
        await client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    finally:
        await client.aclose()
    bus = RedisBus(redis_server.url, probe_interval=0.05)
    leader = Leader(redis_server.url, policy=LeasePolicy(ttl=3.0, renew_deadline=2.0, retry=0.2))
    task = asyncio.ensure_future(leader.run(_never_elected))
    try:
        await bus.start()
        await until(lambda: bus.role == "replica", 5, "the role")
        status, reasons = judge(
            {"BTC/USD": {"stale": False, "source": "ws"}}, bus_connected=True, bus_role=bus.role
        )
        assert status == "down" and "not a writable master" in reasons[0]
        update = PriceUpdate(pair="BTC/USD", symbol="BTCUSDT", price="1", epoch=1, seq=1)
        with pytest.raises(BusError, match="connected to a replica"):
            await bus.publish([update], Fence("t", 1))
        await until(lambda: "standby: redis readonly" in caplog.text, 5, "the candidate's line")
        assert "connected to a replica, not the master (READONLY)" in caplog.text
        assert "unreachable" not in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await leader.close()
        await bus.close()


async def _never_elected(fence: Fence) -> None:
    raise AssertionError(f"elected with {fence} where no lease can be had")
