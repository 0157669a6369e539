"""The Redis bus (``redis://``, ``rediss://``, ``unix://``): DESIGN 3.3 over redis.asyncio.

Layout (``<prefix>`` is ``bus.prefix``, see :mod:`pricectl.bus.keys`)::

    <prefix>prices:<PAIR>      channel, one DESIGN 3.2 JSON object per message
    <prefix>prices:latest      hash PAIR -> latest JSON (the snapshot)
    <prefix>pricectl:leader    the lease token (PX = ttl)         see pricectl.bus.leader
    <prefix>pricectl:epoch     the current leader's epoch
    <prefix>pricectl:wanted    sorted set PAIR -> ms last wanted (pairs on demand)
    <prefix>pricectl:wanted:wake  channel: a serve wants a pair the leader may not have

A publish is ONE Lua script call (:data:`PUBLISH_SCRIPT`): it checks that the leader key
still holds the caller's token and that the epoch counter still equals the caller's
epoch, and only then HSETs and PUBLISHes every update of the batch. A deposed leader is
refused by Redis itself, whatever its own timers think; batching the updates that
arrive together into one call is what makes >= 20,000 updates/s possible (bench.py).

redis-py's own retries are turned off: a transparent reconnect would resubscribe
without telling us, hiding a gap. Instead each subscription reconnects itself with
backoff and yields ``Gap("redis reconnect")`` so the consumer re-reads the snapshot.
Idempotent commands (snapshot reads, PING, the fenced publish, whose replay consumers
drop by ``(epoch, seq)``) are retried once on a fresh connection when the first attempt
finds the connection dead (:func:`pricectl.bus.failures.retry_once`): after a Redis
restart the first use of a pooled connection fails, and that must not cost a batch.

redis-py's ``socket_timeout`` is not used either: it bounds a command's send with
``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that arrives just as
the send completes (the task then runs on as if never cancelled, so a relay told to stop
keeps publishing). :func:`connect_redis` bounds each command with ``asyncio.timeout``
instead, which passes every cancellation on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from pricectl.bus import keys
from pricectl.bus.base import BusEvent, Fence, Gap, Leadership, Subscription, Update
from pricectl.bus.failures import describe, is_unreachable, retry_once
from pricectl.config import redact_url
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.health import PING_LIMIT
from pricectl.core.ticks import PriceUpdate, decode_update
from pricectl.errors import BusError, FencedError

__all__ = [
    "DEFAULT_RECONNECT",
    "HEARTBEAT_SCRIPT",
    "HEARTBEAT_TTL_MS",
    "MAX_BATCH",
    "PUBLISH_SCRIPT",
    "BoundedRedis",
    "RedisBus",
    "connect_redis",
]

log = logging.getLogger(__name__)

#: Reconnect delays to Redis. Redis is our own infrastructure, close by: a short cap
#: (5 s, not the exchange's 60 s) brings consumers back quickly after a broker restart.
DEFAULT_RECONNECT = BackoffPolicy(initial=0.5, max=5.0, multiplier=2.0, reset_after=10.0)

#: Most updates per script call: keeps one call's argument list (3 per update) small
#: enough that Redis is never blocked long by one publish.
MAX_BATCH = 1000

#: KEYS: leader, epoch, latest. ARGV: token, epoch, channel prefix (``<prefix>prices:``),
#: the batch's pairs joined by newlines, their JSON texts joined by newlines (compact
#: JSON never contains a raw newline, and pairs are ``BASE/QUOTE``). Two packed strings
#: instead of three arguments per update: redis-py's per-argument encoding was most of
#: the client's cost. Returns the number published, -1 if the token is not the
#: leader's, -2 if the epoch is not the current one.
PUBLISH_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
local names, texts, channel = ARGV[4], ARGV[5], ARGV[3]
local np, tp, n = 1, 1, 0
while np <= #names do
  local ne = string.find(names, '\\n', np, true) or (#names + 1)
  local te = string.find(texts, '\\n', tp, true) or (#texts + 1)
  local pair = string.sub(names, np, ne - 1)
  local text = string.sub(texts, tp, te - 1)
  redis.call('HSET', KEYS[3], pair, text)
  redis.call('PUBLISH', channel .. pair, text)
  np, tp, n = ne + 1, te + 1, n + 1
end
return n
"""

#: KEYS: leader, epoch, heartbeat. ARGV: token, epoch, value, px. Fenced like a publish:
#: 1 if written, -1 / -2 as PUBLISH_SCRIPT.
HEARTBEAT_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

#: The heartbeat key's expiry: a few missed beats and it is gone.
HEARTBEAT_TTL_MS = 5000

#: What a Redis call can raise besides RedisError when the server is not there.
_UNREACHABLE = (OSError, asyncio.TimeoutError)


class BoundedRedis(aioredis.Redis):
    """A redis.asyncio client whose every command is bounded by ``asyncio.timeout``.

    Replaces redis-py's ``socket_timeout`` (see the module docstring for why). A command
    that times out raises ``TimeoutError`` and its connection is dropped by redis-py, so
    no late reply is ever read as the answer to the next command.
    """

    #: Seconds one command may take, connect included.
    op_timeout: float = 5.0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with asyncio.timeout(self.op_timeout):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def connect_redis(url: str, *, timeout: float = 5.0) -> BoundedRedis:
    """A redis.asyncio client for ``url`` with redis-py's retries off (we retry ourselves).

    Does not connect: the first command does. ``timeout`` bounds connects and each
    command, so a paused Redis turns into an error instead of a hang. Pipelines are not
    bounded by it: wrap ``execute()`` in ``asyncio.timeout`` yourself.
    """
    client = BoundedRedis.from_url(
        url,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=timeout,
        socket_timeout=None,
    )
    assert isinstance(client, BoundedRedis)
    client.op_timeout = timeout
    return client


class RedisBus:
    """The bus over Redis; see the module docstring. Construct, then ``await start()``."""

    def __init__(
        self,
        url: str,
        prefix: str = "",
        *,
        reconnect: BackoffPolicy = DEFAULT_RECONNECT,
        probe_interval: float = 0.5,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        #: True while the last contact with Redis succeeded.
        self.connected = False
        #: False once a PING went unanswered for PING_LIMIT seconds (a frozen Redis
        #: keeps its sockets open, so ``connected`` alone would not notice).
        self.responsive = False
        #: Seconds the last answered PING took.
        self.ping_latency: float | None = None
        #: Updates dropped by subscriptions because their epoch was below the pair's highest.
        self.epoch_drops = 0
        #: Times a subscription lost Redis and subscribed again (each yields a Gap).
        self.reconnects = 0
        self._reconnect = reconnect
        self._probe_interval = probe_interval
        self._client = connect_redis(url, timeout=timeout)
        self._script = self._client.register_script(PUBLISH_SCRIPT)
        self._heartbeat = self._client.register_script(HEARTBEAT_SCRIPT)
        self._fence_keys = [keys.leader(prefix), keys.epoch(prefix), keys.latest(prefix)]
        self._heartbeat_keys = [keys.leader(prefix), keys.epoch(prefix), keys.heartbeat(prefix)]
        self._leadership_known = False
        self._ever_responsive = False
        self._holder: str | None = None
        self._beat: str | None = None
        self._beat_at: float | None = None
        self._channels: dict[str, str] = {}
        self._channel_prefix = keys.channel(prefix, "")
        self._pubsubs: set[Any] = set()
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Begin probing Redis in the background; never raises if Redis is down."""
        if self._probe is None:
            self._probe = asyncio.create_task(self._probe_loop(), name="redis-bus-probe")

    async def close(self) -> None:
        """Stop probing, end every subscription, close the connections."""
        self._closed = True
        self._stopping.set()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._probe_interval + 1.0):
                    await self._probe
            self._probe = None
        for pubsub in list(self._pubsubs):
            # Breaks the blocked read; the subscription sees _closed and ends.
            with contextlib.suppress(Exception):
                await pubsub.connection.disconnect()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        self.connected = False

    # --- publish / snapshot --------------------------------------------------------

    async def publish(self, updates: Sequence[PriceUpdate], fence: Fence) -> None:
        """Fenced publish of the batch in one script call (chunks of :data:`MAX_BATCH`).

        Raises ``FencedError`` if Redis says the fence is not the current lease and
        ``BusError`` if Redis cannot be reached. A batch whose first attempt met a dead
        connection is sent once more; if the first did reach Redis, subscribers drop the
        repeat by ``(epoch, seq)`` (:class:`~pricectl.bus.base.EpochFilter`).
        """
        for start in range(0, len(updates), MAX_BATCH):
            chunk = updates[start : start + MAX_BATCH]
            if not chunk:
                continue
            args: list[str | int] = [
                fence.token,
                fence.epoch,
                self._channel_prefix,
                "\n".join([u.pair for u in chunk]),
                "\n".join([u.to_json() for u in chunk]),
            ]
            try:
                result = await retry_once(partial(self._script, keys=self._fence_keys, args=args))
            except (RedisError, *_UNREACHABLE) as exc:
                if is_unreachable(exc):
                    self._set_connected(False, exc)
                raise BusError(f"publish failed: redis at {self._where} {describe(exc)}") from exc
            self._set_connected(True)
            if result == -1:
                raise FencedError(f"publish refused by redis: {fence.token} is not the leader")
            if result == -2:
                raise FencedError(f"publish refused by redis: epoch {fence.epoch} is not current")

    async def heartbeat(self, fence: Fence) -> None:
        """Rewrite the heartbeat key under ``fence`` (FencedError / BusError as publish)."""
        value = f"{fence.epoch} {fence.token} {time.time_ns() // 1_000_000}"
        args: list[str | int] = [fence.token, fence.epoch, value, HEARTBEAT_TTL_MS]
        try:
            beat = partial(self._heartbeat, keys=self._heartbeat_keys, args=args)
            result = await retry_once(beat)
        except (RedisError, *_UNREACHABLE) as exc:
            raise BusError(f"heartbeat failed: redis at {self._where} {describe(exc)}") from exc
        if result in (-1, -2):
            raise FencedError(f"heartbeat refused by redis: epoch {fence.epoch} is not current")

    def leadership(self) -> Leadership | None:
        """The lease holder and the heartbeat's age as the probe last read them."""
        if not self._leadership_known:
            return None
        at = self._beat_at
        return Leadership(self._holder, None if at is None else time.monotonic() - at)

    async def snapshot(self, pairs: Iterable[str]) -> dict[str, PriceUpdate]:
        """The latest update of each pair that has one (HMGET ``prices:latest``)."""
        wanted = list(pairs)
        if not wanted:
            return {}
        try:
            values = await retry_once(lambda: self._client.hmget(keys.latest(self.prefix), wanted))
        except (RedisError, *_UNREACHABLE) as exc:
            if is_unreachable(exc):
                self._set_connected(False, exc)
            raise BusError(f"snapshot failed: redis at {self._where} {describe(exc)}") from exc
        self._set_connected(True)
        out: dict[str, PriceUpdate] = {}
        for pair, raw in zip(wanted, values, strict=True):
            if raw is None:
                continue
            try:
                out[pair] = decode_update(raw)
            except ValueError as exc:
                log.warning("ignoring a bad snapshot entry for %s: %s", pair, exc)
        return out

    # --- subscribe -----------------------------------------------------------------

    def subscribe(self, pairs: Iterable[str]) -> Subscription:
        """Live updates of ``pairs``; ``Gap("subscribed")`` first, ``Gap("redis reconnect")``
        after every reconnect. Keeps retrying while Redis is down; ends on :meth:`close`.
        Its pairs can change at run time (SUBSCRIBE / UNSUBSCRIBE on the same connection)."""
        wanted = tuple(dict.fromkeys(pairs))
        channels = _Channels(self, [self._channel(p) for p in wanted])
        events = self._listen(channels)
        return Subscription(
            wanted, events, self.snapshot, on_drop=self._count_drop, pairset=channels
        )

    def _count_drop(self) -> None:
        self.epoch_drops += 1

    async def _listen(self, channels: _Channels) -> AsyncIterator[BusEvent]:
        backoff = Backoff(self._reconnect)
        ever_subscribed = False
        warned = False
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsubs.add(pubsub)
            try:
                # A placeholder keeps a subscription with no pairs (yet) a subscribed
                # connection, so get_message has something to read from.
                await pubsub.subscribe(keys.wanted_channel(self.prefix) + ":idle", *channels.names)
                channels.pubsub = pubsub
                self._set_connected(True)
                backoff.connected(time.monotonic())
                if ever_subscribed:
                    self.reconnects += 1
                    log.info("redis subscription restored at %s", self._where)
                yield Gap("redis reconnect" if ever_subscribed else "subscribed")
                ever_subscribed = True
                warned = False
                while not self._closed:
                    # A bounded wait so a close() that raced with a reconnect still ends us;
                    # close() also disconnects the socket, which wakes this read at once.
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._probe_interval
                    )
                    if message is None or message["type"] != "message":
                        continue
                    raw = message["data"]
                    try:
                        update = decode_update(raw)
                    except ValueError as exc:
                        log.warning("ignoring a bad message on %s: %s", message["channel"], exc)
                        continue
                    yield Update(update, raw)
                return
            except (RedisError, *_UNREACHABLE) as exc:
                if self._closed:
                    return
                self._set_connected(False, exc)
                delay = backoff.next_delay(time.monotonic())
                # One warning per outage; the retries after it are debug noise.
                log.log(
                    logging.DEBUG if warned else logging.WARNING,
                    "redis subscription %s at %s (%s): retrying in %.1fs",
                    "lost" if ever_subscribed else "not possible",
                    self._where,
                    exc,
                    delay,
                )
                warned = True
                await self._pause(delay)
            finally:
                channels.pubsub = None
                self._pubsubs.discard(pubsub)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- demand --------------------------------------------------------------------

    async def want(self, pairs: Sequence[str], wall: float, *, wake: bool = False) -> None:
        """``ZADD GT`` each pair with ``wall`` (ms) into :func:`~pricectl.bus.keys.wanted`,
        and with ``wake`` a PUBLISH on the wake channel, in one round trip."""
        if not pairs:
            return
        score = int(wall * 1000)
        try:
            async with asyncio.timeout(self._client.op_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.wanted(self.prefix), dict.fromkeys(pairs, score), gt=True)
                    if wake:
                        pipe.publish(keys.wanted_channel(self.prefix), "\n".join(pairs))
                    await pipe.execute()
        except (RedisError, *_UNREACHABLE) as exc:
            if is_unreachable(exc):
                self._set_connected(False, exc)
            raise BusError(f"want failed: redis at {self._where} {describe(exc)}") from exc

    async def wanted(self, wall: float, idle_grace: float) -> dict[str, float]:
        """The wanted set newer than ``idle_grace`` (older entries are removed)."""
        key = keys.wanted(self.prefix)
        limit = int((wall - idle_grace) * 1000)
        try:
            async with asyncio.timeout(self._client.op_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zremrangebyscore(key, "-inf", limit)
                    pipe.zrange(key, 0, -1, withscores=True)
                    _, entries = await pipe.execute()
        except (RedisError, *_UNREACHABLE) as exc:
            if is_unreachable(exc):
                self._set_connected(False, exc)
            raise BusError(
                f"reading wanted pairs failed: redis at {self._where} {describe(exc)}"
            ) from exc
        return {str(pair): float(score) / 1000.0 for pair, score in entries}

    async def demand_wakeups(self) -> AsyncIterator[None]:
        """Yields on every wake-up message, and once after each (re)subscribe (one may
        have been missed while the connection was down); ends on :meth:`close`."""
        backoff = Backoff(self._reconnect)
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsubs.add(pubsub)
            try:
                await pubsub.subscribe(keys.wanted_channel(self.prefix))
                backoff.connected(time.monotonic())
                yield None
                while not self._closed:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._probe_interval
                    )
                    if message is not None and message["type"] == "message":
                        yield None
                return
            except (RedisError, *_UNREACHABLE) as exc:
                if self._closed:
                    return
                delay = backoff.next_delay(time.monotonic())
                log.debug("redis demand wake-ups lost (%s): retrying in %.1fs", exc, delay)
                await self._pause(delay)
            finally:
                self._pubsubs.discard(pubsub)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- internals -----------------------------------------------------------------

    @property
    def _where(self) -> str:
        return redact_url(self.url)

    def _channel(self, pair: str) -> str:
        channel = self._channels.get(pair)
        if channel is None:
            channel = self._channels[pair] = keys.channel(self.prefix, pair)
        return channel

    def _set_connected(self, up: bool, exc: BaseException | None = None) -> None:
        if up and not self.connected:
            log.info("redis connected at %s", self._where)
        elif not up and self.connected:
            log.warning(
                "redis at %s %s", self._where, describe(exc) if exc is not None else "unreachable"
            )
        self.connected = up

    async def _probe_loop(self) -> None:
        """PING (with the lease holder and the heartbeat read in the same round trip)
        every ``probe_interval``, so ``connected``, ``responsive`` and :meth:`leadership`
        are true to life even when the bus is idle. A PING unanswered for PING_LIMIT
        seconds makes the bus unresponsive (a frozen Redis)."""
        backoff = Backoff(self._reconnect)
        # Checks _closed as well as being cancelled, and never awaits in a way that could
        # swallow a cancel (see connect_redis).
        while not self._closed:
            started = time.monotonic()
            try:
                async with asyncio.timeout(PING_LIMIT):
                    holder, beat = await retry_once(self._probe_once)
            except (RedisError, *_UNREACHABLE) as exc:
                was_up = self.connected
                self.responsive = False
                self._set_connected(False, exc)
                delay = min(self._probe_interval, backoff.next_delay(time.monotonic()))
                if not was_up and backoff.attempt == 1:
                    log.warning(
                        "redis at %s %s: retrying in %.1fs", self._where, describe(exc), delay
                    )
                await self._pause(delay)
                continue
            now = time.monotonic()
            self.ping_latency = now - started
            if not self.responsive and self._ever_responsive:
                took = 1000 * (now - started)
                log.info("redis at %s answers again (PING %.0f ms)", self._where, took)
            self.responsive = self._ever_responsive = True
            self._set_connected(True)
            self._holder = holder
            if beat != self._beat:
                self._beat = beat
                if beat is not None:  # an expired key keeps the time of the last beat
                    self._beat_at = now
            self._leadership_known = True
            backoff.connected(now)
            await self._pause(max(0.0, self._probe_interval - (now - started)))

    async def _probe_once(self) -> tuple[str | None, str | None]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.ping()
            pipe.get(keys.leader(self.prefix))
            pipe.get(keys.heartbeat(self.prefix))
            _, holder, beat = await pipe.execute()
        return holder, beat

    async def _pause(self, seconds: float) -> None:
        """Sleep that :meth:`close` cuts short."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


class _Channels:
    """The channels of one subscription, changed at run time: SUBSCRIBE / UNSUBSCRIBE go
    out on the subscription's live connection, and a reconnect subscribes to them all."""

    def __init__(self, bus: RedisBus, names: Iterable[str]) -> None:
        self._bus = bus
        self.names: dict[str, None] = dict.fromkeys(names)
        #: The live pub/sub connection (None while reconnecting).
        self.pubsub: Any = None

    async def add(self, pairs: Sequence[str]) -> None:
        new = [self._bus._channel(p) for p in pairs]
        new = [c for c in new if c not in self.names]
        self.names.update(dict.fromkeys(new))
        if new and self.pubsub is not None:
            await self._send("subscribe", new)

    async def remove(self, pairs: Sequence[str]) -> None:
        gone = [c for c in (self._bus._channel(p) for p in pairs) if c in self.names]
        for c in gone:
            del self.names[c]
        if gone and self.pubsub is not None:
            await self._send("unsubscribe", gone)

    async def _send(self, command: str, channels: list[str]) -> None:
        # The command only writes; the subscription's own loop reads the replies.
        try:
            async with asyncio.timeout(self._bus._client.op_timeout):
                await getattr(self.pubsub, command)(*channels)
        except (RedisError, *_UNREACHABLE) as exc:
            raise BusError(
                f"{command} failed: redis at {self._bus._where} {describe(exc)}"
            ) from exc
