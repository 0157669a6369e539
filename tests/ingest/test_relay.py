"""The relay end to end: simulator -> WS/REST/cache cascade -> stamped, fenced publish -> bus."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pricectl.bus.base import Fence, Update
from pricectl.bus.memory import MemoryBus
from pricectl.config import ResilienceSettings, Settings
from pricectl.core.backoff import BackoffPolicy
from pricectl.core.breaker import BreakerPolicy
from pricectl.core.fallback import FallbackPolicy
from pricectl.core.heartbeat import HeartbeatPolicy
from pricectl.core.pairs import PAIR_RE, PairMap, bundled_symbols
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import FencedError, UnknownPairError
from pricectl.ingest.demand import run_embedded_on_demand
from pricectl.ingest.relay import Relay
from pricectl.loadtest.spawn import free_port
from pricectl.simulator import Simulator
from tests.recordings import RECORDING_PAIRS
from tests.waiting import UNIT, until

pytestmark = pytest.mark.timeout(60 * UNIT)

REAL = Path(__file__).resolve().parent.parent / "data" / "binance" / "real"
StartSim = Callable[..., Awaitable[Simulator]]

BACKOFF = BackoffPolicy(initial=0.05, max=0.2, multiplier=2.0, reset_after=5.0)
BREAKER = BreakerPolicy(failure_threshold=3, cooldown=0.5)


def fast_settings(
    ws_url: str,
    rest_url: str,
    stream: str = "ticker",
    pairs: tuple[str, ...] = ("BTC/USD", "ETH/USD"),
    **ex: Any,
) -> Settings:
    """Settings for tests: the simulator's URLs and resilience timings in tenths of seconds."""
    base = Settings()
    exchange = replace(
        base.exchange,
        ws_url=ws_url,
        rest_url=rest_url,
        stream=stream,  # type: ignore[arg-type]
        connect_timeout=2.0,
        rest_timeout=2.0,
        **ex,
    )
    res = ResilienceSettings(
        backoff=BACKOFF,
        breaker=BREAKER,
        heartbeat=HeartbeatPolicy(idle_timeout=0.6, stale_after=1.0),
        fallback=FallbackPolicy(rest_poll_interval=0.2, rest_failures_before_cache=3),
    )
    return replace(base, exchange=exchange, pairs=pairs, resilience=res)


def sim_settings(sim: Simulator, **kw: Any) -> Settings:
    return fast_settings(sim.ws_url, sim.rest_url, **kw)


def relay_for(settings: Settings, bus: MemoryBus, fence: Fence) -> Relay:
    """The relay as ingest builds it from the config's sections."""
    return Relay(
        bus,
        fence,
        exchange=settings.exchange,
        pair_map=settings.pair_map,
        resilience=settings.resilience,
    )


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators (config overrides as keywords; ``port=`` to pick one); stopped after."""
    started: list[Simulator] = []

    async def start(port: int = 0, **overrides: Any) -> Simulator:
        overrides.setdefault("ticker_interval", 0.1)
        simulator = Simulator(**overrides)
        await simulator.start("127.0.0.1", port)
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        await simulator.stop()


class Recorder:
    """A bus consumer that records every update per pair, in arrival order."""

    def __init__(self, bus: MemoryBus, pairs: tuple[str, ...]) -> None:
        self.by_pair: dict[str, list[PriceUpdate]] = defaultdict(list)
        self.all: list[PriceUpdate] = []
        self._sub = bus.subscribe(pairs)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self._sub:
            if isinstance(event, Update):
                self.all.append(event.update)
                self.by_pair[event.update.pair].append(event.update)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def count(self, source: str | None = None) -> int:
        return sum(1 for u in self.all if source is None or u.source == source)

    def last(self, pair: str) -> PriceUpdate | None:
        updates = self.by_pair.get(pair)
        return updates[-1] if updates else None


class Harness:
    """A memory bus, a recorder on it and a relay running in a task."""

    def __init__(self, settings: Settings, watch: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.watch = tuple(dict.fromkeys(settings.pair_map.pairs + watch))
        self.bus = MemoryBus()
        self.fence = self.bus.local_fence()
        self.relay = relay_for(settings, self.bus, self.fence)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.rec = Recorder(self.bus, self.watch)
        self.task = asyncio.get_running_loop().create_task(self.relay.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, FencedError):
            pass
        await self.rec.close()


def assert_seq_contiguous(rec: Recorder, epoch: int) -> None:
    """Per pair, seq runs 1, 2, 3, ... in the fence's epoch; gseq only grows."""
    for pair, updates in rec.by_pair.items():
        seqs = [u.seq for u in updates]
        assert seqs == list(range(1, len(seqs) + 1)), f"{pair}: seq not contiguous"
        assert {u.epoch for u in updates} == {epoch}
    gseqs = [u.gseq for u in rec.all]
    assert gseqs == sorted(gseqs) and len(set(gseqs)) == len(gseqs)


def assert_trades_consecutive(updates: list[PriceUpdate]) -> None:
    """Live trade ids go up by exactly one: nothing lost, nothing twice."""
    keys = [u.order_key for u in updates if u.source == "ws"]
    assert keys, "no ws updates"
    gaps = [(a, b) for a, b in itertools.pairwise(keys) if b != a + 1]
    assert not gaps, f"gaps or duplicates in trade ids: {gaps[:5]}"


async def test_ws_updates_are_stamped_and_published(start_sim: StartSim):
    """Live ticks reach the bus as source ws, stamped (epoch, seq per pair, gseq)."""
    sim = await start_sim()
    async with Harness(sim_settings(sim)) as h:
        await until(
            lambda: all(
                (u := h.rec.last(p)) is not None and u.source == "ws" for p in h.relay.pairs
            ),
            10,
            "both pairs live",
        )
        await until(lambda: h.rec.count("ws") >= 6, 5, "more live ticks")
        status = h.relay.status()
    assert_seq_contiguous(h.rec, h.fence.epoch)
    assert status.ws.connected is True and status.ws.breaker == "closed"
    assert {p.source for p in status.pairs.values()} == {"ws"}
    assert status.epoch == h.fence.epoch and status.published >= 6
    assert all(not u.stale for u in h.rec.all)


async def test_age_replacement_through_the_relay_has_no_gap(start_sim: StartSim):
    """Make-before-break under the relay: seq contiguous and trade ids consecutive per pair."""
    sim = await start_sim(trade_rate=40.0)
    settings = sim_settings(sim, stream="aggTrade", max_connection_age=0.8)
    async with Harness(settings) as h:
        await until(lambda: h.relay.ws.reconnects >= 2, 10, "two replacements")
        count = h.rec.count()
        await until(lambda: h.rec.count() >= count + 10, 5, "trades after the switch")
    assert_seq_contiguous(h.rec, h.fence.epoch)
    for pair in settings.pair_map.pairs:
        assert_trades_consecutive(h.rec.by_pair[pair])


async def test_server_shutdown_through_the_relay_has_no_gap(start_sim: StartSim):
    """serverShutdown is crossed with seq contiguous and trade ids consecutive per pair."""
    sim = await start_sim(trade_rate=40.0)
    settings = sim_settings(sim, stream="trade")
    async with Harness(settings) as h:
        await until(lambda: h.rec.count("ws") >= 20, 10, "live trades")
        sim.server_shutdown(0.5)
        await until(lambda: h.relay.ws.reconnects == 1, 5, "replacement")
        count = h.rec.count()
        await until(lambda: h.rec.count() >= count + 20, 5, "trades after the switch")
    assert_seq_contiguous(h.rec, h.fence.epoch)
    for pair in settings.pair_map.pairs:
        assert_trades_consecutive(h.rec.by_pair[pair])


async def test_refused_connections_fall_back_to_rest_then_back_to_ws(start_sim: StartSim):
    """Refused WS: REST takes over the moment the socket drops (not only once the breaker
    opens); the breaker opens; live WS returns when allowed."""
    sim = await start_sim()
    async with Harness(sim_settings(sim)) as h:
        await until(lambda: h.relay.ws.connected and h.rec.count("ws") >= 2, 10, "live")
        sim.set_fault(refuse=True, drop=True)
        cut = time.monotonic()
        n = len(h.rec.all)
        await until(lambda: any(u.source == "rest" for u in h.rec.all[n:]), 5, "REST updates")
        took = time.monotonic() - cut
        rest = [u for u in h.rec.all[n:] if u.source == "rest"]
        assert {u.pair for u in rest} <= set(h.relay.pairs) and not any(u.stale for u in rest)
        # One REST round trip after the drop, without waiting for the breaker.
        assert took < 1.0 * UNIT
        # Three failed attempts, backoff capped at 0.2 s each: the breaker opens.
        await until(
            lambda: h.relay.status().ws.breaker in ("open", "half_open"),
            3 * BACKOFF.max + 1.0,
            "the breaker to open",
        )
        sim.set_fault(refuse=False)
        n = len(h.rec.all)
        await until(
            lambda: {u.pair for u in h.rec.all[n:] if u.source == "ws"} == set(h.relay.pairs),
            5,
            "live WS for both pairs again",
        )
        assert h.relay.status().ws.breaker == "closed"
        await until(
            lambda: {p.source for p in h.relay.status().pairs.values()} == {"ws"},
            2,
            "status back to ws",
        )
    assert_seq_contiguous(h.rec, h.fence.epoch)


async def test_rest_failing_too_serves_cache_marked_stale(start_sim: StartSim):
    """WS refused and REST answering 500: the last values come back as cache, stale."""
    sim = await start_sim()
    async with Harness(sim_settings(sim)) as h:
        await until(lambda: h.rec.count("ws") >= 2, 10, "live")
        sim.set_fault(refuse=True, drop=True, rest500=True)
        n = len(h.rec.all)
        await until(
            lambda: {u.pair for u in h.rec.all[n:] if u.source == "cache"} == set(h.relay.pairs),
            5,
            "cache updates for both pairs",
        )
        cached = [u for u in h.rec.all[n:] if u.source == "cache"]
        assert all(u.stale for u in cached)
        status = h.relay.status()
        assert {p.source for p in status.pairs.values()} == {"cache"}
        assert all(p.stale for p in status.pairs.values())
        for pair, updates in h.rec.by_pair.items():
            for i, u in enumerate(updates):
                if u.source == "cache":
                    prev = next(v for v in reversed(updates[:i]) if v.source != "cache")
                    assert (u.price, u.event_ms) == (prev.price, prev.event_ms), pair
        sim.set_fault(clear=True)
        n = len(h.rec.all)
        await until(
            lambda: {u.pair for u in h.rec.all[n:] if u.source == "ws"} == set(h.relay.pairs),
            5,
            "live again",
        )
        assert not any(u.stale for u in h.rec.all[n:] if u.source == "ws")
    assert_seq_contiguous(h.rec, h.fence.epoch)


async def test_cache_repeats_the_last_published_price(start_sim: StartSim):
    """A cache update carries exactly the price of the pair's last live update."""
    sim = await start_sim()
    async with Harness(sim_settings(sim, pairs=("BTC/USD",))) as h:
        await until(lambda: h.rec.count("ws") >= 2, 10, "live")
        sim.set_fault(refuse=True, drop=True, rest500=True)
        await until(lambda: h.rec.count("cache") >= 2, 5, "cache updates")
        before_cache = [u for u in h.rec.all if u.source != "cache"][-1]
        cached = [u for u in h.rec.all if u.source == "cache"]
        assert {u.price for u in cached} == {before_cache.price}
        assert {u.event_ms for u in cached} == {before_cache.event_ms}


async def test_fenced_publish_stops_the_relay(start_sim: StartSim):
    """When the lease moves on, the next publish is refused and run() raises FencedError."""
    sim = await start_sim()
    async with Harness(sim_settings(sim)) as h:
        await until(lambda: h.rec.count() >= 2, 10, "updates")
        h.bus.local_fence()  # someone else holds the lease now
        assert h.task is not None
        task = h.task
        await until(task.done, 5, "the relay to stop")
        assert isinstance(task.exception(), FencedError)


async def test_the_cascade_takes_stale_after_from_the_heartbeat_section():
    """The relay's cascade: stale_after from resilience.heartbeat, its pace from fallback."""
    settings = fast_settings("ws://127.0.0.1:9", "http://127.0.0.1:9")
    bus = MemoryBus()
    relay = relay_for(settings, bus, bus.local_fence())
    try:
        assert relay.cascade.stale_after == settings.resilience.heartbeat.stale_after == 1.0
        assert relay.cascade.policy == settings.resilience.fallback
    finally:
        await relay.close()


async def test_publish_rest_snapshot_on_takeover(start_sim: StartSim):
    """A takeover publishes one REST update per pair, seq 1, before going live."""
    sim = await start_sim()
    bus = MemoryBus()
    relay = relay_for(sim_settings(sim), bus, bus.local_fence())
    rec = Recorder(bus, relay.pairs)
    try:
        assert await relay.publish_rest_snapshot() == 2
        await until(lambda: rec.count() == 2, 2, "snapshot delivered")
        assert {(u.pair, u.source, u.seq) for u in rec.all} == {
            ("BTC/USD", "rest", 1),
            ("ETH/USD", "rest", 1),
        }
        snap = await bus.snapshot(relay.pairs)
        assert set(snap) == set(relay.pairs)
    finally:
        await relay.close()
        await rec.close()


async def test_run_embedded_validates_snapshots_and_goes_live(start_sim: StartSim):
    """Embedded ingest: REST snapshot first, then live WS; the relay is handed to serve."""
    sim = await start_sim()
    bus = MemoryBus()
    settings = sim_settings(sim)
    rec = Recorder(bus, settings.pair_map.pairs)
    got: list[Relay] = []
    task = asyncio.get_running_loop().create_task(
        run_embedded_on_demand(settings, bus, on_relay=got.append)
    )
    try:
        await until(lambda: rec.count("ws") >= 2, 10, "live updates")
        assert [u.source for u in rec.all[:2]] == ["rest", "rest"]
        assert len(got) == 1 and got[0].status().ws.connected
        assert sim.stats.rest_requests >= 2  # exchangeInfo + snapshot
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await rec.close()


async def test_run_embedded_unknown_pair_stops_startup(start_sim: StartSim):
    """An unknown pair ends embedded ingest with an error naming the pair and symbol."""
    sim = await start_sim()
    settings = sim_settings(sim, pairs=("BTC/USD", "NOPE/USD"))
    with pytest.raises(UnknownPairError, match=r"NOPE/USD.*NOPEUSDT"):
        await asyncio.wait_for(run_embedded_on_demand(settings, MemoryBus()), 10 * UNIT)


async def test_run_embedded_survives_an_unreachable_exchange(start_sim: StartSim):
    """With no exchange at start, embedded ingest keeps retrying and goes live when it appears."""
    port = free_port()
    settings = fast_settings(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    bus = MemoryBus()
    rec = Recorder(bus, settings.pair_map.pairs)
    got: list[Relay] = []
    task = asyncio.get_running_loop().create_task(
        run_embedded_on_demand(settings, bus, on_relay=got.append)
    )
    try:
        await until(lambda: got and got[0].ws.connect_attempts >= 3, 10, "connect retries")
        assert not task.done()
        assert not got[0].status().ws.connected
        sim = await start_sim(port=port)
        await until(lambda: rec.count("ws") >= 2, 10, "live updates once the exchange is up")
        await until(lambda: sim.stats.rest_requests >= 1, 10, "exchangeInfo checked in time")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await rec.close()


async def test_replay_of_a_real_recording_goes_end_to_end(start_sim: StartSim):
    """The 2021-04-05 capture replayed by the simulator reaches the bus, prices untouched."""
    recording = REAL / "cryptofeed-binance-spot-2021-04-05.jsonl"
    pairs = RECORDING_PAIRS
    sim = await start_sim(replay=str(recording), speed=0.0)
    settings = sim_settings(sim, stream="bookTicker", pairs=pairs)
    settings = replace(
        settings,
        resilience=replace(
            settings.resilience,
            heartbeat=HeartbeatPolicy(idle_timeout=30.0, stale_after=30.0),
        ),
    )
    last_frame: dict[str, dict[str, Any]] = {}
    for line in recording.read_text().splitlines():
        data = json.loads(line)["data"]
        if "e" not in data:
            last_frame[data["s"]] = data
    async with Harness(settings) as h:
        await until(lambda: sim.replay_done, 20, "the replay to finish")
        ws = h.relay.ws
        await until(
            lambda: h.rec.count("ws") == ws.parser.counts["parsed:bookTicker"] - ws.duplicates,
            10,
            "every replayed frame on the bus",
        )
    assert ws.parser.counts["parsed:bookTicker"] == 1651
    assert h.rec.count("ws") >= 1600
    for symbol, data in last_frame.items():
        pair = settings.pair_map.pair_for(symbol)
        assert pair is not None
        live = [u for u in h.rec.by_pair[pair] if u.source == "ws"]
        assert (live[-1].bid, live[-1].ask, live[-1].order_key) == (data["b"], data["a"], data["u"])
    assert_seq_contiguous(h.rec, h.fence.epoch)


async def test_ws_updates_are_judged_on_the_exchanges_clock(start_sim: StartSim):
    """An exchange whose clock is 60 s behind ours: its events are live, judged on its own
    clock (sampled from /api/v3/time), not on ours."""
    sim = await start_sim()
    sim.set_fault(clock_skew_ms=-60_000)
    async with Harness(sim_settings(sim)) as h:
        await until(lambda: h.relay.exchange_clock.known, 5, "a sample of the exchange's clock")
        assert abs(h.relay.exchange_clock.offset_ms + 60_000) < 1_000
        await until(lambda: h.rec.count("ws") >= 6, 5, "live ws updates")
        ws = [u for u in h.rec.all if u.source == "ws"]
        assert not any(u.stale for u in ws) and h.relay.late_updates == 0


async def test_ws_updates_older_than_stale_after_are_not_live(start_sim: StartSim):
    """Event times behind the exchange's own clock by more than stale_after (frames that
    waited in a buffer): published stale, and they do not keep the pair on live ws (REST
    vouches for it instead)."""
    sim = await start_sim()
    sim.set_fault(clock_skew_ms=-60_000, feed_delay_ms=1_500)  # stale_after is 1 s here
    async with Harness(sim_settings(sim)) as h:
        await until(lambda: h.relay.late_updates >= 4, 5, "late updates")
        late = [u for u in h.rec.all if u.source == "ws"]
        assert late and all(u.stale for u in late)
        await until(
            lambda: all(p.source != "ws" for p in h.relay.status().pairs.values()),
            3,
            "the pairs off live ws",
        )


def pair_map(settings: Settings, *pairs: str) -> PairMap:
    return PairMap.build(pairs, settings.quote_aliases)


def sim_streams(sim: Simulator) -> set[str]:
    return {s for conn in sim.state()["subscriptions"] for s in conn}


async def test_set_pairs_adds_a_pair_with_a_rest_snapshot_first(start_sim: StartSim):
    """A pair added at run time: its REST snapshot is published first, then it goes live
    on the WebSocket by SUBSCRIBE (no new connection); the same call again changes nothing."""
    sim = await start_sim()
    settings = sim_settings(sim, pairs=("BTC/USD",))
    async with Harness(settings, watch=("SOL/USD",)) as h:
        await until(lambda: h.rec.count("ws") >= 2, 10, "BTC live")
        assert h.relay.active_pairs == ("BTC/USD",)
        h.relay.set_pairs(pair_map(settings, "BTC/USD", "SOL/USD"))
        await until(lambda: any(u.source == "ws" for u in h.rec.by_pair["SOL/USD"]), 5, "SOL live")
        first = h.rec.by_pair["SOL/USD"][0]
        assert (first.source, first.seq, first.stale) == ("rest", 1, False)
        assert h.relay.pairs == ("BTC/USD", "SOL/USD")
        assert h.relay.active_pairs == ("BTC/USD", "SOL/USD")
        assert sim_streams(sim) == {"btcusdt@ticker", "solusdt@ticker"}
        assert sim.stats.total_connects == 1
        status = h.relay.status()
        assert status.pairs["SOL/USD"].source == "ws"
        assert status.pairs_active == 2 and status.pairs_added == 1
        assert status.time_to_first_update_ms.count == 1
        assert status.time_to_live_ms.count == 1
        first_ms, live_ms = status.time_to_first_update_ms.p50, status.time_to_live_ms.p50
        assert first_ms is not None and live_ms is not None and 0 <= first_ms <= live_ms
        controls = sim.stats.control_messages
        h.relay.set_pairs(pair_map(settings, "BTC/USD", "SOL/USD"))
        n = h.rec.count("ws")
        await until(lambda: h.rec.count("ws") >= n + 4, 5, "more ticks")
        assert sim.stats.control_messages == controls
    assert_seq_contiguous(h.rec, h.fence.epoch)


async def test_set_pairs_removes_a_pair_keeping_its_last_value_stale(start_sim: StartSim):
    """A pair removed: UNSUBSCRIBEd, out of the cascade, its last value published once more
    marked stale (source cache) and nothing after; the other pair is undisturbed."""
    sim = await start_sim()
    settings = sim_settings(sim)
    async with Harness(settings) as h:
        await until(
            lambda: all((u := h.rec.last(p)) and u.source == "ws" for p in h.relay.pairs),
            10,
            "both live",
        )
        h.relay.set_pairs(pair_map(settings, "BTC/USD"))
        await until(lambda: sim_streams(sim) == {"btcusdt@ticker"}, 5, "UNSUBSCRIBE applied")
        await until(lambda: h.relay.active_pairs == ("BTC/USD",), 5, "ETH inactive")
        eth = h.rec.by_pair["ETH/USD"]
        assert eth[-1].source == "cache" and eth[-1].stale
        assert eth[-1].price == eth[-2].price and eth[-2].source == "ws"
        count, btc = len(eth), h.rec.count()
        await until(lambda: h.rec.count() >= btc + 6, 5, "BTC goes on")
        # REST polls, the cache and the WS all leave a removed pair alone.
        assert len(h.rec.by_pair["ETH/USD"]) == count
        assert h.relay.pairs == ("BTC/USD",) and "ETH/USD" not in h.relay.status().pairs
        assert all(not u.stale for u in h.rec.by_pair["BTC/USD"])
        snap = await h.bus.snapshot(["ETH/USD"])
        assert snap["ETH/USD"].stale
    assert_seq_contiguous(h.rec, h.fence.epoch)


async def test_set_pairs_before_a_takeover_snapshots_the_whole_set(start_sim: StartSim):
    """Pairs set before the term starts are in the takeover's REST snapshot and go live."""
    sim = await start_sim()
    settings = sim_settings(sim, pairs=("BTC/USD",))
    wanted = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD")
    async with Harness(settings, watch=wanted) as h:
        h.relay.set_pairs(pair_map(settings, *wanted))
        assert await h.relay.publish_rest_snapshot() == 4
        await until(
            lambda: all(any(u.source == "ws" for u in h.rec.by_pair[p]) for p in wanted),
            10,
            "every pair live",
        )
        assert [h.rec.by_pair[p][0].source for p in wanted] == ["rest"] * 4
        assert h.relay.active_pairs == wanted


def listed_pairs(settings: Settings, n: int) -> tuple[str, ...]:
    """``n`` display pairs of the bundled symbol list whose symbol the aliases map back to."""
    out: list[str] = []
    for rec in bundled_symbols():
        pair = f"{rec['baseAsset']}/{rec['quoteAsset']}"
        if not PAIR_RE.match(pair):
            continue
        if PairMap.build([pair], settings.quote_aliases).symbol_for(pair) == rec["symbol"]:
            out.append(pair)
    assert len(out) >= n
    return tuple(out[:n])


async def test_1500_pairs_spread_over_connections_within_the_limits(start_sim: StartSim):
    """1,500 pairs set at run time: REST snapshots first, then connections of at most
    streams_per_connection streams each, every pair live, and the exchange saw no control
    message over the rate, no refused URL or request, and no 1008 close."""
    sim = await start_sim(ticker_interval=1.0, all_trading=True)
    settings = sim_settings(sim, pairs=("BTC/USD",), streams_per_connection=300)
    settings = replace(
        settings,
        resilience=replace(
            settings.resilience, heartbeat=HeartbeatPolicy(idle_timeout=5.0, stale_after=5.0)
        ),
    )
    wanted = listed_pairs(settings, 1500)
    async with Harness(settings, watch=wanted) as h:
        await until(lambda: h.rec.count("ws") >= 1, 10, "BTC live")
        started = time.monotonic()
        h.relay.set_pairs(pair_map(settings, *wanted))
        await until(lambda: len(h.relay.active_pairs) == 1500, 30, "every pair subscribed")
        subscribed_after = time.monotonic() - started
        await until(
            lambda: all(any(u.source == "ws" for u in h.rec.by_pair[p]) for p in wanted),
            30,
            "every pair live",
        )
        state = sim.state()
        ws = h.relay.ws.status()
    conns = state["per_connection"]
    assert len(conns) == 5 and all(c["streams"] <= 300 for c in conns)
    streams = [s for sub in state["subscriptions"] for s in sub]
    assert len(streams) == len(set(streams)) == 1500
    assert state["cut_rate_limit"] == 0 and state["peak_messages_per_s"] <= 4
    assert state["control_errors"] == 0 and state["refused_urls"] == 0
    assert all(c["path"] == "/stream" for c in conns)
    # Every pair's first update is its REST snapshot.
    assert all(h.rec.by_pair[p][0].source == "rest" for p in wanted if p != "BTC/USD")
    assert ws.streams_subscribed == 1500 and len(ws.connections) == 5
    assert ws.control_errors == 0 and h.relay.ws.pongs_over_limit == 0
    assert subscribed_after < 20 * UNIT


async def test_one_connection_lost_takes_only_its_pairs_off_ws(start_sim: StartSim):
    """Two connections of one stream each: when one is cut, its pair goes to REST at once
    while the other stays live, and it comes back on its own connection."""
    sim = await start_sim()
    settings = sim_settings(sim, streams_per_connection=1)
    # A breaker that stays closed: the refused reconnects must not stop BTC's live feed.
    settings = replace(
        settings,
        resilience=replace(
            settings.resilience, breaker=BreakerPolicy(failure_threshold=1000, cooldown=0.5)
        ),
    )
    async with Harness(settings) as h:
        await until(
            lambda: all((u := h.rec.last(p)) and u.source == "ws" for p in h.relay.pairs),
            10,
            "both live",
        )
        (eth,) = [c for c in h.relay.ws.connections() if c.shard != 0]
        # Cut the socket of ETH's connection under the client, as a network failure would,
        # and keep it from coming back for a while.
        sim.set_fault(refuse=True)
        shard = h.relay.ws._shards[eth.shard]
        assert shard.active is not None
        shard.active.ws.transport.abort()
        n = len(h.rec.all)
        await until(
            lambda: any(u.pair == "ETH/USD" and u.source == "rest" for u in h.rec.all[n:]),
            5,
            "ETH from REST",
        )
        btc = len(h.rec.by_pair["BTC/USD"])
        await until(lambda: len(h.rec.by_pair["BTC/USD"]) >= btc + 3, 5, "BTC goes on")
        assert not any(u.pair == "BTC/USD" and u.source != "ws" for u in h.rec.all[n:])
        sim.set_fault(refuse=False)
        await until(
            lambda: any(u.pair == "ETH/USD" and u.source == "ws" for u in h.rec.all[n:]),
            5,
            "ETH live again",
        )
        assert h.relay.ws.reconnects == 1 and sim.stats.refused >= 1
        assert {frozenset(s) for s in sim.state()["subscriptions"]} == {
            frozenset({"btcusdt@ticker"}),
            frozenset({"ethusdt@ticker"}),
        }
    assert_seq_contiguous(h.rec, h.fence.epoch)
