"""Ingest: the exchange feeds, the per-pair source cascade, stamping and the fenced publish.

One :class:`Relay` runs where the exchange connection lives: in ``pricectl serve`` with
``memory://`` (:func:`pricectl.ingest.demand.run_embedded_on_demand`), or in the elected
leader of ``pricectl ingest``.

Per pair, the source is decided by :class:`~pricectl.core.fallback.Cascade`
(docs/architecture.md, "The resilience core"):

1. ``ws``: the live WebSocket (:class:`~pricectl.exchange.binance_ws.BinanceWS`) while
   it is connected with its breaker closed and the pair had a WS update within
   ``heartbeat.stale_after``;
2. ``rest``: from the moment the WebSocket is down (or the pair went quiet on it), REST
   polling (:class:`~pricectl.exchange.binance_rest.BinanceRest`) every
   ``fallback.rest_poll_interval``, within the weight budget;
3. ``cache``: when REST fails too (``fallback.rest_failures_before_cache`` polls in a
   row), or the pair has had nothing fresh for ``stale_after`` whatever REST is doing,
   the last value re-published with ``source: cache, stale: true``.

Two checks keep old data from looking live. Before every publish the relay asks its
``may_publish`` guard (the lease: a leader whose last renew is older than
``renew_deadline`` must not publish: docs/architecture.md, "The lease"); a refusal ends the
term with :class:`~pricectl.errors.LeaseLost` and the batch is dropped. And a WS update
whose exchange event time is older than ``stale_after`` on the *exchange's* clock (estimated
from REST ``/api/v3/time`` every :data:`CLOCK_EVERY` seconds,
:class:`~pricectl.core.clock.ClockOffset`) is published ``stale: true`` and does not
count as fresh: frames that waited in a socket buffer are not live prices.

The first WS update of a pair brings it straight back to ``ws``. Each transition is one
log line. The WebSocket side is several connections (``exchange.streams_per_connection``
streams each): one that drops takes only its own pairs off ``ws`` at once.

The pairs can change at run time (:meth:`Relay.set_pairs`, synchronous; the relay
reconciles in the background): a pair added gets a REST snapshot first (requests of
:data:`REST_CHUNK` symbols, the cheapest weight per pair, within the weight budget),
published at once, then goes live by SUBSCRIBE; a pair removed leaves the cascade, is
UNSUBSCRIBEd, and its last value is published once more marked stale (``source:
cache``) so every snapshot keeps it as no longer live. :attr:`Relay.active_pairs` is
what the exchange confirmed it carries; ``status()`` gives the time from
``set_pairs`` to a pair's first update and to its first live one.

Every update leaving the relay is stamped ``(epoch, seq, gseq)``: ``epoch`` from the
fence, ``seq`` +1 per pair, ``gseq`` +1 across pairs (docs/protocol.md, "The update object"
and "The stream"). Publishes are serialised (one at a time, in stamping order) and go out in
batches, so a Redis bus can pipeline everything that arrived together. A
:class:`~pricectl.errors.FencedError` from the bus stops the relay at once and is re-raised:
the caller has lost the lease and must step down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pricectl.bus.base import Bus, Fence
from pricectl.config import ExchangeSettings, ResilienceSettings
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.clock import ClockOffset
from pricectl.core.fallback import Cascade, Source
from pricectl.core.histogram import Histogram
from pricectl.core.pairs import PairMap
from pricectl.core.stamping import Stamper
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import (
    BusError,
    FeedError,
    FencedError,
    LeaseLost,
    PricectlError,
    RateLimitedError,
)
from pricectl.exchange.binance_rest import BinanceRest, RestStatus
from pricectl.exchange.binance_ws import BinanceWS, WSStatus
from pricectl.logs import RateLimitedLog

__all__ = [
    "CLOCK_EVERY",
    "HEARTBEAT_EVERY",
    "Guard",
    "Latency",
    "PairFeed",
    "Relay",
    "RelayStatus",
    "lead",
]

log = logging.getLogger("pricectl.relay")

#: Seconds between two samples of the exchange's clock (REST ``/api/v3/time``, weight 1).
CLOCK_EVERY = 60.0

#: Seconds between two leader heartbeats on the bus (consumers tell a quiet market from
#: a dead or frozen leader by them: docs/protocol.md, "Health").
HEARTBEAT_EVERY = 1.0

#: Symbols per REST price request: Binance weighs ``ticker/24hr`` 2 for up to 20
#: symbols and 40 for up to 100, so small requests cost the least weight per pair.
REST_CHUNK = 20

#: REST price requests in flight at once (a snapshot of many new pairs).
REST_PARALLEL = 4

#: Asked before each publish: None to go ahead, or why this process must not publish.
Guard = Callable[[], str | None]


@dataclass(frozen=True)
class Latency:
    """Milliseconds over the pairs measured so far (quantiles ``None`` while empty)."""

    count: int
    p50: int | None
    p99: int | None
    max: int | None

    @classmethod
    def of(cls, h: Histogram) -> Latency:
        if not h.count:
            return cls(0, None, None, None)
        return cls(h.count, h.quantile(0.5), h.quantile(0.99), h.max)


@dataclass(frozen=True)
class PairFeed:
    """Where one pair's prices come from right now, and how old the last one is."""

    #: ``ws``, ``rest`` or ``cache`` (the fallback cascade's choice).
    source: str
    stale: bool
    #: Seconds since the pair's last update from any source (None before the first).
    age: float | None
    #: The last seq stamped for the pair in this epoch.
    seq: int


@dataclass(frozen=True)
class RelayStatus:
    """The relay at one moment (:meth:`Relay.status`): its epoch, both exchange sides,
    each pair's source, and what it published."""

    epoch: int
    ws: WSStatus
    rest: RestStatus
    pairs: Mapping[str, PairFeed]
    #: The WebSocket parser's skips (the same as ``ws.skips``).
    parser_skips: Mapping[str, int]
    published: int
    published_by_source: Mapping[str, int]
    publish_errors: int
    late_updates: int
    #: The exchange's clock minus ours, from REST ``/api/v3/time`` (None until known).
    exchange_clock_offset_ms: float | None
    #: Pairs served (the cascade's), and those the exchange confirmed on the WebSocket.
    pairs_served: int
    pairs_active: int
    #: Pairs added and removed by ``set_pairs`` this term, and added pairs whose REST
    #: snapshot could not be had (they went live without one).
    pairs_added: int
    pairs_removed: int
    snapshots_missed: int
    #: From ``set_pairs`` asking for a pair to its first published update (the REST
    #: snapshot), and to its first live WebSocket update.
    time_to_first_update_ms: Latency
    time_to_live_ms: Latency

    @property
    def state(self) -> str:
        """The upstream connection: ``connected`` or ``disconnected``."""
        return "connected" if self.ws.connected else "disconnected"


class Relay:
    """The source cascade of every pair of ``pair_map``, publishing into ``bus`` under
    ``fence``.

    ``exchange`` and ``resilience`` are those sections of the config: the WebSocket and
    REST clients read the first, and the relay uses every policy of the second (backoff
    and breaker for reconnects, heartbeat for idle connections and stale pairs, fallback
    for the cascade's pace). ``await run()`` until cancelled; :meth:`publish_rest_snapshot`
    first on a takeover; :meth:`status` for ``/api/market-data/health``.
    """

    def __init__(
        self,
        bus: Bus,
        fence: Fence,
        *,
        exchange: ExchangeSettings,
        pair_map: PairMap,
        resilience: ResilienceSettings,
        rest: BinanceRest | None = None,
        clock: Callable[[], float] = time.monotonic,
        may_publish: Guard | None = None,
    ) -> None:
        self.bus = bus
        self.fence = fence
        self._may_publish = may_publish
        #: The exchange's clock minus ours (REST ``/api/v3/time``).
        self.exchange_clock = ClockOffset()
        #: WS updates published stale because their event time was already old.
        self.late_updates = 0
        #: Updates held back because the guard refused the publish.
        self.held_back = 0
        #: True once the pairs were checked against exchangeInfo (by this term or before).
        self.validated = False
        self.resilience = resilience
        self.cascade = Cascade(
            pair_map.pairs, resilience.fallback, stale_after=resilience.heartbeat.stale_after
        )
        self._clock = clock
        self._wake = asyncio.Event()
        #: The pairs asked for by :meth:`set_pairs` (the cascade follows in the background).
        self._target = pair_map
        self._reconcile_wake = asyncio.Event()
        #: Pairs added / removed at run time, and those whose snapshot REST could not give.
        self.pairs_added = 0
        self.pairs_removed = 0
        self.snapshots_missed = 0
        #: Pairs asked for by set_pairs and not yet published / not yet live on WS: when
        #: they were asked for; and how long that took (milliseconds), for metrics.
        self._asked_at: dict[str, float] = {}
        self._awaiting_live: dict[str, float] = {}
        self.time_to_first_update = Histogram()
        self.time_to_live = Histogram()
        self.ws = BinanceWS(
            exchange,
            pair_map,
            self._on_ws_batch,
            backoff=resilience.backoff,
            breaker=resilience.breaker,
            idle_timeout=resilience.heartbeat.idle_timeout,
            on_state=self._wake.set,
        )
        self.rest = rest if rest is not None else BinanceRest(exchange, pair_map)
        self._own_rest = rest is None
        self._stamper = Stamper()
        self._last: dict[str, PriceUpdate] = {}
        self._shown: dict[str, Source] = {}
        self._publish_lock = asyncio.Lock()
        self._rlog = RateLimitedLog(log, 10.0)
        #: Updates handed to the bus, and batches the bus failed to take (not fenced).
        self.published = 0
        self.publish_errors = 0
        self.by_source: dict[str, int] = {"ws": 0, "rest": 0, "cache": 0}

    # -- the pairs -----------------------------------------------------------------------

    @property
    def pairs(self) -> tuple[str, ...]:
        """The pairs the relay serves now (the cascade's; :meth:`set_pairs` changes them)."""
        return self.cascade.pairs

    @property
    def active_pairs(self) -> tuple[str, ...]:
        """The pairs subscribed on the exchange WebSocket now."""
        return self.ws.subscribed_pairs()

    def set_pairs(self, pair_map: PairMap) -> None:
        """Serve exactly the pairs of ``pair_map`` from now on (synchronous, idempotent).

        The relay reconciles in the background while :meth:`run` runs. Pairs added get a
        REST snapshot first (fetched together, in requests of :data:`REST_CHUNK` symbols
        within the weight budget) and published, then go live on the WebSocket
        (SUBSCRIBE); from then on the cascade serves them like any other. Pairs removed
        leave the cascade, are UNSUBSCRIBEd, and their last value is published once more
        marked ``stale`` (``source: cache``), so every consumer's snapshot keeps the price
        and knows it is no longer live. Calling it again with the same pairs does nothing.
        """
        now = self._clock()
        known = self.cascade.known
        wanted = frozenset(pair_map.pairs)
        for waiting in (self._asked_at, self._awaiting_live):
            for p in [p for p in waiting if p not in wanted]:
                del waiting[p]  # asked for, then no longer: nothing to measure
        for p in pair_map.pairs:
            if p not in known and p not in self._awaiting_live:
                self._asked_at[p] = now
                self._awaiting_live[p] = now
        self._target = pair_map
        self._reconcile_wake.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Bring the cascade and the WebSocket to the last :meth:`set_pairs`."""
        target = self._target
        now = self._clock()
        added, removed = self.cascade.set_pairs(target.pairs, now)
        if not added and not removed:
            self.ws.set_pairs(target)
            return
        for p in removed:
            self._shown.pop(p, None)
            self._asked_at.pop(p, None)
            self._awaiting_live.pop(p, None)
        self.rest.pair_map = target
        self.pairs_added += len(added)
        self.pairs_removed += len(removed)
        log.info(
            "relay: pairs changed: %d added, %d removed (%d now)",
            len(added),
            len(removed),
            len(target.pairs),
        )
        if removed:
            ingest_ns = time.time_ns()
            await self._publish(
                [
                    replace(self._last[p], source="cache", stale=True, ingest_ns=ingest_ns)
                    for p in removed
                    if p in self._last
                ]
            )
        if added:
            updates, error = await self._fetch_rest(added)
            now = self._clock()
            got = set()
            for u in updates:
                if u.pair in self.cascade.known:
                    got.add(u.pair)
                    self.cascade.rest_success(u.pair, now)
            await self._publish([u for u in updates if u.pair in got])
            missed = len(added) - len(got)
            if missed:
                self.snapshots_missed += missed
                log.warning(
                    "relay: no REST snapshot for %d of %d new pairs (%s); they go live anyway",
                    missed,
                    len(added),
                    error or "not in the response",
                )
        self.ws.set_pairs(target)
        self._wake.set()

    async def _fetch_rest(self, pairs: Sequence[str]) -> tuple[list[PriceUpdate], str | None]:
        """REST prices of ``pairs`` in requests of :data:`REST_CHUNK` symbols, at most
        :data:`REST_PARALLEL` at a time; ``(updates, first error)``. A rate limit stops
        the requests not yet sent (the budget or the exchange said wait)."""
        chunks = [list(pairs[i : i + REST_CHUNK]) for i in range(0, len(pairs), REST_CHUNK)]
        out: list[PriceUpdate] = []
        errors: list[str] = []
        limited = False
        gate = asyncio.Semaphore(REST_PARALLEL)

        async def one(chunk: list[str]) -> None:
            nonlocal limited
            async with gate:
                if limited:
                    return
                try:
                    out.extend(await self.rest.fetch_prices(chunk))
                except RateLimitedError as exc:
                    limited = True
                    errors.append(str(exc))
                except FeedError as exc:
                    errors.append(str(exc))

        if len(chunks) == 1:
            await one(chunks[0])
        else:
            async with asyncio.TaskGroup() as tg:
                for chunk in chunks:
                    tg.create_task(one(chunk))
        return out, (errors[0] if errors else None)

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the WebSocket and the cascade until cancelled; re-raise FencedError at once."""
        log.info(
            "relay: starting for %d pairs (%s stream, epoch %d)",
            len(self.pairs),
            self.ws.kind,
            self.fence.epoch,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.ws.run(), name="relay-ws")
                tg.create_task(self._cascade_loop(), name="relay-cascade")
                tg.create_task(self._clock_loop(), name="relay-exchange-clock")
                tg.create_task(self._heartbeat_loop(), name="relay-heartbeat")
                tg.create_task(self._reconcile_loop(), name="relay-pairs")
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            await self.close()

    async def close(self) -> None:
        """Release what the relay owns (the REST session)."""
        if self._own_rest:
            await self.rest.close()

    def abort(self) -> None:
        """Cut the exchange connection now, from outside the relay's tasks (a term whose
        work did not stop when cancelled must not keep the upstream socket open)."""
        self.ws.abort()

    async def sample_exchange_clock(self) -> bool:
        """One ``/api/v3/time`` sample into :attr:`exchange_clock`; False if REST failed."""
        try:
            sent, server, received = await self.rest.server_time()
        except FeedError as exc:
            self._rlog.warning("clock", "relay: cannot read the exchange's clock: %s", exc)
            return False
        first = not self.exchange_clock.known
        self.exchange_clock.add(sent, server, received)
        if first:
            log.info(
                "relay: exchange clock is %+.0f ms from ours (+- %.0f ms)",
                self.exchange_clock.offset_ms,
                self.exchange_clock.error_ms or 0.0,
            )
        return True

    async def _heartbeat_loop(self) -> None:
        """Every :data:`HEARTBEAT_EVERY`: the fenced heartbeat, under the same guard as a
        publish (a leader that may not publish is not alive as a leader either)."""
        while True:
            why = self._may_publish() if self._may_publish is not None else None
            if why is not None:
                raise LeaseLost(f"renew deadline passed: {why}")
            try:
                await self.bus.heartbeat(self.fence)
            except FencedError as exc:
                log.error("relay: heartbeat refused, the lease is gone: %s", exc)
                raise
            except BusError as exc:
                self._rlog.warning("heartbeat", "relay: heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _clock_loop(self) -> None:
        while True:
            await self.sample_exchange_clock()
            await asyncio.sleep(CLOCK_EVERY)

    async def publish_rest_snapshot(self) -> int:
        """Fetch every pair from REST and publish it (a takeover, or start-up); the count.

        A failing REST is logged and skipped (the live feed follows anyway); a
        FencedError propagates. Pairs set by :meth:`set_pairs` before are included: a
        new leader takes the whole set at once.
        """
        self.cascade.set_pairs(self._target.pairs, self._clock())
        self.rest.pair_map = self._target
        self.ws.set_pairs(self._target)
        updates, error = await self._fetch_rest(self.pairs)
        if error is not None:
            log.warning("relay: REST snapshot failed (%s); going live without it", error)
        now = self._clock()
        updates = [u for u in updates if u.pair in self.cascade.known]
        if not updates:
            return 0
        for u in updates:
            self.cascade.rest_success(u.pair, now)
        await self._publish(updates)
        log.info("relay: published a REST snapshot of %d pairs", len(updates))
        return len(updates)

    def seed(self, updates: Iterable[PriceUpdate]) -> None:
        """Remember last values from elsewhere (a standby's warm bus snapshot) so the cache
        stage has a price to re-publish, marked stale, if both WS and REST fail right after
        a takeover. Values the relay already has win."""
        for u in updates:
            if u.pair in self.cascade.known:
                self._last.setdefault(u.pair, u)

    async def _cascade_loop(self) -> None:
        cascade = self.cascade
        while True:
            self._wake.clear()
            now = self._clock()
            cascade.ws_state(self.ws.healthy, now, self.ws.down_pairs())
            self._note_sources(now)
            due = cascade.rest_due(now)
            if due:
                await self._poll_rest(due)
            now = self._clock()
            cached = cascade.cache_due(now)
            if cached:
                await self._publish_cache(cached)
            now = self._clock()
            self._note_sources(now)
            await self._sleep_until(cascade.next_due(now))

    async def _sleep_until(self, at: float) -> None:
        try:
            async with asyncio.timeout(max(0.0, at - self._clock())):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- the three sources ---------------------------------------------------------------

    async def _on_ws_batch(self, updates: list[PriceUpdate]) -> None:
        now = self._clock()
        self.cascade.ws_state(self.ws.healthy, now, self.ws.down_pairs())
        known = self.cascade.known
        limit_ms = self.cascade.stale_after * 1000.0
        wall_ms = time.time_ns() / 1e6
        offset = self.exchange_clock
        batch: list[PriceUpdate] = []
        for u in updates:
            if u.pair not in known:
                continue
            if u.event_ms and offset.age_ms(u.event_ms, wall_ms) >= limit_ms:
                self.late_updates += 1
                self._rlog.warning(
                    "late",
                    "relay: %s: WS update %.1fs old on the exchange's clock; published stale",
                    u.pair,
                    offset.age_ms(u.event_ms, wall_ms) / 1000.0,
                )
                batch.append(replace(u, stale=True))
                continue
            self.cascade.ws_update(u.pair, now)
            batch.append(u)
            if self._awaiting_live:
                asked = self._awaiting_live.pop(u.pair, None)
                if asked is not None:
                    self.time_to_live.record(round((now - asked) * 1000))
        # Only these pairs can have moved (to ws); the cascade loop looks at the rest.
        self._note_sources(now, dict.fromkeys(u.pair for u in batch))
        await self._publish(batch)

    async def _poll_rest(self, pairs: list[str]) -> None:
        started = self._clock()
        if len(pairs) <= REST_CHUNK:
            try:
                updates = await self.rest.fetch_prices(pairs)
            except RateLimitedError as exc:
                self.cascade.rest_failure(started, retry_after=exc.retry_after)
                self._rlog.warning("rest-limit", "relay: REST polling paused: %s", exc)
                return
            except FeedError as exc:
                self.cascade.rest_failure(started)
                self._rlog.warning(
                    "rest-fail", "relay: REST poll of %d pairs failed: %s", len(pairs), exc
                )
                return
        else:
            updates, error = await self._fetch_rest(pairs)
            if error is not None and not updates:
                self.cascade.rest_failure(started)
                self._rlog.warning(
                    "rest-fail", "relay: REST poll of %d pairs failed: %s", len(pairs), error
                )
                return
        now = self._clock()
        if not updates:
            self.cascade.rest_failure(started)
            return
        # A pair that went back to WS while the request was out keeps its live price, and
        # a pair removed meanwhile is not published.
        known = self.cascade.known
        fresh = [
            u
            for u in updates
            if u.pair in known and self.cascade.source(u.pair, now) is not Source.WS
        ]
        for u in fresh:
            self.cascade.rest_success(u.pair, now)
        await self._publish(fresh)

    async def _publish_cache(self, pairs: list[str]) -> None:
        ingest_ns = time.time_ns()
        known = self.cascade.known
        batch = [
            replace(self._last[p], source="cache", stale=True, ingest_ns=ingest_ns)
            for p in pairs
            if p in self._last and p in known
        ]
        await self._publish(batch)

    # -- stamping and publishing ---------------------------------------------------------

    async def _publish(self, updates: Sequence[PriceUpdate]) -> None:
        """Stamp and publish one batch, in order; FencedError propagates, BusError is logged."""
        if not updates:
            return
        async with self._publish_lock:
            why = self._may_publish() if self._may_publish is not None else None
            if why is not None:
                self.held_back += len(updates)
                log.error(
                    "relay: not publishing %d updates (epoch %d): %s",
                    len(updates),
                    self.fence.epoch,
                    why,
                )
                raise LeaseLost(f"renew deadline passed: {why}")
            epoch = self.fence.epoch
            stamped = self._stamper.stamp(updates, epoch)
            asked_at = self._asked_at
            for s in stamped:
                self._last[s.pair] = s
                self.by_source[s.source] = self.by_source.get(s.source, 0) + 1
                if asked_at:
                    asked = asked_at.pop(s.pair, None)
                    if asked is not None:
                        ms = (self._clock() - asked) * 1000
                        self.time_to_first_update.record(round(ms))
            try:
                await self.bus.publish(stamped, self.fence)
            except FencedError as exc:
                log.error("relay: publish refused, the lease is gone (epoch %d): %s", epoch, exc)
                raise
            except BusError as exc:
                self.publish_errors += 1
                self._rlog.warning(
                    "bus", "relay: publish of %d updates failed: %s", len(stamped), exc
                )
                return
            self.published += len(stamped)

    def _note_sources(self, now: float, pairs: Iterable[str] | None = None) -> None:
        """One log line per pair (of ``pairs``, default all) whose source changed since
        the last look."""
        for pair in self.pairs if pairs is None else pairs:
            src = self.cascade.source(pair, now)
            old = self._shown.get(pair)
            if src is old:
                continue
            self._shown[pair] = src
            if old is None and src is not Source.WS:
                log.info("relay: %s: starting on %s", pair, src.value)
            elif src is Source.WS:
                log.info("relay: %s: %s -> ws (live)", pair, old.value if old else "start")
            elif old is not None:
                if not self.ws.healthy:
                    why = "WebSocket breaker open"
                elif not self.ws.connected:
                    why = "WebSocket down"
                else:
                    why = f"no WS update for {self.cascade.stale_after:g}s"
                if src is Source.CACHE:
                    failing = self.cascade.rest_failures
                    why = (
                        f"{failing} REST polls failed"
                        if failing >= self.cascade.policy.rest_failures_before_cache
                        else f"nothing fresh for {self.cascade.stale_after:g}s: stale"
                    )
                log.warning("relay: %s: %s -> %s (%s)", pair, old.value, src.value, why)

    # -- observability -------------------------------------------------------------------

    def status(self) -> RelayStatus:
        """Upstream state for ``/api/market-data/health``."""
        now = self._clock()
        pairs: dict[str, PairFeed] = {}
        for p in self.pairs:
            age = self.cascade.age(p, now)
            pairs[p] = PairFeed(
                source=self.cascade.source(p, now).value,
                stale=self.cascade.is_stale(p, now),
                age=None if age is None else round(age, 3),
                seq=self._stamper.seq(p),
            )
        ws = self.ws.status()
        return RelayStatus(
            epoch=self.fence.epoch,
            ws=ws,
            rest=self.rest.status(),
            pairs=pairs,
            parser_skips=ws.skips,
            published=self.published,
            published_by_source=dict(self.by_source),
            publish_errors=self.publish_errors,
            late_updates=self.late_updates,
            exchange_clock_offset_ms=(
                round(self.exchange_clock.offset_ms, 1) if self.exchange_clock.known else None
            ),
            pairs_served=len(self.pairs),
            pairs_active=len(self.active_pairs),
            pairs_added=self.pairs_added,
            pairs_removed=self.pairs_removed,
            snapshots_missed=self.snapshots_missed,
            time_to_first_update_ms=Latency.of(self.time_to_first_update),
            time_to_live_ms=Latency.of(self.time_to_live),
        )


def _unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error that matters from a TaskGroup's group: a FencedError first, then any
    PricectlError, else the group itself."""
    for kind in (FencedError, PricectlError):
        match: BaseExceptionGroup[Any] | None = group.subgroup(kind)
        while match is not None:
            first: BaseException = match.exceptions[0]
            if isinstance(first, BaseExceptionGroup):
                match = first
                continue
            return first
    return group


async def _validate_later(relay: Relay, first_error: str) -> None:
    await _validate_until_ok(relay.rest, relay.resilience.backoff, first_error)
    relay.validated = True


async def _validate_until_ok(rest: BinanceRest, policy: BackoffPolicy, first_error: str) -> None:
    """Retry the exchangeInfo check with backoff; UnknownPairError ends everything."""
    backoff = Backoff(policy, rand=random.random)
    error = first_error
    while True:
        delay = backoff.next_delay(time.monotonic())
        log.warning(
            "relay: cannot check the pairs against the exchange (%s); serving cached/stale "
            "data and retrying in %.1fs",
            error,
            delay,
        )
        await asyncio.sleep(delay)
        try:
            await rest.validate_pairs()
            return
        except RateLimitedError as exc:
            error = str(exc)
            await asyncio.sleep(exc.retry_after)
        except FeedError as exc:
            error = str(exc)


async def lead(relay: Relay, *, validate: bool = True) -> None:
    """One term of leadership for ``relay``: check pairs, REST snapshot, then live; until
    cancelled. Closes the relay when it ends.

    Used by :func:`run_embedded` and by each term of ``pricectl ingest``. An unknown or
    non-trading pair raises :class:`~pricectl.errors.UnknownPairError`; an exchange that
    cannot be reached is logged and checked again in the background while the relay runs
    (serving cache/stale). :class:`~pricectl.errors.FencedError` propagates at once.
    ``validate=False`` skips the pairs check (a candidate whose earlier term checked the
    same pairs): a takeover then costs one REST round trip, not two.
    """
    try:
        pending_error: str | None = None
        try:
            if validate:
                await relay.rest.validate_pairs()
            relay.validated = True
        except RateLimitedError as exc:
            pending_error = str(exc)
        except FeedError as exc:
            pending_error = str(exc)
        else:
            await relay.publish_rest_snapshot()
        try:
            async with asyncio.TaskGroup() as tg:
                if pending_error is not None:
                    tg.create_task(_validate_later(relay, pending_error), name="relay-validate")
                tg.create_task(relay.run(), name="relay")
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
    finally:
        await relay.close()
