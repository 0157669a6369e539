"""The leader lease against a real redis-server: one leader, fast release, step-down, epochs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pricectl.bus import Fence
from pricectl.bus import keys as bus_keys
from pricectl.bus.leader import TERM_STOP, TERM_STOP_GRACE, Leader, read_leader
from pricectl.bus.redis import connect_redis
from pricectl.core.lease import LeasePolicy
from pricectl.errors import FencedError
from tests.redis_server import RedisServer
from tests.waiting import UNIT, until

FAST = LeasePolicy(ttl=1.5, renew_deadline=1.0, retry=0.2)


class Candidate:
    """A Leader running the candidate loop, recording its terms."""

    def __init__(self, url: str, policy: LeasePolicy = FAST, prefix: str = "") -> None:
        self.leader = Leader(url, prefix, policy=policy)
        self.terms: list[Fence] = []
        self.cancelled: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def on_elected(self, fence: Fence) -> None:
        self.terms.append(fence)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(fence.epoch)
            raise

    def start(self) -> Candidate:
        self.task = asyncio.create_task(self.leader.run(self.on_elected))
        return self

    async def stop(self) -> None:
        """Cancel the loop (which releases the lease, as on SIGTERM) and close."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.leader.close()


@contextlib.asynccontextmanager
async def candidates(
    url: str, n: int, policy: LeasePolicy = FAST
) -> AsyncIterator[list[Candidate]]:
    group = [Candidate(url, policy).start() for _ in range(n)]
    try:
        yield group
    finally:
        for c in group:
            await c.stop()


def leaders(group: list[Candidate]) -> list[Candidate]:
    """Candidates that lead and whose ``on_elected`` has started."""
    return [c for c in group if c.leader.is_leader and c.terms]


async def lease_listeners(url: str) -> bool:
    client = connect_redis(url)
    try:
        counts = await client.pubsub_numsub(bus_keys.lease_channel(""))
    finally:
        await client.aclose()
    return bool(counts and counts[0][1] >= 2)


async def test_exactly_one_of_three_candidates_leads(redis_server: RedisServer) -> None:
    """Three candidates: one leads and keeps renewing; the others stay standbys."""
    async with candidates(redis_server.url, 3) as group:
        await until(lambda: leaders(group), 5, "a leader")
        (leader,) = leaders(group)
        await until(lambda: leader.leader.renewals >= 5, 5, "five renewals")
        assert leaders(group) == [leader]
        assert sum(len(c.terms) for c in group) == 1
        info = await read_leader(redis_server.url)
        assert info is not None
        assert info.identity == leader.leader.identity
        assert info.epoch == leader.leader.epoch == leader.terms[0].epoch
        assert 0 < info.ttl_ms <= 1500
        status = leader.leader.status()
        assert status.is_leader and status.since is not None
        assert status.last_renew_latency is not None and status.renew_failures == 0


async def test_release_lets_a_standby_take_over_long_before_the_ttl(
    redis_server: RedisServer,
) -> None:
    """Stopping the leader releases the lease; a standby leads within a second although the
    TTL is 10 s and standbys poll every 2 s."""
    slow = LeasePolicy(ttl=10.0, renew_deadline=5.0, retry=2.0)
    async with candidates(redis_server.url, 2, slow) as group:
        await until(lambda: leaders(group), 5, "a leader")
        (old,) = leaders(group)
        (standby,) = [c for c in group if c is not old]
        # The standby listens on the lease channel (the old leader's listener counts too).
        await until(lambda: lease_listeners(redis_server.url), 5, "both lease listeners")
        started = time.monotonic()
        await old.stop()
        assert old.cancelled == [old.terms[0].epoch]
        await until(lambda: standby.terms, 1.0, "the standby to take over")
        assert time.monotonic() - started < 1.0 * UNIT
        assert standby.terms[0].epoch > old.terms[0].epoch
    assert await read_leader(redis_server.url) is None


async def test_leader_steps_down_by_renew_deadline_when_redis_freezes(
    redis_server: RedisServer,
) -> None:
    """With Redis paused (SIGSTOP), renewals fail and the leader steps down by renew_deadline,
    cancelling its work; when Redis resumes, a leader is elected with a higher epoch."""
    assert redis_server.proc is not None
    async with candidates(redis_server.url, 1) as group:
        (c,) = group
        await until(lambda: c.leader.is_leader, 5, "a leader")
        await until(lambda: c.leader.renewals >= 1, 5, "a renewal")
        first = c.terms[0].epoch
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            paused = time.monotonic()
            await until(lambda: not c.leader.is_leader, 3, "the leader to step down")
            elapsed = time.monotonic() - paused
            # Last renewal was at most `retry` before the pause: deadline 1.0 s after it.
            assert elapsed <= FAST.renew_deadline + 0.3 * UNIT
            assert c.cancelled == [first]
            assert c.leader.last_step_down == "renew deadline passed"
            assert c.leader.renew_failures >= 1
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        await until(lambda: c.leader.is_leader, 5, "re-election after Redis resumes")
        assert c.terms[-1].epoch > first


async def test_epochs_strictly_increase_across_takeovers_and_a_redis_restart(
    redis_server: RedisServer,
) -> None:
    """Each new term has a higher epoch, even after Redis restarts empty (no persistence)."""
    epochs: list[int] = []
    for _ in range(3):
        async with candidates(redis_server.url, 2) as group:
            await until(lambda: leaders(group), 5, "a leader")
            epochs.append(leaders(group)[0].leader.epoch or 0)
    redis_server.restart()
    async with candidates(redis_server.url, 1) as group:
        await until(lambda: leaders(group), 5, "a leader after the restart")
        epochs.append(group[0].leader.epoch or 0)
    assert epochs == sorted(set(epochs)) and len(epochs) == 4


async def test_lost_steps_down_at_once(redis_server: RedisServer) -> None:
    """lost() (the relay saw FencedError) ends the term at once; the loop then competes again."""
    async with candidates(redis_server.url, 1) as group:
        (c,) = group
        await until(lambda: leaders(group), 5, "a leader")
        first = c.terms[0].epoch
        c.leader.lost()
        await until(lambda: c.cancelled == [first], 1, "the term to be cancelled")
        assert c.leader.last_step_down == "fenced"
        await until(lambda: len(c.terms) == 2, 5, "a new term")
        assert c.terms[1].epoch > first


async def test_candidate_waits_for_a_missing_redis_and_logs_it(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis absent the loop logs 'redis unreachable at <url>: retrying in' and leads
    once Redis appears, without ever raising."""
    redis_server.kill()
    caplog.set_level(logging.WARNING, logger="pricectl.bus.leader")
    async with candidates(redis_server.url, 1) as group:
        (c,) = group
        await until(
            lambda: f"redis unreachable at {redis_server.url}: retrying in" in caplog.text,
            5,
            "the unreachable log line",
        )
        assert not c.leader.is_leader and c.task is not None and not c.task.done()
        redis_server.start()
        await until(lambda: c.leader.is_leader, 5, "a leader once Redis is up")


class FailingTerm:
    """A Leader whose every term runs a TaskGroup whose child raises ``error`` (as the
    relay's does when Redis refuses a publish)."""

    def __init__(self, url: str, error: Exception) -> None:
        self.leader = Leader(url, policy=FAST)
        self.error = error
        self.terms = 0

    async def on_elected(self, fence: Fence) -> None:
        self.terms += 1

        async def child() -> None:
            await asyncio.sleep(0.01)
            raise self.error

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(child())
        except* Exception as group:
            raise group.exceptions[0] from None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (FencedError("publish refused by redis: epoch 1 is not current"), "fenced by redis"),
        (RuntimeError("the relay broke"), "relay failed: RuntimeError"),
    ],
)
async def test_a_failing_term_returns_the_loop_to_candidacy(
    redis_server: RedisServer, error: Exception, reason: str
) -> None:
    """A term that ends in an error raised through a TaskGroup (which, on Python 3.11,
    leaves the task's cancel count raised) steps down with that reason, and the candidate
    loop competes again instead of ending as "cancelled"."""
    c = FailingTerm(redis_server.url, error)
    task = asyncio.ensure_future(c.leader.run(c.on_elected))
    try:
        await until(lambda: c.terms >= 2, 10, "a second term")
        assert not task.done()
        assert c.leader.last_step_down is not None
        assert c.leader.last_step_down.startswith(reason), c.leader.last_step_down
        assert c.leader.acquisitions >= 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await c.leader.close()


async def test_a_term_that_ignores_its_cancel_is_cut_off_within_two_seconds(
    redis_server: RedisServer,
) -> None:
    """A term's work that swallows its cancellation does not hold the loop: after the
    grace period on_stuck is called (to cut the exchange socket) and the loop competes
    again within TERM_STOP seconds of the decision."""
    stuck: list[float] = []
    release = asyncio.Event()

    async def stubborn(fence: Fence) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    leader = Leader(redis_server.url, policy=FAST, on_stuck=lambda: stuck.append(time.monotonic()))
    task = asyncio.ensure_future(leader.run(stubborn))
    try:
        await until(lambda: leader.is_leader, 5, "a leader")
        decided = time.monotonic()
        leader.lost("fenced (test)")
        await until(
            lambda: leader.last_step_down == "fenced (test)", TERM_STOP + 0.5, "the term to end"
        )
        assert time.monotonic() - decided < TERM_STOP + 0.3 * UNIT
        assert stuck and stuck[0] - decided >= TERM_STOP_GRACE - 0.05
        await until(lambda: leader.acquisitions >= 2, 5, "candidacy again")
    finally:
        release.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await leader.close()


async def test_a_crashed_holder_is_replaced_without_waiting_for_the_ttl(
    redis_server: RedisServer,
) -> None:
    """A lease whose holder has no presence subscription (its process died) is taken over
    by a standby at its next watch, long before the ttl; one whose holder is subscribed
    is not."""
    client = connect_redis(redis_server.url)
    try:
        await client.set(bus_keys.leader(""), "ghost-1-dead", px=60_000)
        await client.set(bus_keys.epoch(""), 5)
        alive = client.pubsub()
        await alive.subscribe(bus_keys.presence_channel("", "ghost-1-dead"))
        await until(
            lambda: _numsub(client, bus_keys.presence_channel("", "ghost-1-dead")), 5, "presence"
        )
        async with candidates(
            redis_server.url, 1, LeasePolicy(ttl=60, renew_deadline=30, retry=1)
        ) as (c,):
            await until(lambda: c.leader.holder == "ghost-1-dead", 5, "the standby to see it")
            assert not c.leader.is_leader
            started = time.monotonic()
            await alive.aclose()  # the holder's connection goes, as when its process dies
            await until(lambda: c.terms, 2, "the takeover")
            assert time.monotonic() - started < 1.0 * UNIT
            assert c.leader.takeovers == 1
    finally:
        await client.aclose()


async def _numsub(client: Any, channel: str) -> bool:
    counts = await client.pubsub_numsub(channel)
    return bool(counts and counts[0][1] >= 1)
