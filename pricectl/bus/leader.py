"""The ingest leader lease over Redis (DESIGN 3.4): acquire, renew, step down, release.

Every ``pricectl ingest`` runs :meth:`Leader.run`. One of them wins the lease and runs
``on_elected(fence)``; the others stay standbys and try again every ``retry`` seconds
(jittered), or at once when the leader announces a release. Timing decisions live in
:class:`pricectl.core.lease.LeaseClock`; this module only carries them out against
Redis with three Lua scripts, each atomic:

- acquire: ``SET leader <token> NX PX <ttl>`` and ``INCR epoch`` in one script. The new
  epoch is also raised to at least Redis's own clock in milliseconds, so a Redis restarted
  without persistence (counter back at 0) still hands out epochs above every earlier
  one: consumers drop updates whose epoch is lower than the highest they have seen.
- renew: compare-and-extend (``PEXPIRE`` only if the key still holds our token and the
  epoch counter is still ours).
- release: compare-and-delete, then ``PUBLISH`` on the lease channel so a standby
  takes over within a round trip instead of at its next poll.

A leader whose renewals have not succeeded for ``renew_deadline`` (monotonic clock)
steps down on its own: ``on_elected`` is cancelled. Because ``renew_deadline < ttl``,
that happens before Redis lets anyone else in; and even a leader frozen past its TTL
(SIGSTOP, a long GC pause) cannot publish afterwards, because the bus's fenced publish
checks token *and* epoch inside Redis and the relay then calls :meth:`Leader.lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pricectl.bus import keys
from pricectl.bus.base import Fence
from pricectl.bus.redis import connect_redis, is_unreachable
from pricectl.config import redact_url
from pricectl.core.lease import LeaseClock, LeasePolicy

__all__ = [
    "ACQUIRE_SCRIPT",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "Leader",
    "make_token",
    "read_leader",
]

log = logging.getLogger(__name__)

#: KEYS: leader, epoch. ARGV: token, ttl_ms. Returns the new epoch, or 0 if someone else
#: holds the lease. A key still holding our own token (we stepped down but it has not
#: expired) counts as free: we start a new term with a new epoch. The epoch is at least
#: the Redis server's clock in milliseconds, so it keeps growing across a Redis restart
#: that lost the counter (unless 1,000 terms a second were handed out before it).
ACQUIRE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local e = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if e < floor then
  e = floor
  redis.call('SET', KEYS[2], string.format('%.0f', floor))
end
return e
"""

#: KEYS: leader, epoch. ARGV: token, epoch, ttl_ms. 1 if extended, 0 if the lease is gone.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

#: KEYS: leader. ARGV: token, lease channel. 1 if we held it and deleted it, else 0.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""

OnElected = Callable[[Fence], Coroutine[Any, Any, None]]


def make_token() -> str:
    """``host-pid-random``: who holds the lease, readable in ``health``, unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class Leader:
    """One candidate for the ingest lease. Observable attributes are safe to read any time."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "",
        *,
        policy: LeasePolicy | None = None,
        token: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.url = redis_url
        self.prefix = prefix
        self.policy = policy if policy is not None else LeasePolicy()
        #: This process's token: ``host-pid-random``.
        self.identity = token if token is not None else make_token()
        #: Epoch of the current (or last) term; None before the first acquisition.
        self.epoch: int | None = None
        #: Wall-clock time (``time.time()``) the current term began; None as a standby.
        self.since: float | None = None
        self.is_leader = False
        #: Seconds the last successful renew took.
        self.last_renew_latency: float | None = None
        #: Renew attempts that failed (all terms).
        self.renew_failures = 0
        #: Times this process became leader.
        self.acquisitions = 0
        #: Successful renewals (all terms).
        self.renewals = 0
        #: Why the last term ended ("renew deadline", "lease taken", "fenced", ...).
        self.last_step_down: str | None = None
        self._clock = LeaseClock(self.policy)
        self._rand = rand
        self._redis = connect_redis(redis_url, timeout=max(0.5, self.policy.renew_deadline))
        self._acquire = self._redis.register_script(ACQUIRE_SCRIPT)
        self._renew = self._redis.register_script(RENEW_SCRIPT)
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        self._lease_keys = [keys.leader(prefix), keys.epoch(prefix)]
        self._lost: asyncio.Event | None = None
        self._lost_reason = "fenced"
        self._wake: asyncio.Event | None = None
        self._unreachable_since: float | None = None
        self._stopping = False
        self._last_warned = 0.0

    # --- public --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Leadership as a dict for health and metrics."""
        return {
            "identity": self.identity,
            "is_leader": self.is_leader,
            "epoch": self.epoch,
            "since": self.since,
            "last_renew_latency": self.last_renew_latency,
            "renew_failures": self.renew_failures,
            "acquisitions": self.acquisitions,
            "renewals": self.renewals,
            "last_step_down": self.last_step_down,
        }

    def lost(self, reason: str = "fenced") -> None:
        """Tell the loop the lease is gone (e.g. the bus raised FencedError): step down now."""
        self._lost_reason = reason
        if self._lost is not None:
            self._lost.set()

    async def run(self, on_elected: OnElected) -> None:
        """Compete for the lease forever; while leader, run ``on_elected(fence)`` as a task.

        The task is cancelled at step-down. If it returns or raises, the term ends and
        the lease is released. Redis being unreachable is logged and retried, never
        raised. Cancelling ``run`` cancels the task and releases the lease.
        """
        self._wake = asyncio.Event()
        self._stopping = False
        listener = asyncio.create_task(self._listen_releases(), name="lease-release-listener")
        try:
            while True:
                epoch = await self._try_acquire()
                if epoch is None:
                    await self._standby_wait()
                    continue
                await self._lead(epoch, on_elected)
        finally:
            # The flag as well as the cancel: redis-py can swallow a cancellation that
            # lands while a command is in flight, and the listener must still end.
            self._stopping = True
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self.policy.retry + 1.0):
                    await listener
            if self.is_leader or self.epoch is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())

    async def release(self) -> bool:
        """Compare-and-delete the lease if we hold it, announcing it to standbys.

        True if we held it. Never raises: on shutdown an unreachable Redis just means
        the lease expires after the TTL instead.
        """
        try:
            async with asyncio.timeout(self.policy.retry):
                held = await self._release(
                    keys=[keys.leader(self.prefix)],
                    args=[self.identity, keys.lease_channel(self.prefix)],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not release the lease at %s: %s", self._where, exc)
            return False
        if held:
            log.info("released the lease (epoch %s)", self.epoch)
        return bool(held)

    async def close(self) -> None:
        """Close the Redis connections (call after :meth:`run` has ended)."""
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # --- candidate -----------------------------------------------------------------

    async def _try_acquire(self) -> int | None:
        """One acquire attempt: the new epoch, or None (held by another, or Redis down)."""
        try:
            async with asyncio.timeout(self.policy.retry):
                epoch = await self._acquire(
                    keys=self._lease_keys,
                    args=[self.identity, self.policy.ttl_ms],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._note_unreachable(exc)
            return None
        self._note_reachable()
        return int(epoch) or None

    async def _standby_wait(self) -> None:
        """Sleep ``retry`` with jitter, or less if the leader announces a release."""
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._clock.standby_delay(self._rand)):
                await self._wake.wait()

    async def _listen_releases(self) -> None:
        """Wake the standby loop when a leader releases; best effort, reconnecting."""
        channel = keys.lease_channel(self.prefix)
        while not self._stopping:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while not self._stopping:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.policy.retry
                    )
                    if message is not None and message["type"] == "message":
                        assert self._wake is not None
                        self._wake.set()
            except (RedisError, OSError, TimeoutError):
                pass  # _try_acquire reports Redis being down; polling still works.
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if not self._stopping:
                await asyncio.sleep(self._clock.standby_delay(self._rand))

    # --- leader --------------------------------------------------------------------

    async def _lead(self, epoch: int, on_elected: OnElected) -> None:
        """One term: run ``on_elected`` and renew until the lease is lost or given up."""
        started = time.monotonic()
        self._clock.acquired(started)
        self.epoch = epoch
        self.since = time.time()
        self.is_leader = True
        self.acquisitions += 1
        self._lost = asyncio.Event()
        log.info("elected leader: %s epoch %d", self.identity, epoch)
        fence = Fence(token=self.identity, epoch=epoch)
        task = asyncio.create_task(on_elected(fence), name=f"leader-epoch-{epoch}")
        lost_wait = asyncio.create_task(self._lost.wait(), name="leader-lost-wait")
        reason = "cancelled"
        try:
            reason = await self._hold(epoch, task, lost_wait)
        finally:
            # The work stops first; only then do we say we are no longer leader.
            for t in (task, lost_wait):
                t.cancel()
            for t in (task, lost_wait):
                with contextlib.suppress(BaseException):
                    await t
            self.is_leader = False
            self._clock.released()
            self.since = None
            self.last_step_down = reason
            log.warning("stepped down (epoch %d): %s", epoch, reason)
            # The suppress above must not swallow a cancel of run() itself that
            # arrived while we waited for the term to stop: pass it on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError
        if reason in ("relay ended", "relay failed"):
            await self.release()

    async def _hold(
        self, epoch: int, task: asyncio.Task[None], lost_wait: asyncio.Task[bool]
    ) -> str:
        """Renew on the clock's schedule; return why the term ended."""
        clock = self._clock
        while True:
            now = time.monotonic()
            if clock.must_step_down(now):
                return "renew deadline passed"
            timeout = max(0.0, clock.next_wakeup(now) - now)
            done, _ = await asyncio.wait(
                {task, lost_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if lost_wait in done:
                return self._lost_reason
            if task in done:
                exc = task.exception()
                if exc is not None:
                    log.error("leader task failed: %r", exc)
                    return "relay failed"
                return "relay ended"
            now = time.monotonic()
            if clock.must_step_down(now):
                return "renew deadline passed"
            if not clock.should_renew(now):
                continue
            deadline = clock.step_down_at()
            assert deadline is not None
            try:
                async with asyncio.timeout(max(0.01, deadline - now)):
                    ok = await self._renew(
                        keys=self._lease_keys, args=[self.identity, epoch, self.policy.ttl_ms]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                clock.renew_failed(now)
                self.renew_failures += 1
                log.warning("lease renew failed (epoch %d): %s", epoch, exc or type(exc).__name__)
                continue
            if not ok:
                return "lease taken"
            clock.renewed(now)
            self.renewals += 1
            self.last_renew_latency = time.monotonic() - now

    # --- logging -------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return redact_url(self.url)

    def _note_unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        kind = "unreachable" if is_unreachable(exc) else "error"
        if self._unreachable_since is None or now - self._last_warned >= 30.0:
            log.warning(
                "redis %s at %s: retrying in %.1fs (%s)",
                kind,
                self._where,
                self.policy.retry,
                exc or type(exc).__name__,
            )
            self._last_warned = now
        if self._unreachable_since is None:
            self._unreachable_since = now

    def _note_reachable(self) -> None:
        if self._unreachable_since is not None:
            log.info("redis reachable again at %s", self._where)
            self._unreachable_since = None


async def read_leader(redis_url: str, prefix: str = "") -> dict[str, Any] | None:
    """Who holds the lease, for ``pricectl health --redis``: identity, epoch, ttl_ms.

    None when no one holds it. Raises ``BusError`` if Redis cannot be reached.
    """
    from pricectl.errors import BusError

    client: aioredis.Redis = connect_redis(redis_url, timeout=2.0)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(keys.leader(prefix))
            pipe.get(keys.epoch(prefix))
            pipe.pttl(keys.leader(prefix))
            token, epoch, ttl_ms = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        raise BusError(f"redis unreachable at {redact_url(redis_url)}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    if token is None:
        return None
    return {"identity": token, "epoch": int(epoch or 0), "ttl_ms": int(ttl_ms)}
