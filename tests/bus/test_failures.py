"""The Redis error classifier: what each reply means, and the one retry on a dead socket."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pricectl.bus.failures import Failure, classify, describe, is_unreachable, retry_once
from pricectl.bus.redis import connect_redis
from tests.redis_server import RedisServer


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
        (ResponseError("ERR unknown command"), Failure.ERROR),
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
    assert "read-only replica (READONLY)" in text and "read only replica" in text
    assert describe(AuthenticationError("NOAUTH x")).startswith("refused our credentials")
    assert describe(TimeoutError()) == "unreachable (TimeoutError)"


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
