"""The ingest leader lease over Redis (docs/architecture.md, "The lease"): acquire, renew,
step down, release.

Every ``pricectl ingest`` runs :meth:`Leader.run`. One of them wins the lease and runs
``on_elected(fence)``; the others stay standbys. Timing decisions live in
:class:`pricectl.core.lease.LeaseClock`; this module only carries them out against Redis
with three Lua scripts, each atomic:

- acquire: ``SET leader <token> PX <ttl>`` and ``INCR epoch`` in one script, when the
  key is free *or its holder is gone*: every candidate stays subscribed, for its whole
  life, to a presence channel named after its token (:func:`keys.presence_channel`), and
  the script asks ``PUBSUB NUMSUB`` of the holder's channel. A crashed process's
  connections close at once, so a standby (trying every ``watch`` seconds, 0.3 s by
  default) takes over within about that, not after the TTL. A false alarm (the holder's
  subscription dropped but the process lives) is safe: its next publish or renew is
  refused by Redis and it steps down. The TTL stays the bound for a leader that is
  frozen but still connected. The new epoch is also raised to at least Redis's own clock
  in milliseconds, so a Redis restarted without persistence (counter back at 0) still
  hands out epochs above every earlier one.
- renew: compare-and-extend (``PEXPIRE`` only if the key still holds our token and the
  epoch counter is still ours).
- release: compare-and-delete, then ``PUBLISH`` on the lease channel so a standby takes
  over within a round trip.

A term ends for many reasons: released, renew deadline passed, lease taken, fenced by
Redis, Redis gone, relay failed or ended. Every one of them returns the process to
candidacy (after a short backoff when terms keep failing); only cancelling
:meth:`Leader.run` (SIGTERM/SIGINT) ends the loop. A term's work is stopped within
:data:`TERM_STOP` seconds of the decision: cancelled, and if it has not finished after
:data:`TERM_STOP_GRACE`, its exchange connection is cut (``on_stuck``) and the stuck task
is logged with its await chain.
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
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from pricectl.bus import keys
from pricectl.bus.base import Fence
from pricectl.bus.failures import classify, describe, retry_once
from pricectl.bus.redis import connect_any, key_prefix
from pricectl.config import redact_url
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.lease import LeaseClock, LeasePolicy
from pricectl.errors import FencedError, LeaseLost

__all__ = [
    "ACQUIRE_SCRIPT",
    "PRESENCE_GRACE",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "TERM_BACKOFF",
    "TERM_STOP",
    "TERM_STOP_GRACE",
    "Leader",
    "LeaderStatus",
    "LeaseHolder",
    "make_token",
    "read_leader",
]

log = logging.getLogger(__name__)

#: KEYS: leader, epoch. ARGV: token, ttl_ms, and optionally the presence channel prefix
#: and how to count its subscribers (``NUMSUB``; ``SHARDNUMSUB`` on a cluster, where the
#: presence channel is a shard channel in the lease's slot).
#: Returns the new epoch, or the holder's token if a live process holds the lease (0 when
#: it is held and no presence prefix was given). A key still holding our own token (we
#: stepped down but it has not expired) counts as free: we start a new term with a new
#: epoch. A holder with no subscriber on its presence channel is dead: the lease is taken
#: over at once. The epoch is at least the Redis server's clock in milliseconds, so it
#: keeps growing across a Redis restart that lost the counter (unless 1,000 terms a
#: second were handed out before it).
ACQUIRE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  if not ARGV[3] then return 0 end
  local alive = redis.call('PUBSUB', ARGV[4] or 'NUMSUB', ARGV[3] .. holder)
  if tonumber(alive[2]) > 0 then return holder end
end
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

#: KEYS: leader. ARGV: token, lease channel, and optionally how to publish (``PUBLISH``;
#: ``SPUBLISH`` on a cluster). 1 if we held it and deleted it, else 0.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call(ARGV[3] or 'PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""

#: Seconds after a Sentinel failover during which a standby takes only a free lease, not
#: one whose holder's presence is missing: the holder needs that long to subscribe to
#: its presence channel again on the new master.
PRESENCE_GRACE = 1.0

#: Seconds a term's work gets to stop after it is cancelled before its exchange
#: connection is cut from outside; and the bound on the whole stop.
TERM_STOP_GRACE = 1.5
TERM_STOP = 2.0

#: Pause (on top of ``retry``) before competing again after a term that failed (the relay
#: crashed, renewals failed, Redis went away): doubling while terms keep failing, reset
#: by a term that lasted.
TERM_BACKOFF = BackoffPolicy(initial=0.25, max=10.0, multiplier=2.0, reset_after=60.0)

#: How a term ended when the loop itself was cancelled (SIGTERM).
_STOPPING = "stopping"

OnElected = Callable[[Fence], Coroutine[Any, Any, None]]


def make_token() -> str:
    """``host-pid-random``: who holds the lease, readable in ``health``, unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaderStatus:
    """One candidate's leadership at one moment (:meth:`Leader.status`)."""

    identity: str
    is_leader: bool
    #: Epoch of the current (or last) term; None before the first acquisition.
    epoch: int | None
    #: Wall-clock time the current term began; None as a standby.
    since: float | None
    #: Seconds the last successful renew took.
    last_renew_latency: float | None
    renew_failures: int
    acquisitions: int
    takeovers: int
    renewals: int
    #: Why the last term ended.
    last_step_down: str | None
    #: The lease holder as a standby last saw it (None: free, or not known).
    holder: str | None
    #: True while the presence subscription is live.
    present: bool
    #: Sentinel failovers followed (``+switch-master`` messages acted on).
    failovers: int = 0


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease, as Redis says (:func:`read_leader`)."""

    identity: str
    epoch: int
    #: What is left of the lease's ttl, in milliseconds.
    ttl_ms: int


class Leader:
    """One candidate for the ingest lease. Observable attributes are safe to read any time.

    ``on_stuck`` is called (synchronously) when a term's work has not stopped
    :data:`TERM_STOP_GRACE` seconds after it was cancelled: it should cut the exchange
    connection from outside (abort the transport).
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str = "",
        *,
        policy: LeasePolicy | None = None,
        token: str | None = None,
        rand: Callable[[], float] = random.random,
        on_stuck: Callable[[], None] | None = None,
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
        #: Times this process became leader, and of those, takeovers from a dead holder.
        self.acquisitions = 0
        self.takeovers = 0
        #: Successful renewals (all terms).
        self.renewals = 0
        #: Why the last term ended ("renew deadline passed", "lease taken", "fenced", ...).
        self.last_step_down: str | None = None
        #: The lease holder as a standby last saw it (None: free, or not known).
        self.holder: str | None = None
        #: True while the presence subscription is live (we compete only then).
        self.present = False
        #: Sentinel failovers followed (``+switch-master`` messages acted on).
        self.failovers = 0
        # Until then (monotonic), a held lease is not taken over (see _switched).
        self._presence_grace_until = 0.0
        self._clock = LeaseClock(self.policy)
        self._rand = rand
        self._on_stuck = on_stuck
        self._redis: Any = connect_any(redis_url, timeout=max(0.5, self.policy.renew_deadline))
        self._cluster = self._redis.target.kind == "cluster"
        # On a cluster the lease keys and both channels share one slot (keys.slot_prefix).
        self._kp = kp = key_prefix(self._redis, prefix)
        self._acquire = self._redis.register_script(ACQUIRE_SCRIPT)
        self._renew = self._redis.register_script(RENEW_SCRIPT)
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        self._lease_keys = [keys.leader(kp), keys.epoch(kp)]
        self._lost: asyncio.Event | None = None
        self._lost_reason = "fenced"
        self._wake: asyncio.Event | None = None
        self._present_event: asyncio.Event | None = None
        self._standby_state: str | None = None
        self._term_backoff = Backoff(TERM_BACKOFF, rand=rand)
        self._stragglers: set[asyncio.Task[None]] = set()

    # --- public --------------------------------------------------------------------

    def status(self) -> LeaderStatus:
        """Leadership for health and metrics."""
        return LeaderStatus(
            identity=self.identity,
            is_leader=self.is_leader,
            epoch=self.epoch,
            since=self.since,
            last_renew_latency=self.last_renew_latency,
            renew_failures=self.renew_failures,
            acquisitions=self.acquisitions,
            takeovers=self.takeovers,
            renewals=self.renewals,
            last_step_down=self.last_step_down,
            holder=self.holder,
            present=self.present,
            failovers=self.failovers,
        )

    def may_publish(self) -> str | None:
        """None while this leader may publish; else why not (checked before each publish).

        A leader whose last successful renew is older than ``renew_deadline`` must not
        publish: after a freeze, what its sockets hold is old, and Redis may already have
        given the lease to someone else.
        """
        if not self.is_leader:
            return "not the leader"
        if not self._clock.may_publish(time.monotonic()):
            return f"no successful renew for {self.policy.renew_deadline:g}s"
        return None

    def lost(self, reason: str = "fenced") -> None:
        """Tell the loop the lease is gone: the term ends now with ``reason``."""
        self._lost_reason = reason
        if self._lost is not None:
            self._lost.set()

    async def run(self, on_elected: OnElected) -> None:
        """Compete for the lease until cancelled; while leader, run ``on_elected(fence)``.

        Whatever ends a term (see the module docstring) puts the loop back into
        candidacy; nothing but a cancel of ``run`` ends it. Cancelling ``run`` stops the
        term's work and releases the lease.
        """
        self._wake = asyncio.Event()
        self._present_event = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._presence(), name="lease-presence")
                if self._redis.sentinel_manager is not None:
                    tg.create_task(
                        self._redis.follow_failovers(self._switched), name="lease-failovers"
                    )
                await self._compete(on_elected)
        finally:
            for task in list(self._stragglers):
                task.cancel()
            if self.epoch is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())

    def _switched(self, address: str) -> None:
        """A Sentinel failover: every connection was dropped; a standby competes at once
        on the new master, where the lease may have been replicated, or be gone. For
        :data:`PRESENCE_GRACE` it does not take over a lease that is held: pub/sub is not
        replicated, so the holder's presence channel on the new master is empty until it
        subscribes again (a fraction of a second), and reading that as a crash would
        change leaders, and open a second exchange connection, for nothing."""
        self.failovers += 1
        self._presence_grace_until = time.monotonic() + PRESENCE_GRACE
        if self._wake is not None:
            self._wake.set()

    async def release(self) -> bool:
        """Compare-and-delete the lease if we hold it, announcing it to standbys.

        True if we held it. Never raises: on shutdown an unreachable Redis just means
        the lease expires after the TTL (or a standby sees our presence go) instead.
        """
        try:
            async with asyncio.timeout(self.policy.retry):
                held = await retry_once(
                    lambda: self._release(
                        keys=[keys.leader(self._kp)],
                        args=[
                            self.identity,
                            keys.lease_channel(self._kp),
                            *(["SPUBLISH"] if self._cluster else []),
                        ],
                    )
                )
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.warning("could not release the lease: redis at %s %s", self._where, describe(exc))
            return False
        if held:
            log.info("released the lease (epoch %s)", self.epoch)
        return bool(held)

    async def close(self) -> None:
        """Close the Redis connections (call after :meth:`run` has ended)."""
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # --- candidate -----------------------------------------------------------------

    async def _compete(self, on_elected: OnElected) -> None:
        assert self._present_event is not None
        while True:
            await self._present_event.wait()  # never lead without a presence channel
            outcome = await self._try_acquire()
            if outcome is None:
                await self._standby_wait(self._clock.standby_delay(self._rand))
                continue
            epoch, previous = outcome
            if not epoch:
                await self._standby_wait(self._clock.watch_delay(self._rand))
                continue
            if previous and previous != self.identity:
                self.takeovers += 1
                log.warning(
                    "took over the lease from %s: it released it, its lease expired, or it "
                    "has no connection to redis (crashed?)",
                    previous,
                )
            self._standby_state = None
            failed = await self._lead(epoch, on_elected)
            # After a failed term, ``retry`` plus a growing backoff: a healthy standby
            # (polling every ``watch``) gets the lease first, and a process whose terms
            # keep failing does not keep grabbing it.
            delay = 0.0
            if failed:
                delay = self.policy.retry + self._term_backoff.next_delay(time.monotonic())
            if delay > 0:
                # A plain sleep, not a standby wait: this process's own release wakes
                # every waiter, and it must not be the first to jump back in.
                log.info("competing for the lease again in %.2fs", delay)
                await asyncio.sleep(delay)

    async def _try_acquire(self) -> tuple[int, str] | None:
        """One acquire attempt: ``(epoch, holder we last saw)``, ``(0, holder)`` if a live
        process holds the lease, or None if Redis failed (logged on each change)."""
        args: list[str | int] = [self.identity, self.policy.ttl_ms]
        if time.monotonic() >= self._presence_grace_until:
            # Take over from a holder whose presence channel is empty (it is gone).
            args.append(keys.presence_prefix(self._kp))
            if self._cluster:
                args.append("SHARDNUMSUB")
        try:
            async with asyncio.timeout(self.policy.retry):
                result = await retry_once(lambda: self._acquire(keys=self._lease_keys, args=args))
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self._standby_failed(exc)
            return None
        if isinstance(result, str):
            self.holder = result
            self._standby(f"held by {result}")
            return 0, result
        previous, self.holder = self.holder, None
        return int(result), previous or ""

    def _standby_failed(self, exc: BaseException) -> None:
        kind = classify(exc).value
        if self._standby(f"redis {kind}"):
            log.warning(
                "standby: redis %s at %s: retrying in %.1fs (%s)",
                kind,
                self._where,
                self.policy.retry,
                describe(exc),
            )

    def _standby(self, state: str) -> bool:
        """Note what a standby's attempts meet; log and return True on each change."""
        if state == self._standby_state:
            return False
        was = self._standby_state
        self._standby_state = state
        if state.startswith("held by "):
            if was is not None and was.startswith("redis "):
                log.info("redis reachable again at %s", self._where)
            log.info("standby: the lease is %s", state)
        return True

    async def _standby_wait(self, delay: float) -> None:
        """Sleep ``delay``, or less if the leader announces a release."""
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _presence(self) -> None:
        """Hold the presence subscription for the whole life of the loop, and wake the
        standby loop when a leader announces a release. Reconnects by itself."""
        assert self._wake is not None and self._present_event is not None
        channels = (
            keys.presence_channel(self._kp, self.identity),
            keys.lease_channel(self._kp),
        )
        backoff = Backoff(BackoffPolicy(initial=0.1, max=self.policy.retry, reset_after=10.0))
        while True:
            pubsub = self._redis.pubsub()
            try:
                if self._cluster:
                    # Shard channels in the lease's slot, so the acquire script's
                    # SHARDNUMSUB on that node sees this subscription.
                    await self._redis.initialize()
                    await pubsub.ssubscribe(*channels)
                    read = pubsub.get_sharded_message
                else:
                    await pubsub.subscribe(*channels)
                    read = pubsub.get_message
                # The subscribe is only sent; its confirmation arrives as a message.
                confirmed = 0
                while confirmed < len(channels):
                    message = await read(timeout=self.policy.retry)
                    if message is None:
                        raise TimeoutError("no subscribe confirmation")
                    if message["type"] in ("subscribe", "ssubscribe"):
                        confirmed += 1
                self.present = True
                self._present_event.set()
                backoff.connected(time.monotonic())
                while True:
                    message = await read(ignore_subscribe_messages=True, timeout=self.policy.retry)
                    if message is not None and message["type"] in ("message", "smessage"):
                        self._wake.set()
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                self._standby_failed(exc)
            finally:
                self.present = False
                self._present_event.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff.next_delay(time.monotonic()))

    # --- leader --------------------------------------------------------------------

    async def _lead(self, epoch: int, on_elected: OnElected) -> bool:
        """One term: run ``on_elected`` and renew until the term ends; True if it failed."""
        started = time.monotonic()
        self._clock.acquired(started)
        self._term_backoff.connected(started)
        self.epoch = epoch
        self.since = time.time()
        self.is_leader = True
        self.acquisitions += 1
        self._lost = asyncio.Event()
        log.info("elected leader: %s epoch %d", self.identity, epoch)
        fence = Fence(token=self.identity, epoch=epoch)
        ended: list[BaseException | None] = []

        async def work() -> None:
            # Never raises but for its own cancellation: how the work ended is recorded
            # for _hold, so a failing term cannot cancel the candidate loop.
            try:
                await on_elected(fence)
            except Exception as exc:  # recorded: the term ends on it
                ended.append(exc)
            else:
                ended.append(None)

        reason = _STOPPING
        # Owned here rather than by a TaskGroup, whose exit would wait for ever on work
        # that ignores its cancel: such work is cut off (_stop_term) and kept in
        # _stragglers, cancelled again when the loop ends.
        task = asyncio.create_task(work(), name=f"leader-epoch-{epoch}")
        lost_wait = asyncio.create_task(self._lost.wait(), name="leader-lost-wait")
        try:
            reason = await self._hold(epoch, task, lost_wait, ended)
        finally:
            # The work stops first; only then do we say we are no longer leader.
            lost_wait.cancel()
            await self._stop_term(task, epoch)
            self.is_leader = False
            self._clock.released()
            self.since = None
            self.last_step_down = reason
            log.warning("stepped down (epoch %d): %s", epoch, reason)
        if reason.startswith(("relay ended", "renew deadline passed", "relay failed")):
            await self.release()  # ours or not, compare-and-delete is safe
        return not reason.startswith(("relay ended", "lease taken", "fenced"))

    async def _stop_term(self, task: asyncio.Task[None], epoch: int) -> None:
        """Cancel the term's work and wait for it, at most :data:`TERM_STOP` seconds."""
        if task.done():
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=TERM_STOP_GRACE)
        if done:
            return
        log.error(
            "term %d: the relay did not stop within %.1fs of being cancelled; cutting its "
            "exchange connection",
            epoch,
            TERM_STOP_GRACE,
        )
        if self._on_stuck is not None:
            self._on_stuck()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=TERM_STOP - TERM_STOP_GRACE)
        if not done:
            log.error(
                "term %d: the relay is still running %.1fs after being cancelled; "
                "competing again without it (its publishes are refused)",
                epoch,
                TERM_STOP,
            )
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)

    async def _hold(
        self,
        epoch: int,
        task: asyncio.Task[None],
        lost_wait: asyncio.Task[bool],
        ended: list[BaseException | None],
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
                return _why_work_ended(ended[0] if ended else None)
            now = time.monotonic()
            if clock.must_step_down(now):
                return "renew deadline passed"
            if not clock.should_renew(now):
                continue
            deadline = clock.step_down_at()
            assert deadline is not None
            try:
                async with asyncio.timeout(max(0.01, deadline - now)):
                    ok = await retry_once(
                        lambda: self._renew(
                            keys=self._lease_keys, args=[self.identity, epoch, self.policy.ttl_ms]
                        )
                    )
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                clock.renew_failed(now)
                self.renew_failures += 1
                where, why = self._where, describe(exc)
                log.warning("lease renew failed (epoch %d): redis at %s %s", epoch, where, why)
                continue
            if not ok:
                return "lease taken (another candidate holds it now)"
            clock.renewed(now)
            self.renewals += 1
            self.last_renew_latency = time.monotonic() - now

    @property
    def _where(self) -> str:
        return redact_url(self.url)


def _why_work_ended(exc: BaseException | None) -> str:
    """The step-down reason for a term whose work returned or raised ``exc``."""
    if exc is None:
        return "relay ended"
    if isinstance(exc, FencedError):
        return f"fenced by redis: {exc}"
    if isinstance(exc, LeaseLost):
        return str(exc)
    log.error("leader task failed: %r", exc)
    return f"relay failed: {exc!r}"


async def read_leader(redis_url: str, prefix: str = "") -> LeaseHolder | None:
    """Who holds the lease, for ``pricectl health --redis``: identity, epoch, ttl_ms.

    None when no one holds it. Raises ``BusError`` if Redis cannot be reached.
    """
    from pricectl.errors import BusError

    client = connect_any(redis_url, timeout=2.0)
    kp = key_prefix(client, prefix)
    try:
        async with asyncio.timeout(2.0), client.pipeline(transaction=True) as pipe:
            pipe.get(keys.leader(kp))
            pipe.get(keys.epoch(kp))
            pipe.pttl(keys.leader(kp))
            token, epoch, ttl_ms = await pipe.execute()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise BusError(f"redis at {redact_url(redis_url)} {describe(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    if token is None:
        return None
    return LeaseHolder(identity=token, epoch=int(epoch or 0), ttl_ms=int(ttl_ms))
