"""`pricectl ingest` as real processes: three candidates, a real redis-server, the simulator.

Each test runs three ``pricectl ingest`` subprocesses against a redis-server the test
starts (and kills, stops, restarts), the simulator in the test's event loop (so its
connection count can be sampled every few milliseconds), and a bus consumer
(``RedisBus.subscribe``) that records every update with its arrival time.

Short lease timings (ttl 3 s) where the claim is about the mechanism; the default
timings (ttl 15 s, retry 2 s) where the claim is about them (SIGTERM handoff within 2 s
is only meaningful with the 2 s retry: it must come from the release, not a poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pricectl.bus import keys
from pricectl.bus.base import Gap
from pricectl.bus.redis import RedisBus, connect_any, connect_redis, key_prefix
from pricectl.config import BusSettings
from pricectl.core.status import to_json
from pricectl.core.ticks import PriceUpdate
from pricectl.ingest.candidate import Ingest
from pricectl.loadtest.spawn import child_env
from pricectl.simulator import Simulator
from tests.ingest.test_relay import sim_settings
from tests.redis_server import RedisServer
from tests.waiting import UNIT, until

PAIRS = ["BTC/USD", "ETH/USD"]

#: Lease timings for tests about the mechanism (not the defaults).
FAST = {
    "PRICECTL_LEADER__TTL": "3s",
    "PRICECTL_LEADER__RENEW_DEADLINE": "2s",
    "PRICECTL_LEADER__RETRY": "0.5s",
}

pytestmark = pytest.mark.timeout(60 * UNIT)


@dataclass
class Seen:
    """One update as the consumer received it."""

    at: float
    update: PriceUpdate


@dataclass
class Consumer:
    """A bus consumer recording every update, every gap and the snapshot re-read after it."""

    bus: RedisBus
    seen: list[Seen] = field(default_factory=list)
    gaps: list[tuple[float, str]] = field(default_factory=list)
    resyncs: list[dict[str, PriceUpdate]] = field(default_factory=list)
    #: Everything in arrival order: an update, or None for a gap (its resync follows).
    events: list[PriceUpdate | None] = field(default_factory=list)

    async def run(self) -> None:
        async for event in self.bus.subscribe(PAIRS):
            if isinstance(event, Gap):
                self.gaps.append((time.monotonic(), event.reason))
                self.events.append(None)
                await self._resync()
                continue
            self.seen.append(Seen(time.monotonic(), event.update))
            self.events.append(event.update)

    def check(self) -> None:
        """Per pair: no older epoch after a newer one, no duplicate (epoch, seq), and every
        hole in a pair's seq (or a new epoch not starting at seq 1) marked by a gap."""
        last: dict[str, tuple[int, int]] = {}
        gap_since: dict[str, bool] = {p: True for p in PAIRS}
        for event in self.events:
            if event is None:
                gap_since = {p: True for p in PAIRS}
                continue
            pair, key = event.pair, (event.epoch, event.seq)
            prev = last.get(pair)
            if prev is not None:
                assert event.epoch >= prev[0], f"{pair}: epoch {event.epoch} after {prev[0]}"
                assert key != prev and key > prev, f"{pair}: {key} again/out of order after {prev}"
                contiguous = (event.epoch == prev[0] and event.seq == prev[1] + 1) or (
                    event.epoch > prev[0] and event.seq == 1
                )
                assert contiguous or gap_since[pair], f"{pair}: unmarked hole {prev} -> {key}"
            last[pair] = key
            gap_since[pair] = False

    async def _resync(self) -> None:
        """Re-read the snapshot as serve's hub does: retried (with backoff) until Redis
        answers, since the first command after a restart may meet a dead pooled socket."""
        delay = 0.05
        for _ in range(40):
            try:
                self.resyncs.append(await self.bus.snapshot(PAIRS))
                return
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def epochs(self) -> list[int]:
        """Distinct epochs in arrival order."""
        out: list[int] = []
        for s in self.seen:
            if not out or out[-1] != s.update.epoch:
                out.append(s.update.epoch)
        return out

    def count(self, epoch: int | None = None) -> int:
        return sum(1 for s in self.seen if epoch is None or s.update.epoch == epoch)

    def first_of(self, epoch: int) -> Seen | None:
        return next((s for s in self.seen if s.update.epoch == epoch), None)

    def newest_epoch(self) -> int:
        return max((s.update.epoch for s in self.seen), default=0)


class Cluster:
    """The ingest processes of one test, their logs, and who leads."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            i = len(self.procs)
            with open(self.folder / f"ingest-{i}.log", "wb") as out:
                p = subprocess.Popen(
                    [sys.executable, "-m", "pricectl.cli", "ingest"],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append(p)
            started.append(p)
        return started

    def log(self, p: subprocess.Popen[bytes]) -> str:
        return (self.folder / f"ingest-{self.procs.index(p)}.log").read_text(errors="replace")

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    async def leader(self, url: str) -> subprocess.Popen[bytes] | None:
        """The process whose pid is in the lease token (``host-pid-random``)."""
        client = connect_any(url, timeout=1.0)
        try:
            token = await client.get(keys.leader(key_prefix(client, "")))
        except Exception:
            return None
        finally:
            await client.aclose()
        if token is None:
            return None
        return next((p for p in self.alive() if f"-{p.pid}-" in token), None)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGCONT)
                    p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    def dump(self) -> str:
        return "\n".join(
            f"--- ingest-{i} ---\n{self.log(p)[-3000:]}" for i, p in enumerate(self.procs)
        )


@dataclass
class System:
    redis: RedisServer
    sim: Simulator
    cluster: Cluster
    consumer: Consumer
    #: Largest simulator connection count sampled so far (every ~5 ms).
    max_connections: int = 0
    samples: int = 0

    async def leader(
        self, timeout: float = 15, other_than: object = None
    ) -> subprocess.Popen[bytes]:
        found: list[subprocess.Popen[bytes]] = []

        async def known() -> bool:
            p = await self.cluster.leader(self.redis.url)
            if p is not None and p is not other_than:
                found.append(p)
                return True
            return False

        await until(known, timeout, "a leader in redis")
        return found[-1]

    async def newer(self, than: int, n: int = 10, timeout: float = 10) -> int:
        """Wait for ``n`` updates of an epoch above ``than``; that epoch."""
        await until(lambda: self.consumer.newest_epoch() > than, timeout, f"an epoch above {than}")
        epoch = self.consumer.newest_epoch()
        await self.flowing(n, epoch, timeout)
        return epoch

    async def flowing(self, n: int = 20, epoch: int | None = None, timeout: float = 15) -> None:
        """Wait for ``n`` more updates (of ``epoch`` if given) at the consumer."""
        start = self.consumer.count(epoch)
        await until(
            lambda: self.consumer.count(epoch) >= start + n,
            timeout,
            f"{n} updates{'' if epoch is None else f' of epoch {epoch}'} at the consumer",
        )


def _env(redis_url: str, sim: Simulator, extra: dict[str, str]) -> dict[str, str]:
    return child_env(
        {
            "REDIS_URL": redis_url,
            "BINANCE_WS_URL": sim.ws_url,
            "BINANCE_REST_URL": sim.rest_url,
            "PRICECTL_PAIRS": ",".join(PAIRS),
            "PRICECTL_EXCHANGE__STREAM": "bookTicker",
            "LOG_LEVEL": "info",
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def system(
    tmp_path: Path, redis: RedisServer, n: int = 3, extra: dict[str, str] | None = None
) -> AsyncIterator[System]:
    """Simulator + consumer + ``n`` ingest processes; everything stopped at the end."""
    sim = Simulator(symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20.0)
    await sim.start()
    bus = RedisBus(redis.url, probe_interval=0.2)
    await bus.start()
    consumer = Consumer(bus)
    cluster = Cluster(tmp_path, _env(redis.url, sim, extra or {}))
    sys_ = System(redis, sim, cluster, consumer)

    async def sample() -> None:
        while True:
            sys_.max_connections = max(sys_.max_connections, sim.connections)
            sys_.samples += 1
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(sample())]
    try:
        cluster.start(n)
        yield sys_
    except BaseException:
        print(cluster.dump())
        raise
    finally:
        cluster.kill_all()
        for t in tasks:
            t.cancel()
        await bus.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sim.stop()


async def _exited(p: subprocess.Popen[bytes], timeout: float) -> int:
    await until(lambda: p.poll() is not None, timeout, f"ingest pid {p.pid} to exit")
    assert p.returncode is not None
    return p.returncode


# --- tests ---------------------------------------------------------------------------------


async def test_one_exchange_connection_and_updates_flow(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Three candidates, default timings: one leader, one simulator connection, every
    update; SIGUSR1 makes the leader log its tasks' await chains and carry on."""
    async with system(tmp_path, redis_server) as s:
        await s.leader()
        await s.flowing(80)
        assert s.sim.connections == 1
        assert s.max_connections == 1, "more than one ingest connected to the exchange"
        assert len(s.cluster.alive()) == 3
        assert len(s.consumer.epochs()) == 1
        # per pair, seq +1 per update within the epoch: nothing lost, nothing twice
        for pair in PAIRS:
            seqs = [x.update.seq for x in s.consumer.seen if x.update.pair == pair]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), pair
        assert s.samples > 100
        # SIGUSR1 logs every task's await chain (and changes nothing).
        leader = await s.leader()
        leader.send_signal(signal.SIGUSR1)
        await until(
            lambda: "task 'ingest-candidate' pending" in s.cluster.log(leader),
            5,
            "the task dump",
        )
        assert "pricectl/bus/leader.py" in s.cluster.log(leader).split("task dump (SIGUSR1)")[1]
        await s.flowing(20)
        assert leader.poll() is None


async def test_sigterm_hands_over_within_two_seconds(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGTERM, default 2 s retry: the lease is released and a standby publishes within 2 s."""
    async with system(tmp_path, redis_server) as s:
        old = await s.leader()
        await s.flowing(20)
        old_epoch = s.consumer.newest_epoch()
        t0 = time.monotonic()
        old.send_signal(signal.SIGTERM)
        await until(lambda: s.consumer.newest_epoch() > old_epoch, 5, "an update of a new epoch")
        first = s.consumer.first_of(s.consumer.newest_epoch())
        assert first is not None
        assert first.at - t0 < 2.0, f"handover took {first.at - t0:.2f}s"
        assert await _exited(old, 10) == 0
        assert "released the lease" in s.cluster.log(old)
        new = await s.leader()
        assert new is not old
        await s.flowing(20, s.consumer.newest_epoch())
        assert s.max_connections == 1, "two exchange connections during a graceful handover"


async def test_sigkill_new_epoch_within_three_seconds(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGKILL of the leader, default timings (ttl 15 s): its presence subscription dies
    with it, so a standby publishes with a higher epoch within 3 s, not after the ttl."""
    async with system(tmp_path, redis_server) as s:
        old = await s.leader()
        await s.flowing(20)
        # Every standby has seen the holder (a slow start could otherwise make its first
        # attempt after the kill, and it would find the lease free, not taken over).
        await until(
            lambda: all(
                "standby: the lease is held by" in s.cluster.log(p)
                for p in s.cluster.procs
                if p is not old
            ),
            15,
            "every standby to see the leader",
        )
        old_epoch = s.consumer.newest_epoch()
        t0 = time.monotonic()
        old.kill()
        await until(lambda: s.consumer.newest_epoch() > old_epoch, 5, "an update of a new epoch")
        first = s.consumer.first_of(s.consumer.newest_epoch())
        assert first is not None
        assert first.at - t0 < 3.0, f"takeover took {first.at - t0:.2f}s"
        new = await s.leader()
        assert new is not old and new.poll() is None
        assert "took over the lease from" in s.cluster.log(new)
        await s.flowing(20, s.consumer.newest_epoch())
        assert s.sim.connections == 1
        s.consumer.check()
        print(f"SIGKILL takeover: first update of the new epoch after {first.at - t0:.3f}s")


async def test_fenced_leader_competes_again(tmp_path: Path, redis_server: RedisServer) -> None:
    """FLUSHALL fences the leader (its next publish is refused); it says so, stays a
    candidate, and when the two others are SIGTERMed in turn it leads again within 2 s."""
    async with system(tmp_path, redis_server) as s:
        fenced = await s.leader()
        await s.flowing(20)
        epoch = s.consumer.newest_epoch()
        t0 = time.monotonic()
        s.redis.flushall()
        leader = await s.leader(timeout=2)
        assert time.monotonic() - t0 < 2.0 + 0.5, "no leader within 2 s of FLUSHALL"
        await until(
            lambda: "stepped down" in s.cluster.log(fenced), 5, "the fenced leader to step down"
        )
        log = s.cluster.log(fenced)
        assert "fenced by redis" in log and ": cancelled" not in log, log[-2000:]
        epoch = await s.newer(epoch)
        # SIGTERM whoever leads until the fenced candidate is the one left to lead.
        while leader is not fenced:
            t1 = time.monotonic()
            leader.send_signal(signal.SIGTERM)
            nxt = await s.leader(timeout=2, other_than=leader)
            assert time.monotonic() - t1 < 2.0 + 0.5, "no leader within 2 s of the SIGTERM"
            assert await _exited(leader, 5) == 0
            leader = nxt
            epoch = await s.newer(epoch)
        assert "elected leader" in s.cluster.log(fenced).split("fenced by redis", 1)[1]
        s.consumer.check()


async def test_redis_flushall_and_empty_restart_leader_within_two_seconds(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """FLUSHALL, then Redis restarted empty: each time a leader holds the lease again
    within 2 s and updates flow, and every process is still a candidate."""
    async with system(tmp_path, redis_server) as s:
        await s.leader()
        await s.flowing(20)
        for fault in ("flushall", "restart"):
            before = s.consumer.newest_epoch()
            t0 = time.monotonic()
            if fault == "flushall":
                s.redis.flushall()
            else:
                s.redis.restart()
            await s.leader(timeout=2)
            took = time.monotonic() - t0
            assert took < 2.0 + 0.3, f"{fault}: no leader for {took:.2f}s"
            await until(
                lambda b=before: s.consumer.newest_epoch() > b, 10, f"updates after {fault}"
            )
            await s.flowing(20, s.consumer.newest_epoch())
            print(f"{fault}: a leader again after {took:.2f}s")
        assert len(s.cluster.alive()) == 3
        for p in s.cluster.procs:
            assert ": cancelled" not in s.cluster.log(p)
        s.consumer.check()


#: A lease where a freeze of ttl - 3 s outlasts renew_deadline but not the ttl.
FREEZE = {
    "PRICECTL_LEADER__TTL": "8s",
    "PRICECTL_LEADER__RENEW_DEADLINE": "4s",
    "PRICECTL_LEADER__RETRY": "1s",
}


async def test_leader_frozen_past_renew_deadline_publishes_nothing_and_steps_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP of the leader for ttl - 3 s (past renew_deadline), SIGCONT: nothing of its
    backlog reaches the bus, it steps down within 1 s of waking, closes its exchange
    connection, competes again, and exits on SIGTERM within 5 s."""
    async with system(tmp_path, redis_server, extra=FREEZE) as s:
        old = await s.leader()
        await s.flowing(20)
        old_epoch = s.consumer.newest_epoch()
        old.send_signal(signal.SIGSTOP)
        try:
            frozen = time.monotonic()
            await until(lambda: time.monotonic() - frozen >= 5.0, 10, "ttl - 3 s of freeze")
            assert await s.cluster.leader(s.redis.url) is old, "lease lost during the freeze"
        finally:
            old.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        await until(
            lambda: f"stepped down (epoch {old_epoch})" in s.cluster.log(old),
            1.0,
            "the woken leader to step down",
        )
        await until(lambda: s.sim.connections <= 1, 2, "the old exchange connection closed")
        # It released the lease as it stepped down: a standby leads at once, not at the ttl.
        new = await s.leader(timeout=2, other_than=old)
        await s.newer(old_epoch, 20)
        log = s.cluster.log(old)
        assert "renew deadline passed" in log
        late = [x for x in s.consumer.seen if x.update.epoch == old_epoch and x.at >= woke]
        assert not late, f"{len(late)} updates of the frozen leader's backlog were published"
        await until(lambda: "standby: the lease is held by" in s.cluster.log(old), 5, "candidacy")
        assert new is not old and old.poll() is None
        assert s.sim.connections == 1
        t0 = time.monotonic()
        old.send_signal(signal.SIGTERM)
        assert await _exited(old, 5) == 0
        assert time.monotonic() - t0 < 5.0
        s.consumer.check()


async def test_stalled_leader_is_fenced_and_steps_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP past the ttl, SIGCONT: Redis refuses the old leader, it steps down, and no
    update of the old epoch reaches the consumer after the new epoch's first."""
    async with system(tmp_path, redis_server, extra=FAST) as s:
        old = await s.leader()
        await s.flowing(20)
        old_epoch = s.consumer.newest_epoch()
        old.send_signal(signal.SIGSTOP)
        try:
            await until(lambda: s.consumer.newest_epoch() > old_epoch, 10, "a new leader's updates")
            new_epoch = s.consumer.newest_epoch()
            # Watch every command Redis runs while the old leader wakes up.
            monitor = connect_redis(s.redis.url)
            commands: list[str] = []
            watching = asyncio.Event()

            async def watch() -> None:
                async with monitor.monitor() as m:
                    watching.set()
                    while True:
                        info: dict[str, Any] = await m.next_command()
                        commands.append(str(info.get("command", "")))

            watcher = asyncio.create_task(watch())
            await until(watching.is_set, 5, "MONITOR running")
        finally:
            old.send_signal(signal.SIGCONT)
        try:
            await until(
                lambda: f"stepped down (epoch {old_epoch})" in s.cluster.log(old),
                10,
                "the old leader to step down",
            )
            await s.flowing(40, new_epoch)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await monitor.aclose()
        log = s.cluster.log(old)
        assert old.poll() is None, "the old leader crashed"
        assert (await s.cluster.leader(s.redis.url)) is not old
        # Redis refused whatever the old leader tried to publish after its lease ended ...
        old_token = next(
            line.split("elected leader: ")[1].split()[0]
            for line in log.splitlines()
            if "elected leader: " in line
        )
        attempts = [  # the publish script names the snapshot hash; renews do not
            c for c in commands if old_token in c and "prices:latest" in c
        ]
        refused = "publish refused, the lease is gone" in log
        assert refused or not attempts, "the old leader published and was not told it lost"
        # ... so nothing of the old epoch reached the consumer after the new epoch began,
        first_new = s.consumer.first_of(new_epoch)
        assert first_new is not None
        later = s.consumer.seen[s.consumer.seen.index(first_new) :]
        assert all(x.update.epoch != old_epoch for x in later)
        # not even to be dropped by the consumer's epoch filter.
        assert s.consumer.bus.epoch_drops == 0
        print(f"old leader: {len(attempts)} publish attempts after SIGCONT, refused={refused}")


async def test_redis_restart_everyone_recovers(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis killed and restarted on its port: ingest and the consumer recover, with a resync."""
    async with system(tmp_path, redis_server, extra=FAST) as s:
        await s.leader()
        await s.flowing(20)
        old_epoch = s.consumer.newest_epoch()
        gaps_before = len(s.consumer.gaps)
        resyncs_before = len(s.consumer.resyncs)
        redis_server.kill()
        redis_server.start()
        await until(
            lambda: any(r == "redis reconnect" for _, r in s.consumer.gaps[gaps_before:]),
            15,
            "the consumer's resync after the restart",
        )
        await until(lambda: len(s.consumer.resyncs) > resyncs_before, 10, "the snapshot re-read")
        await until(lambda: s.consumer.newest_epoch() > old_epoch, 15, "updates after restart")
        await s.flowing(20, s.consumer.newest_epoch())
        assert len(s.cluster.alive()) == 3, "an ingest process died"
        assert s.consumer.bus.reconnects >= 1
        await s.leader()
        assert s.sim.connections == 1


async def test_redis_absent_at_start(tmp_path: Path) -> None:
    """No Redis at start: ingest waits with a clear log line and begins when Redis appears."""
    redis = RedisServer(tmp_path)  # port chosen, not started
    try:
        async with system(tmp_path, redis, n=1, extra=FAST) as s:
            (p,) = s.cluster.procs
            where = f"redis unreachable at redis://127.0.0.1:{redis.port}/0"
            await until(lambda: where in s.cluster.log(p), 10, "the unreachable-Redis log line")
            assert p.poll() is None
            assert s.sim.connections == 0, "connected to the exchange with no lease"
            redis.start()
            await s.flowing(20, timeout=20)
            assert p.poll() is None
            assert "elected leader" in s.cluster.log(p)
            assert s.max_connections == 1
    finally:
        redis.kill()


def test_memory_bus_is_refused(tmp_path: Path) -> None:
    """`pricectl ingest` with memory:// exits 2 and says what to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICECTL_")}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pricectl.cli", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 2
    assert "ingest needs a shared bus: set bus.url / REDIS_URL to redis://" in result.stderr


async def test_sigterm_with_redis_frozen_exits_within_five_seconds(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGTERM while Redis is frozen (the release can never be answered): the process
    still exits within 5 s, and if its graceful stop could not finish it says why."""
    async with system(tmp_path, redis_server, n=1) as s:
        (p,) = s.cluster.procs
        await s.leader()
        await s.flowing(10)
        s.redis.freeze()
        try:
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            code = await _exited(p, 6)
            took = time.monotonic() - t0
        finally:
            s.redis.thaw()
        assert took < 5.0 + 0.5 * UNIT, f"exit took {took:.2f}s"
        log = s.cluster.log(p)
        assert code == 0 or (code == 1 and "graceful stop did not finish within 5s" in log), log
        print(f"exit {code} after {took:.2f}s")


async def test_an_unresolvable_exchange_is_said_once_with_the_way_out(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """ingest against an exchange host that does not resolve writes one plain line saying
    so and naming `pricectl simulate`, and stays a candidate (it still wins the lease)."""
    env = child_env(
        {
            "REDIS_URL": redis_server.url,
            "BINANCE_WS_URL": "wss://stream.binance.invalid:9443",
            "BINANCE_REST_URL": "https://api.binance.invalid",
            "PRICECTL_PAIRS": ",".join(PAIRS),
            "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
            "LOG_LEVEL": "info",
        }
    )
    cluster = Cluster(tmp_path, env)
    try:
        (p,) = cluster.start(1)
        hint = (
            "cannot resolve stream.binance.invalid: no network? `pricectl simulate` runs "
            "a local exchange"
        )
        await until(lambda: hint in cluster.log(p), 20, "the offline hint")
        await until(lambda: "elected leader" in cluster.log(p), 20, "the lease won anyway")
        assert p.poll() is None
        assert cluster.log(p).count("no network?") == 1
    finally:
        cluster.kill_all()


async def test_status_of_the_leader_and_of_a_standby(redis_server: RedisServer) -> None:
    """Two candidates in one process: the leader's status carries its relay and says what
    it published, the standby's what it followed; both as the periodic status line too."""
    sim = Simulator(ticker_interval=0.1)
    await sim.start()
    settings = replace(sim_settings(sim), bus=BusSettings(url=redis_server.url))
    candidates = [Ingest(settings), Ingest(settings)]
    stop = asyncio.Event()
    runs = [asyncio.create_task(c.run(stop)) for c in candidates]
    try:

        def settled() -> bool:
            by_role = {c.status().role: c.status() for c in candidates}
            lead, follow = by_role.get("leader"), by_role.get("standby")
            return (
                lead is not None
                and follow is not None
                and lead.relay is not None
                and lead.relay.published_by_source["ws"] > 2
                and follow.followed > 2
            )

        await until(settled, 10, "one leader live from the WebSocket, one standby following")
        leader, standby = sorted(candidates, key=lambda c: c.status().role)
        st = leader.status()
        assert st.leader.is_leader and st.relay is not None and st.relay.published > 0
        assert st.relay.epoch == st.leader.epoch and st.relay.ws.connected
        assert to_json(st)["relay"]["ws"]["breaker"] == "closed"
        line = leader.status_line()
        assert line.startswith(f"ingest status: leader epoch {st.leader.epoch} since "), line
        assert " published " in line, line
        assert "'ws': " in line and "renew failures 0" in line, line
        sb = standby.status()
        assert not sb.leader.is_leader and sb.relay is None and sb.bus_connected
        assert sb.followed_epoch == st.leader.epoch
        assert standby.status_line().startswith(
            f"ingest status: standby, leader epoch {st.leader.epoch}, "
        )
        assert standby.status_line().endswith(" resyncs, redis connected")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runs), 15 * UNIT)
        await sim.stop()
