"""The Redis bus (``redis://``, ``rediss://``, ``unix://``): the bus over redis.asyncio
(docs/architecture.md, "The bus").

Layout (``<prefix>`` is ``bus.prefix``, see :mod:`pricectl.bus.keys`)::

    <prefix>prices:<PAIR>      channel, one update object per message
    <prefix>prices:latest      hash PAIR -> latest JSON (the snapshot)
    <prefix>pricectl:leader    the lease token (PX = ttl)         see pricectl.bus.leader
    <prefix>pricectl:epoch     the current leader's epoch
    <prefix>pricectl:wanted    sorted set PAIR -> ms last wanted (pairs on demand)
    <prefix>pricectl:wanted:wake  channel: a serve wants a pair the leader may not have

The same bus runs on a Sentinel service (``redis+sentinel://``: every connection asks
the sentinels for the master and follows ``+switch-master``, see
:meth:`BoundedRedis.follow_failovers`) and on a Redis Cluster (``redis+cluster://``:
the lease, epoch, heartbeat and snapshot keys carry a hash tag so they share a slot,
and the price channels use sharded pub/sub, see :class:`BoundedCluster`).

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
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from pricectl.bus import keys
from pricectl.bus.base import BusEvent, Fence, Gap, Leadership, Subscription, Update
from pricectl.bus.failures import Failure, classify, describe, retry_once
from pricectl.config import redact_url
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.health import PING_LIMIT
from pricectl.core.redis_url import RedisTarget, parse_redis_url
from pricectl.core.ticks import PriceUpdate, decode_update
from pricectl.errors import BusError, FencedError

__all__ = [
    "CLUSTER_PUBLISH_SCRIPT",
    "DEFAULT_RECONNECT",
    "HEARTBEAT_SCRIPT",
    "HEARTBEAT_TTL_MS",
    "MAX_BATCH",
    "PUBLISH_SCRIPT",
    "BoundedCluster",
    "BoundedRedis",
    "ChannelMoved",
    "RedisBus",
    "RedisClient",
    "SentinelsUnreachable",
    "connect_any",
    "connect_redis",
    "key_prefix",
]

log = logging.getLogger(__name__)

#: Reconnect delays to Redis. Redis is our own infrastructure, close by: a short cap
#: (5 s, not the exchange's 60 s) brings consumers back quickly after a broker restart.
DEFAULT_RECONNECT = BackoffPolicy(initial=0.5, max=5.0, multiplier=2.0, reset_after=10.0)

#: The same on a Redis Cluster: a failed primary is replaced within about
#: ``cluster-node-timeout`` plus a second, and nothing announces it (there is no
#: ``+switch-master``), so a subscription tries again often (each try re-reads the slot
#: map and subscribes: cheap).
CLUSTER_RECONNECT = BackoffPolicy(initial=0.2, max=1.0, multiplier=2.0, reset_after=10.0)

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

#: PUBLISH_SCRIPT for a Redis Cluster: the same fence and snapshot, no PUBLISH (the
#: price channels live on other shards; the bus SPUBLISHes each update after it).
CLUSTER_PUBLISH_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
local names, texts = ARGV[4], ARGV[5]
local np, tp, n = 1, 1, 0
while np <= #names do
  local ne = string.find(names, '\\n', np, true) or (#names + 1)
  local te = string.find(texts, '\\n', tp, true) or (#texts + 1)
  redis.call('HSET', KEYS[3], string.sub(names, np, ne - 1), string.sub(texts, tp, te - 1))
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
_UNREACHABLE = (OSError, asyncio.TimeoutError, RedisClusterException)

#: The sentinels' channel that announces a new master: ``<name> <old ip> <old port> <new
#: ip> <new port>`` (https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/).
SWITCH_MASTER = "+switch-master"

#: Seconds one sentinel may take to answer (each is asked in turn for the master).
SENTINEL_TIMEOUT = 1.0

#: Delays before watching the next sentinel for switches when one fails.
SWITCH_WATCH_RETRY = BackoffPolicy(initial=0.2, max=2.0, multiplier=2.0, reset_after=10.0)


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class SentinelsUnreachable(MasterNotFoundError):
    """No sentinel of the URL answered (as opposed to: they answered, naming no master)."""


class _Sentinels(Sentinel):
    """redis-py's Sentinel manager, asking each sentinel in turn as it does, but saying in
    one short sentence why no master was found: no sentinel answered (with the first
    sentinel's error), or they answered and named none. redis-py's own message lists
    every client's repr; and a sentinel that timed out (``asyncio.timeout`` of a bounded
    client) would have ended the search instead of moving on to the next one."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        failed: list[tuple[str, BaseException]] = []
        for i, node in enumerate(self.sentinels):
            try:
                masters: Any = await node.sentinel_masters()
            except (RedisError, OSError, TimeoutError) as exc:
                failed.append((_address(node), exc))
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[i] = node, self.sentinels[0]
                ip = self._force_master_ip if self._force_master_ip is not None else state["ip"]
                return ip, state["port"]
        where = ", ".join(_address(n) for n in self.sentinels)
        data = [a for a, e in failed if classify(e) is Failure.NOT_REDIS]
        if data:
            # Only a data node answers SENTINEL with "unknown command".
            raise SentinelsUnreachable(
                f"{', '.join(data)}: a Redis data node, not a sentinel: list the "
                "sentinels' ports (usually 26379) in the URL"
            )
        refused = [e for _, e in failed if classify(e) is Failure.AUTH]
        if refused:
            detail = str(refused[0]).strip() or type(refused[0]).__name__
            raise SentinelsUnreachable(
                f"authentication failed at the sentinels {where} ({detail}): set "
                "sentinel_password (and sentinel_username) in the URL's query, or, if "
                "that is a data node's port, list the sentinels' instead"
            )
        if len(failed) == len(self.sentinels):
            detail = str(failed[0][1]).strip() or type(failed[0][1]).__name__
            raise SentinelsUnreachable(f"no sentinel reachable at {where} ({detail})")
        raise MasterNotFoundError(f"the sentinels at {where} name no master for {service_name!r}")


class BoundedRedis(aioredis.Redis):
    """A redis.asyncio client whose every command is bounded by ``asyncio.timeout``.

    Replaces redis-py's ``socket_timeout`` (see the module docstring for why). A command
    that times out raises ``TimeoutError`` and its connection is dropped by redis-py, so
    no late reply is ever read as the answer to the next command.

    Made by :func:`connect_redis`, which sets :attr:`target` (what the URL names) and, for a
    Sentinel URL, :attr:`sentinel_manager` (the sentinels this client asks where the master is).
    """

    #: Seconds one command may take, connect included.
    op_timeout: float = 5.0
    target: RedisTarget = RedisTarget("standalone", "")
    sentinel_manager: Sentinel | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with asyncio.timeout(self.op_timeout):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the connections, and the sentinels' too."""
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            with contextlib.suppress(Exception):
                await self.sentinel_manager.aclose()

    def master_address(self) -> str | None:
        """``host:port`` of the master this client writes to, as last learnt (Sentinel: from
        the sentinels; otherwise the URL's). None before a Sentinel client first connected."""
        if self.sentinel_manager is not None:
            address = getattr(self.connection_pool, "master_address", None)
            return None if address is None else f"{address[0]}:{address[1]}"
        kwargs = self.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    async def follow_failovers(self, on_switch: Callable[[str], None] | None = None) -> None:
        """For a Sentinel URL, run until cancelled: subscribed to ``+switch-master`` on one
        sentinel at a time (the next one if it fails), and on a switch of our service drop
        every connection, the ones in use (pub/sub) included, so each reconnects to the
        new master at once, then call ``on_switch("host:port")``. Returns at once for
        other URLs.

        READONLY replies and closed connections send a connection back to the sentinels
        too (redis-py's Sentinel pool does that), but a demoted master that stays up keeps
        accepting writes until Sentinel reconfigures it (seconds later), and a master cut
        off from the sentinels never says anything: the switch message is the first
        word of a failover, so it is the one to act on.
        """
        sentinel, service = self.sentinel_manager, self.target.service
        if sentinel is None or service is None:
            return
        backoff = Backoff(SWITCH_WATCH_RETRY)
        turn = 0
        warned = False
        while True:
            node = sentinel.sentinels[turn % len(sentinel.sentinels)]
            pubsub = node.pubsub()
            try:
                await pubsub.subscribe(SWITCH_MASTER)
                # Watching only once the sentinel confirmed the subscription.
                confirmed = await pubsub.get_message(timeout=SENTINEL_TIMEOUT)
                if confirmed is None or confirmed["type"] != "subscribe":
                    raise TimeoutError("the sentinel did not confirm the subscription")
                backoff.connected(time.monotonic())
                if warned:
                    log.info(
                        "sentinel: watching for failovers of %r again, at %s",
                        service,
                        _address(node),
                    )
                warned = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message["type"] != "message":
                        continue
                    # "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    fields = str(message["data"]).split()
                    if len(fields) != 5 or fields[0] != service:
                        continue
                    new = f"{fields[3]}:{fields[4]}"
                    log.warning(
                        "sentinel: the master of %r moved from %s:%s to %s (failover): "
                        "reconnecting every connection to it",
                        service,
                        fields[1],
                        fields[2],
                        new,
                    )
                    await self.connection_pool.disconnect(inuse_connections=True)
                    if on_switch is not None:
                        on_switch(new)
            except (RedisError, *_UNREACHABLE) as exc:
                turn += 1
                delay = backoff.next_delay(time.monotonic())
                if not warned:
                    log.warning(
                        "sentinel: cannot watch for failovers of %r at %s (%s): trying the "
                        "next sentinel in %.1fs",
                        service,
                        _address(node),
                        describe(exc),
                        delay,
                    )
                    warned = True
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


class BoundedCluster(RedisCluster):
    """A redis.asyncio cluster client bounded like :class:`BoundedRedis`, with the same
    extras (:attr:`target`, :meth:`master_address`, :meth:`follow_failovers`), so the bus
    and the lease use either alike. redis-py follows ``MOVED``/``ASK`` and refreshes its
    slot map on a failed node by itself."""

    op_timeout: float = 5.0
    target: RedisTarget = RedisTarget("cluster", "")
    sentinel_manager: Sentinel | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with asyncio.timeout(self.op_timeout):
            return await super().execute_command(*args, **options)

    def master_address(self, key: str | None = None) -> str | None:
        """``host:port`` of the primary that owns ``key``'s slot (None if not known)."""
        if key is None:
            return None
        try:
            node = self.get_node_from_key(key)
        except (RedisClusterException, RedisError, IndexError, KeyError):
            return None
        return None if node is None else f"{node.host}:{node.port}"

    async def follow_failovers(self, on_switch: Callable[[str], None] | None = None) -> None:
        """Nothing to watch: the cluster's own redirects and slot map do it."""

    async def refresh(self) -> None:
        """Re-read the slot map (after a node failed, before subscribing again)."""
        await self.nodes_manager.initialize()

    async def cluster_state(self) -> str | None:
        """``cluster_state`` (``ok``, ``fail``) as the first node that answers says it,
        within one second; None if none does."""
        try:
            async with asyncio.timeout(1.0):
                for node in list(self.get_nodes()):
                    try:
                        info = await self.cluster_info(target_nodes=node)
                    except (RedisError, RedisClusterException, OSError):
                        continue
                    return str(info.get("cluster_state")) if info else None
        except TimeoutError:
            return None
        return None


#: A client of any URL form (:func:`connect_any`).
RedisClient = BoundedRedis | BoundedCluster


def key_prefix(client: RedisClient, prefix: str) -> str:
    """The prefix of the lease, heartbeat and snapshot keys for ``client``: on a cluster,
    with a hash tag (:func:`pricectl.bus.keys.slot_prefix`)."""
    return keys.slot_prefix(prefix) if client.target.kind == "cluster" else prefix


def connect_redis(url: str, *, timeout: float = 5.0) -> BoundedRedis:
    """:func:`connect_any` for a URL that is not a Redis Cluster's (BusError if it is)."""
    client = connect_any(url, timeout=timeout)
    if not isinstance(client, BoundedRedis):
        raise BusError(f"{redact_url(url)}: expected one Redis or a Sentinel service here")
    return client


def connect_any(url: str, *, timeout: float = 5.0) -> RedisClient:
    """A redis.asyncio client for ``url`` with redis-py's retries off (we retry ourselves).

    ``redis://``, ``rediss://`` and ``unix://`` name one server. ``redis+sentinel://``
    (``rediss+sentinel://``) names a Sentinel service: the client asks the sentinels for
    the master before each new connection and after a READONLY reply (redis-py's
    ``SentinelConnectionPool``), and :meth:`BoundedRedis.follow_failovers` moves it on a
    ``+switch-master``. ``redis+cluster://`` names a Redis Cluster (:class:`BoundedCluster`,
    seeded with the listed nodes). Does not connect: the first command does. ``timeout`` bounds
    connects and each command, so a paused Redis turns into an error instead of a hang
    (each sentinel gets at most 1 s of it, so one frozen sentinel does not eat it all).
    Pipelines are not bounded by it: wrap ``execute()`` in ``asyncio.timeout`` yourself.
    """
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": None,
    }
    if target.kind == "cluster":
        cluster = BoundedCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=None,
            username=target.username,
            password=target.password,
            ssl=target.tls,
        )
        cluster.target = target
        cluster.op_timeout = timeout
        return cluster
    if target.kind == "sentinel":
        assert target.service is not None
        sentinel_timeout = min(timeout, SENTINEL_TIMEOUT)
        sentinel_kwargs: dict[str, Any] = {
            **common,
            "socket_connect_timeout": sentinel_timeout,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        }
        tls: dict[str, Any] = {"ssl": True, **dict(target.tls_options)} if target.tls else {}
        sentinel_kwargs.update(tls)
        sentinel = _Sentinels(target.hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        # Sentinel makes plain clients for the sentinels; bounded ones instead.
        nodes: list[aioredis.Redis] = []
        for host, port in target.hosts:
            node = BoundedRedis(host=host, port=port, **sentinel_kwargs)
            node.op_timeout = sentinel_timeout
            nodes.append(node)
        sentinel.sentinels = nodes
        client = sentinel.master_for(
            target.service,
            redis_class=BoundedRedis,
            socket_connect_timeout=timeout,
            username=target.username,
            password=target.password,
            db=target.db,
            **tls,
            **common,
        )
        assert isinstance(client, BoundedRedis)
        client.sentinel_manager = sentinel
    else:
        client = BoundedRedis.from_url(url, socket_connect_timeout=timeout, **common)
        assert isinstance(client, BoundedRedis)
    client.target = target
    client.op_timeout = timeout
    return client


class ChannelMoved(RedisError):
    """A shard dropped a sharded subscription we still want: its slot moved to another
    primary (a resharding), and Redis 7 tells the subscribers of a moved slot with a
    ``sunsubscribe`` (https://redis.io/docs/latest/commands/ssubscribe/)."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"the slot of {channel} moved to another shard (resharding)")
        self.channel = channel


class _ShardReader:
    """Every shard's messages of one cluster subscription, as they come.

    redis-py's ``ClusterPubSub.get_sharded_message(timeout=t)`` asks the shards' pubsubs
    in turn and waits up to ``t`` on each: a quiet shard delays every busy one by ``t``
    per message, and a busy one falls behind for good. One reader task per shard instead,
    all feeding one queue; a reader's error (its node died) is raised by :meth:`get`, so
    the subscription reconnects as it does for one Redis.

    A ``sunsubscribe`` for a channel still in ``wanted`` is a slot moved away by a
    resharding (ours, from :meth:`_Channels.remove`, come after the channel left
    ``wanted``): it is raised as :class:`ChannelMoved`, so the subscription subscribes
    again where the slot map now says, after a Gap. redis-py would swallow it and the
    channel would go silent for good.
    """

    def __init__(self, pubsub: Any, poll: float, wanted: dict[str, None]) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._poll = poll
        self._wanted = wanted
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.sync(pubsub)

    def sync(self, pubsub: Any) -> None:
        """Start a reader for each shard connection that has none yet."""
        for name, node in list(pubsub.node_pubsub_mapping.items()):
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(
                    self._read(node, self._poll), name=f"redis-shard-{name}"
                )

    async def _read(self, node: Any, poll: float) -> None:
        try:
            while True:
                message = await node.get_message(timeout=poll)
                if message is None:
                    continue
                if message["type"] == "sunsubscribe":
                    if message["channel"] in self._wanted:
                        raise ChannelMoved(str(message["channel"]))
                    continue
                if message["type"] == "smessage":
                    self._queue.put_nowait(message)
        except (RedisError, *_UNREACHABLE) as exc:
            self._queue.put_nowait(exc)

    async def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message of any shard, or None after ``timeout`` seconds of none."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


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
        #: What the node we talk to says it is (``master``, ``replica``), from the probe's
        #: ROLE; None until known. Only a master takes the lease and publishes.
        self.role: str | None = None
        #: Why the last contact failed (:func:`describe`'s words), None while it works.
        self.problem: str | None = None
        #: Failovers followed (Sentinel ``+switch-master`` messages acted on).
        self.failovers = 0
        #: A cluster's ``cluster_state`` (``ok``, ``fail``) as the probe last read it.
        self.cluster_state: str | None = None
        self._state: str | None = None
        self._replica_of: str | None = None
        self._reconnect = reconnect
        self._probe_interval = probe_interval
        self._client: Any = connect_any(url, timeout=timeout)
        self._cluster = self._client.target.kind == "cluster"
        if self._cluster and reconnect is DEFAULT_RECONNECT:
            self._reconnect = CLUSTER_RECONNECT
        #: The prefix of the keys that share a slot on a cluster (the plain one otherwise).
        self.key_prefix = kp = key_prefix(self._client, prefix)
        self._script = self._client.register_script(
            CLUSTER_PUBLISH_SCRIPT if self._cluster else PUBLISH_SCRIPT
        )
        self._heartbeat = self._client.register_script(HEARTBEAT_SCRIPT)
        self._fence_keys = [keys.leader(kp), keys.epoch(kp), keys.latest(kp)]
        self._heartbeat_keys = [keys.leader(kp), keys.epoch(kp), keys.heartbeat(kp)]
        self._leadership_known = False
        self._ever_responsive = False
        self._holder: str | None = None
        self._beat: str | None = None
        self._beat_at: float | None = None
        self._channels: dict[str, str] = {}
        self._channel_prefix = keys.channel(prefix, "")
        self._pubsubs: set[Any] = set()
        self._probe: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._closed = False
        # Set (and replaced) to cut every pause short: on close and on a failover.
        self._wake = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Begin probing Redis in the background; never raises if Redis is down."""
        if self._probe is None:
            self._probe = asyncio.create_task(self._probe_loop(), name="redis-bus-probe")
        if self._follow is None and self._client.sentinel_manager is not None:
            self._follow = asyncio.create_task(
                self._client.follow_failovers(self._switched), name="redis-bus-failovers"
            )

    def topology(self) -> dict[str, Any]:
        """What the bus is connected to, for health: ``mode`` (``standalone``,
        ``sentinel``), ``role``, ``master`` (``host:port``), and for Sentinel the
        ``service`` name, the ``sentinels`` and the ``failovers`` followed."""
        target = self._client.target
        master = (
            self._client.master_address(keys.leader(self.key_prefix))
            if self._cluster
            else self._client.master_address()
        )
        if self.role == "replica" and self._replica_of is not None and not self._cluster:
            # A plain URL to a replica: name the master it follows, and the node itself.
            out: dict[str, Any] = {
                "mode": target.kind,
                "role": self.role,
                "master": self._replica_of,
                "node": master,
            }
        else:
            out = {"mode": target.kind, "role": self.role, "master": master}
        if self._cluster:
            out["cluster_state"] = self.cluster_state
        if target.kind == "sentinel":
            out["service"] = target.service
            out["sentinels"] = [f"{h}:{p}" for h, p in target.hosts]
            out["failovers"] = self.failovers
        return out

    def _switched(self, address: str) -> None:
        self.failovers += 1
        self._kick()

    def _kick(self) -> None:
        """Wake every pause now (a failover: retry at once, not after the backoff)."""
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def close(self) -> None:
        """Stop probing, end every subscription, close the connections."""
        self._closed = True
        self._kick()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._follow
            self._follow = None
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._probe_interval + 1.0):
                    await self._probe
            self._probe = None
        for pubsub in list(self._pubsubs):
            # Breaks the blocked read; the subscription sees _closed and ends.
            with contextlib.suppress(Exception):
                if self._cluster:
                    await pubsub.aclose()
                else:
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
                self._failed(exc)
                raise BusError(f"publish failed: redis at {self._where} {describe(exc)}") from exc
            self._set_connected(True)
            if result == -1:
                raise FencedError(f"publish refused by redis: {fence.token} is not the leader")
            if result == -2:
                raise FencedError(f"publish refused by redis: epoch {fence.epoch} is not current")
            if self._cluster:
                await self._spublish(chunk)

    async def _spublish(self, chunk: Sequence[PriceUpdate]) -> None:
        """Cluster: SPUBLISH each update of a batch the fenced script accepted, to the shard
        that owns its pair's channel. Not atomic with the fence check: a deposed leader's
        last batch can still reach consumers, who drop it by epoch once they have seen
        the new one (:class:`~pricectl.bus.base.EpochFilter`); a lost SPUBLISH shows as a
        hole in the pair's seqs, which consumers resync on."""
        try:
            async with asyncio.timeout(self._client.op_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for u in chunk:
                        pipe.spublish(self._channel(u.pair), u.to_json())
                    await pipe.execute()
        except (RedisError, *_UNREACHABLE) as exc:
            self._failed(exc)
            raise BusError(f"publish failed: redis at {self._where} {describe(exc)}") from exc

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
            values = await retry_once(
                lambda: self._client.hmget(keys.latest(self.key_prefix), wanted)
            )
        except (RedisError, *_UNREACHABLE) as exc:
            self._failed(exc)
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
            shards: _ShardReader | None = None
            try:
                if self._cluster:
                    # Sharded pub/sub: each channel on the shard that owns it, with a
                    # fresh slot map after a failure (redis-py does not refresh a map
                    # that only a subscription uses).
                    if ever_subscribed:
                        await self._client.refresh()
                    else:
                        await self._client.initialize()
                    if channels.names:
                        await pubsub.ssubscribe(*channels.names)
                    shards = _ShardReader(pubsub, self._probe_interval, channels.names)
                    channels.shards = shards
                else:
                    # A placeholder keeps a subscription with no pairs (yet) a subscribed
                    # connection, so get_message has something to read from.
                    await pubsub.subscribe(
                        keys.wanted_channel(self.prefix) + ":idle", *channels.names
                    )
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
                    if shards is not None:
                        message = await shards.get(self._probe_interval)
                    else:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._probe_interval
                        )
                    if message is None or message["type"] not in ("message", "smessage"):
                        continue
                    raw = message["data"]
                    try:
                        update = decode_update(raw)
                    except ValueError as exc:
                        log.warning("ignoring a bad message on %s: %s", message["channel"], exc)
                        continue
                    yield Update(update, raw)
                return
            except ChannelMoved as exc:
                # Not a failure of the bus: subscribe again at once, on a fresh slot map.
                log.info("redis subscription at %s: %s: subscribing again", self._where, exc)
            except (RedisError, *_UNREACHABLE) as exc:
                if self._closed:
                    return
                self._failed(exc)
                delay = backoff.next_delay(time.monotonic())
                # One warning per outage; the retries after it are debug noise.
                log.log(
                    logging.DEBUG if warned else logging.WARNING,
                    "redis subscription %s at %s (%s): retrying in %.1fs",
                    "lost" if ever_subscribed else "not possible",
                    self._where,
                    describe(exc),
                    delay,
                )
                warned = True
                await self._pause(delay)
            finally:
                channels.pubsub = None
                channels.shards = None
                self._pubsubs.discard(pubsub)
                if shards is not None:
                    await shards.close()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- demand --------------------------------------------------------------------

    async def want(self, pairs: Sequence[str], wall: float, *, wake: bool = False) -> None:
        """``ZADD GT`` each pair with ``wall`` (ms) into :func:`~pricectl.bus.keys.wanted`,
        and with ``wake`` a PUBLISH on the wake channel, in one round trip (two on a
        cluster, whose pipelines refuse PUBLISH: it goes to every node anyway)."""
        if not pairs:
            return
        score = int(wall * 1000)
        try:
            async with asyncio.timeout(self._client.op_timeout):
                if self._cluster:
                    await self._client.zadd(
                        keys.wanted(self.prefix), dict.fromkeys(pairs, score), gt=True
                    )
                    if wake:
                        await self._client.publish(
                            keys.wanted_channel(self.prefix), "\n".join(pairs)
                        )
                    return
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.wanted(self.prefix), dict.fromkeys(pairs, score), gt=True)
                    if wake:
                        pipe.publish(keys.wanted_channel(self.prefix), "\n".join(pairs))
                    await pipe.execute()
        except (RedisError, *_UNREACHABLE) as exc:
            self._failed(exc)
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
            self._failed(exc)
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
                if self._cluster:
                    # The slot map first (fresh after a failure): a cluster's pubsub
                    # picks its node from it, and classic pub/sub reaches every node.
                    if backoff.attempt:
                        await self._client.refresh()
                    else:
                        await self._client.initialize()
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
                    await pubsub.aclose()

    # --- internals -----------------------------------------------------------------

    @property
    def _where(self) -> str:
        return redact_url(self.url)

    def _channel(self, pair: str) -> str:
        channel = self._channels.get(pair)
        if channel is None:
            channel = self._channels[pair] = keys.channel(self.prefix, pair)
        return channel

    def _failed(self, exc: BaseException) -> None:
        """A command failed: the bus is down for every kind but a plain error (a refused
        command says nothing about the connection)."""
        if classify(exc) is not Failure.ERROR:
            self._set_connected(False, exc)

    def _set_connected(
        self, up: bool, exc: BaseException | None = None, *, first: bool = False
    ) -> None:
        """Note the bus's state; log once per change of state, a change of failure kind
        included (unreachable, then authentication failed, is two lines). A failure before
        any contact is logged only with ``first`` (the probe's): a one-shot command
        raises it with its own explanation instead."""
        state = "up" if up else (classify(exc).value if exc is not None else "unreachable")
        if state != self._state:
            if up:
                master = self._client.master_address()
                if self._client.sentinel_manager is not None:
                    log.info(
                        "redis connected at %s (master of %r at %s)",
                        self._where,
                        self._client.target.service,
                        master,
                    )
                else:
                    log.info("redis connected at %s", self._where)
            elif self._state is not None or first:
                log.warning(
                    "redis at %s %s",
                    self._where,
                    describe(exc) if exc is not None else "unreachable",
                )
            self._state = state
        self.connected = up
        self.problem = None if up else (describe(exc) if exc is not None else "unreachable")

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
                    holder, beat, role = await retry_once(self._probe_once)
            except (RedisError, *_UNREACHABLE) as exc:
                self.responsive = False
                if self._cluster:
                    # The lease's shard did not answer: what does the rest say?
                    self.cluster_state = await self._client.cluster_state()
                self._set_connected(False, exc, first=True)
                delay = min(self._probe_interval, backoff.next_delay(time.monotonic()))
                await self._pause(delay)
                continue
            now = time.monotonic()
            self.ping_latency = now - started
            if not self.responsive and self._ever_responsive:
                took = 1000 * (now - started)
                log.info("redis at %s answers again (PING %.0f ms)", self._where, took)
            self.responsive = self._ever_responsive = True
            self._set_connected(True)
            self._note_role(role)
            self._holder = holder
            if beat != self._beat:
                self._beat = beat
                if beat is not None:  # an expired key keeps the time of the last beat
                    self._beat_at = now
            self._leadership_known = True
            backoff.connected(now)
            await self._pause(max(0.0, self._probe_interval - (now - started)))

    async def _probe_once(self) -> tuple[str | None, str | None, str]:
        if self._cluster:
            # Both keys live on the lease's shard; a primary answers for them.
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(keys.leader(self.key_prefix))
                pipe.get(keys.heartbeat(self.key_prefix))
                holder, beat = await pipe.execute()
            info = await self._client.cluster_info()
            self.cluster_state = str(info.get("cluster_state")) if info else None
            return holder, beat, "master"
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.ping()
            pipe.get(keys.leader(self.key_prefix))
            pipe.get(keys.heartbeat(self.key_prefix))
            pipe.execute_command("ROLE")
            _, holder, beat, role = await pipe.execute()
        if role and role[0] == "slave" and len(role) > 2:
            # ROLE of a replica: ["slave", master host, master port, state, offset].
            self._replica_of = f"{role[1]}:{role[2]}"
        return holder, beat, str(role[0]) if role else "unknown"

    def _note_role(self, role: str) -> None:
        """``master`` or ``replica`` (Redis says ``slave``); logged on each change. A
        Sentinel client that finds a replica where the sentinels said the master was
        (mid-failover) drops its connections so the next ones ask again."""
        role = "replica" if role == "slave" else role
        if role != self.role:
            if role != "master":
                log.warning(
                    "redis at %s is a %s, not the master: nothing can be published through it",
                    self._where,
                    role,
                )
            elif self.role is not None:
                log.info("redis at %s is the master again", self._where)
            self.role = role
        if role != "master" and self._client.sentinel_manager is not None:
            self._spawn_disconnect()

    def _spawn_disconnect(self) -> None:
        task = asyncio.ensure_future(self._client.connection_pool.disconnect())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _pause(self, seconds: float) -> None:
        """Sleep that :meth:`close` and a followed failover cut short."""
        wake = self._wake
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()


class _Channels:
    """The channels of one subscription, changed at run time: SUBSCRIBE / UNSUBSCRIBE go
    out on the subscription's live connection, and a reconnect subscribes to them all."""

    def __init__(self, bus: RedisBus, names: Iterable[str]) -> None:
        self._bus = bus
        self.names: dict[str, None] = dict.fromkeys(names)
        #: The live pub/sub connection (None while reconnecting).
        self.pubsub: Any = None
        #: On a cluster, the readers of each shard's connection (new shards join it).
        self.shards: _ShardReader | None = None

    async def add(self, pairs: Sequence[str]) -> None:
        new = [self._bus._channel(p) for p in pairs]
        new = [c for c in new if c not in self.names]
        self.names.update(dict.fromkeys(new))
        if new and self.pubsub is not None:
            await self._send("ssubscribe" if self._bus._cluster else "subscribe", new)

    async def remove(self, pairs: Sequence[str]) -> None:
        gone = [c for c in (self._bus._channel(p) for p in pairs) if c in self.names]
        for c in gone:
            del self.names[c]
        if gone and self.pubsub is not None:
            await self._send("sunsubscribe" if self._bus._cluster else "unsubscribe", gone)

    async def _send(self, command: str, channels: list[str]) -> None:
        # The command only writes; the subscription's own loop reads the replies.
        try:
            async with asyncio.timeout(self._bus._client.op_timeout):
                await getattr(self.pubsub, command)(*channels)
            if self.shards is not None:
                # A channel on a shard this subscription had no connection to yet.
                self.shards.sync(self.pubsub)
        except (RedisError, *_UNREACHABLE) as exc:
            raise BusError(
                f"{command} failed: redis at {self._bus._where} {describe(exc)}"
            ) from exc
