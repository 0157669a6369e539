"""The hub: what one serve process knows of the market, and what each new stream gets first.

One bus subscription per serve process feeds it. Per update the hub keeps the
latest value and its raw JSON per pair, the stream position (the highest
``(epoch, gseq)`` seen) and the resume ring, builds the update's SSE bytes once
(``id: <epoch>-<gseq>``, ``event: price``, ``data: <the raw JSON from the bus>``,
never re-encoded) and hands them to its :class:`~pricectl.server.fanout.Fanout`,
which writes them to every stream that wants the pair.

The bus subscription fences by epoch (an update from a deposed leader's epoch never
reaches the hub). After a bus :class:`~pricectl.bus.base.Gap` the hub takes the
re-read snapshot (:meth:`~pricectl.bus.base.Subscription.resync`) and sends every
client an ``event: snapshot`` for each of its pairs, so a broker blip never leaves a
silent gap.

A new stream's opening comes from here (the server's clock, then a replay from the
ring when it covers the client's ``Last-Event-ID``, else a snapshot per pair, then a
stale marker for each pair serve holds as stale), and so do the decisions around
streams: admission (draining, ``max_connections``, per-address limit), the jittered
``retry:``, and the graceful drain at shutdown.

Staleness is judged here too, by the hop that knows (docs/protocol.md, "The stream"): the
hub keeps, per pair, when its last fresh update arrived (monotonic clock), and a pair with
nothing fresh for ``stale_after`` is sent to its clients as ``event: stale`` (no ``id``: it
is not a position in the stream, so de-duplication by ``(epoch, seq)`` and resuming by id
are untouched; docs/protocol.md). That works with ingest dead, the leader frozen or
Redis frozen: nothing upstream has to say it. Every heartbeat (and the opening)
carries ``event: clock`` with the server's wall clock, so clients compute ages
without their own clock's skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable

from pricectl.bus.base import Bus, Gap, Subscription, Update
from pricectl.config import Settings
from pricectl.core.demand import Activations, Demand
from pricectl.core.histogram import Histogram
from pricectl.core.history import HistoryRing, parse_event_id
from pricectl.core.sse import encode_comment, encode_event
from pricectl.core.ticks import PriceUpdate
from pricectl.core.universe import Universe, UnknownPair
from pricectl.errors import BusError
from pricectl.server.fanout import Fanout

__all__ = ["STALE_CHECK", "Hub", "Refusal", "clock_event", "stale_event"]

log = logging.getLogger("pricectl.server.hub")

#: Seconds between two looks for pairs gone quiet: a Stale marker is at most this late.
STALE_CHECK = 0.1
#: Retry-After (seconds) of a 503 ``universe_not_loaded``: about one exchangeInfo retry.
UNIVERSE_RETRY_AFTER = 5.0


#: What a pair typed by a client may look like: one asset code, or two with a separator.
_PAIR_INPUT = re.compile(r"^[A-Za-z0-9]{2,24}([/\-_: ][A-Za-z0-9]{2,12})?$")


class Refusal(Exception):
    """A request for pairs that cannot be served now: ``status`` (400, 429, 503), a short
    ``code`` for the JSON error, the sentence, and what else the client may use."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        suggestions: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.suggestions = suggestions


def clock_event(now_ms: int) -> bytes:
    """``event: clock`` with the server's wall clock in ms (no id: not a stream position)."""
    return b'event: clock\ndata: {"server_ms":%d}\n\n' % now_ms


def stale_event(update: PriceUpdate, quiet_s: float, now_ms: int) -> bytes:
    """``event: stale`` for ``update``'s pair: the last update, marked stale by serve.

    No ``id``: a client keeps its ``Last-Event-ID`` and its ``(epoch, seq)`` per pair. The
    update it refers to is ``last_epoch``/``last_seq``: not ``epoch``/``seq``, so nothing
    that reads those from every event can take the marker for an update.
    """
    data = {
        "pair": update.pair,
        "stale": True,
        "reason": f"no update for {quiet_s:.0f}s",
        "last_epoch": update.epoch,
        "last_seq": update.seq,
        "price": update.price,
        "server_ms": now_ms,
    }
    return encode_event(json.dumps(data, separators=(",", ":")), event="stale")


class Hub:
    """Latest snapshot, resume ring and admission for one serve process; ``fanout``
    holds its streams."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.bus = bus
        #: The pinned pairs (``pairs:`` in the config), always subscribed.
        self.pinned: tuple[str, ...] = settings.pair_map.pairs
        #: Every pair this process hears from the bus now: pinned, then those its clients
        #: asked for, in the order they came (snapshot events follow this order).
        self.pairs: tuple[str, ...] = self.pinned
        #: The servable pairs (set by serve from exchangeInfo); None: pinned pairs only.
        self.universe: Callable[[], Universe | None] = lambda: None
        #: Why serve has no list of pairs yet although it reads one (health says so and a
        #: pair that is not pinned gets a 503 meanwhile); None: loaded, or none read.
        self.universe_missing: Callable[[], str | None] = lambda: None
        #: The cluster's wanted set as last read from the bus, and this process's pace.
        self.demand = Demand(self.pinned, settings.demand)
        self.activations = Activations(settings.demand)
        #: Non-pinned pairs held here -> wall time a client last wanted them.
        self.held: dict[str, float] = {}
        #: Pairs turned on here and waiting for their first fresh price -> clock() then.
        self.waiting_since: dict[str, float] = {}
        #: Milliseconds from a pair's activation to its first fresh price here.
        self.first_price_ms = Histogram()
        #: Pairs turned on by this process, and turned off again.
        self.activated = 0
        self.deactivated = 0
        self._sub: Subscription | None = None
        self._sub_ready = asyncio.Event()
        self._rand = rand
        self._clock = clock
        s = settings.server
        self.fanout = Fanout(
            high_water=s.high_water,
            write_timeout=s.write_timeout,
            ping_interval=s.ping_interval,
            clock=clock,
            ping=self._ping_bytes,
        )
        self.stale_after = settings.resilience.heartbeat.stale_after
        #: Per pair, when (``clock``) its last fresh update arrived.
        self.fresh_at: dict[str, float] = {}
        #: Pairs whose last update is older than ``stale_after``: serve sent them stale.
        self.quiet: set[str] = set()
        #: Stale markers sent (one per pair each time it goes quiet).
        self.stale_marked = 0
        #: When (``clock``) the last bus message of any kind arrived.
        self.last_message_at: float | None = None
        self.ring = HistoryRing(
            s.history_size,
            max_events=s.resume_max_events,
            max_bytes=s.resume_max_bytes or s.high_water,
        )
        #: Latest update and its raw JSON per pair, with the wall time it was received.
        self.latest: dict[str, PriceUpdate] = {}
        self.latest_raw: dict[str, str] = {}
        self.received_at: dict[str, float] = {}
        #: Stream position: the highest (epoch, gseq) seen; snapshot events carry it as id.
        self.epoch = 0
        self.gseq = 0
        self.draining = False
        #: True once the first snapshot has been read from the bus.
        self.ready = False
        # Counters (exported by /metrics and /health; the fan-out keeps its own).
        self.rejected: dict[str, int] = {}
        self.updates_received = 0
        self.resyncs = 0
        self.last_gap: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Consume the bus until cancelled: updates fan out, gaps resync every client,
        and pairs gone quiet are marked stale."""
        self.fanout.start()
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(self._watch_quiet(), name="hub-stale-watch")
                demand = tg.create_task(self._refresh_demand(), name="hub-demand")
                try:
                    await self._consume()
                finally:
                    watcher.cancel()  # the bus closed: the hub's work is over
                    demand.cancel()
        finally:
            self.fanout.stop()

    async def _consume(self) -> None:
        sub = self.bus.subscribe(self.pairs)
        self._sub = sub
        self._sub_ready.set()
        try:
            async for event in sub:
                if isinstance(event, Update):
                    self.on_update(event.update, event.raw)
                elif isinstance(event, Gap):
                    self.apply_snapshot(await sub.resync(event.reason), event.reason)
        finally:
            self._sub = None
            self._sub_ready.clear()
            with contextlib.suppress(Exception):
                await sub.aclose()

    async def _watch_quiet(self) -> None:
        while True:
            await asyncio.sleep(STALE_CHECK)
            self.mark_quiet()

    def mark_quiet(self, now: float | None = None) -> list[str]:
        """Send ``event: stale`` for each pair whose last fresh update is ``stale_after``
        old (once per quiet spell); the pairs marked."""
        now = self._clock() if now is None else now
        marked: list[str] = []
        for pair, at in self.fresh_at.items():
            if pair in self.quiet or now - at < self.stale_after:
                continue
            update = self.latest.get(pair)
            if update is None:
                continue
            self.quiet.add(pair)
            marked.append(pair)
            self.stale_marked += 1
            self.fanout.publish(pair, stale_event(update, now - at, time.time_ns() // 1_000_000))
        if marked:
            names = ", ".join(marked)
            log.warning("no update for %gs: sent %s to clients as stale", self.stale_after, names)
        return marked

    def is_stale(self, pair: str) -> bool:
        """What clients are shown: the last update says stale, or serve marked it quiet."""
        update = self.latest.get(pair)
        return update is None or update.stale or pair in self.quiet

    def _ping_bytes(self) -> bytes:
        return encode_comment("ping") + clock_event(time.time_ns() // 1_000_000)

    def _heard(self, update: PriceUpdate, age: float = 0.0) -> None:
        """Note a fresh (or stale) update of ``update.pair`` that is ``age`` seconds old."""
        now = self._clock()
        self.last_message_at = now
        pair = update.pair
        if update.stale:
            # Ingest says so itself (the update carries it); no marker of our own needed.
            self.quiet.add(pair)
            self.fresh_at.setdefault(pair, now - self.stale_after)
            return
        self.fresh_at[pair] = now - age
        if age < self.stale_after:
            self.quiet.discard(pair)

    # --- the per-event path --------------------------------------------------------------

    def on_update(self, update: PriceUpdate, raw: str) -> None:
        """Record one update (already fenced by epoch: the bus subscription drops a
        deposed leader's) and queue its bytes for this loop iteration's fan-out."""
        pair = update.pair
        epoch = update.epoch
        self.updates_received += 1
        self.latest[pair] = update
        self.latest_raw[pair] = raw
        self.received_at[pair] = time.time()
        self._heard(update)
        if self.waiting_since and pair in self.waiting_since and not update.stale:
            started = self.waiting_since.pop(pair)
            self.first_price_ms.record(int((self._clock() - started) * 1000))
        gseq = update.gseq
        if epoch > self.epoch or (epoch == self.epoch and gseq > self.gseq):
            self.epoch, self.gseq = epoch, gseq
        if "\n" in raw or "\r" in raw:
            payload = encode_event(raw, event="price", id=f"{epoch}-{gseq}")
        else:
            payload = b"id: %d-%d\nevent: price\ndata: %s\n\n" % (epoch, gseq, raw.encode())
        if epoch == self.epoch:
            self.ring.append(epoch, gseq, pair, payload)
        else:
            # An older epoch still current for this pair: the ring cannot vouch for order.
            self.ring.reset()
        self.fanout.publish(pair, payload)

    # --- pairs on demand -----------------------------------------------------------------

    def resolve(self, texts: list[str]) -> list[str]:
        """Canonical names of what a client typed, in order, duplicates dropped.

        Raises :class:`Refusal` (400 ``unknown_pair``) naming every pair that does not
        exist, with the nearest names. Before exchangeInfo has answered, only the pinned
        pairs are known: any other is a 503 ``universe_not_loaded`` (retry later), not a
        400, when serve is still fetching the list.
        """
        universe = self.universe()
        bad = [t for t in texts if _PAIR_INPUT.match(t.strip()) is None]
        if bad:
            raise Refusal(
                400,
                "malformed_pair",
                f"malformed pair {bad[0].strip()!r}: expected BASE/QUOTE such as BTC/USD "
                "(BTC-USD, btcusdt and BTCUSDT are accepted too)",
            )
        out: list[str] = []
        unknown: list[str] = []
        suggestions: list[str] = []
        for text in texts:
            pair: str | None = None
            if universe is not None:
                try:
                    pair = universe.resolve(text)
                except UnknownPair as exc:
                    unknown.append(exc.text)
                    suggestions += [s for s in exc.suggestions if s not in suggestions]
                    continue
            else:
                pair = self._resolve_pinned(text)
                if pair is None:
                    unknown.append(text.strip())
                    continue
            if pair not in out:
                out.append(pair)
        if unknown and universe is None and (missing := self.universe_missing()) is not None:
            names = ", ".join(repr(u) for u in unknown)
            raise Refusal(
                503,
                "universe_not_loaded",
                f"cannot tell yet whether {names} exists: {missing}; only the pinned pairs "
                f"can be served until then: {', '.join(self.pinned)}",
                retry_after=UNIVERSE_RETRY_AFTER,
            )
        if unknown:
            names = ", ".join(repr(u) for u in unknown)
            hint = f"; did you mean {', '.join(suggestions[:5])}?" if suggestions else ""
            if universe is None:
                hint = (
                    f"; the exchange's list of pairs is not loaded yet, so only the pinned "
                    f"pairs can be served: {', '.join(self.pinned)}"
                )
            raise Refusal(
                400,
                "unknown_pair",
                f"unknown pair {names}: the exchange lists no such spot pair{hint}",
                suggestions=tuple(suggestions[:5]) if universe is not None else self.pinned,
            )
        return out

    def _resolve_pinned(self, text: str) -> str | None:
        raw = text.strip().upper().replace("-", "/").replace("_", "/")
        aliases = self.settings.quote_aliases
        for pair in self.pinned:
            base, _, quote = pair.partition("/")
            if raw in (
                pair,
                f"{base}/{aliases.get(quote, quote)}",
                base + aliases.get(quote, quote),
            ):
                return pair
        return None

    async def activate(self, pairs: Iterable[str], ip: str) -> list[str]:
        """Make sure this process hears ``pairs`` (canonical names) and that the cluster
        wants them; the pairs that were new here.

        A pair not heard yet is checked against the cap (:meth:`Demand.admit`, 503
        ``max_pairs``) and the activation rate of ``ip`` and of this process (429
        ``too_many_activations``), both raised as :class:`Refusal` before anything
        changes. Then it is subscribed on the bus (live before this returns), its last
        snapshot read, and the leader woken. Pairs already heard only count as wanted.
        """
        wanted = [p for p in pairs if p not in self.pinned]
        wall = time.time()
        for p in wanted:
            self.held[p] = max(self.held.get(p, 0.0), wall)
        new = [p for p in wanted if p not in self.pairs]
        if not new:
            return []
        # The cap is the cluster's: judge it on the wanted set as the bus has it now, not
        # as of the last refresh (another serve may have filled the slots since).
        with contextlib.suppress(BusError):
            self.demand.replace(await self.bus.wanted(wall, self.demand.policy.expiry))
        for p in new:
            why = self.demand.admit(p, wall)
            if why is not None:
                for q in new:
                    self.held.pop(q, None)
                raise Refusal(
                    503, "max_pairs", why, retry_after=self.settings.server.overload_retry
                )
        why = self.activations.allow(ip, len(new), self._clock())
        if why is not None:
            for q in new:
                self.held.pop(q, None)
            raise Refusal(
                429,
                "too_many_activations",
                why,
                retry_after=max(1.0, self.activations.retry_after(ip, self._clock())),
            )
        sub = self._sub
        if sub is None:
            try:
                async with asyncio.timeout(5.0):
                    await self._sub_ready.wait()
            except TimeoutError:
                raise Refusal(503, "bus_down", "the bus is not connected; try again") from None
            sub = self._sub
            assert sub is not None
        now = self._clock()
        try:
            # Live first, then the snapshot: nothing published in between is missed.
            added = await sub.add(new)
            self.pairs = self.pairs + tuple(p for p in added if p not in self.pairs)
            snap = await self._snapshot_of(sub, added)
            await self.bus.want(new, wall, wake=True)
        except BusError as exc:
            raise Refusal(503, "bus_down", f"cannot subscribe to {', '.join(new)}: {exc}") from None
        self.demand.want(new, wall)
        for p in added:
            self.activated += 1
            if p not in snap or snap[p].stale:
                self.waiting_since[p] = now
        log.info(
            "pairs on demand: %s now heard here (%d in all)", ", ".join(added), len(self.pairs)
        )
        return added

    async def _snapshot_of(self, sub: Subscription, pairs: list[str]) -> dict[str, PriceUpdate]:
        """The bus's last update of each of ``pairs``, fenced, taken in as ``latest``."""
        snap = await self.bus.snapshot(pairs)
        out: dict[str, PriceUpdate] = {}
        for pair, update in snap.items():
            if not sub.epochs.accept(update, live=False):
                continue
            out[pair] = update
            current = self.latest.get(pair)
            if current is not None and (current.epoch, current.seq) >= (update.epoch, update.seq):
                continue
            self.latest[pair] = update
            self.latest_raw[pair] = update.to_json()
            self.received_at[pair] = time.time()
            age = max(0.0, time.time() - update.ingest_ns / 1e9) if update.ingest_ns else 0.0
            self._heard(update, age)
        return out

    async def _refresh_demand(self) -> None:
        """Every ``refresh``: re-record the pairs watched here, read the cluster's set, and
        stop hearing pairs nobody here has wanted for ``idle_grace``."""
        policy = self.demand.policy
        while True:
            await asyncio.sleep(policy.refresh)
            try:
                await self.refresh_demand()
            except BusError:
                pass  # the bus reconnects by itself; the next round renews the wants
            except Exception:
                # Never let a surprise here end the hub (and with it every stream).
                log.exception("pairs on demand: refreshing the wanted pairs failed")

    async def refresh_demand(self) -> None:
        """One round of :meth:`_refresh_demand` (raises BusError if the bus fails)."""
        policy = self.demand.policy
        wall = time.time()
        for p in self.fanout.watched():
            if p not in self.pinned:
                self.held[p] = wall
        fresh = [p for p, t in self.held.items() if t > wall - policy.busy_window]
        if fresh:
            await self.bus.want(fresh, wall)
        self.demand.replace(await self.bus.wanted(wall, policy.expiry))
        gone = [p for p, t in self.held.items() if t <= wall - policy.idle_grace]
        if gone:
            await self.deactivate(gone)

    async def deactivate(self, pairs: list[str]) -> None:
        """Stop hearing ``pairs`` (not pinned, not watched here)."""
        watched = set(self.fanout.watched())
        gone = [p for p in pairs if p not in self.pinned and p not in watched]
        for p in gone:
            self.held.pop(p, None)
            self.waiting_since.pop(p, None)
            self.latest.pop(p, None)
            self.latest_raw.pop(p, None)
            self.received_at.pop(p, None)
            self.fresh_at.pop(p, None)
            self.quiet.discard(p)
        if not gone:
            return
        self.pairs = tuple(p for p in self.pairs if p not in gone)
        self.deactivated += len(gone)
        sub = self._sub
        if sub is not None:
            await sub.remove(gone)
        log.info("pairs on demand: %s no longer wanted here", ", ".join(gone))

    # --- new streams ---------------------------------------------------------------------

    def admit(self, ip: str, npairs: int) -> str | None:
        """Why a new stream must be turned away (a short reason), or None to accept it."""
        s = self.settings.server
        if self.draining:
            return "draining"
        if s.max_connections and self.fanout.clients >= s.max_connections:
            return "max_connections"
        if s.max_connections_per_ip and self.fanout.connections_from(ip) >= (
            s.max_connections_per_ip
        ):
            return "max_connections_per_ip"
        return None

    def count_rejected(self, reason: str) -> None:
        """Count a stream turned away, by reason (for /metrics)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def retry_ms(self, base: float | None = None) -> int:
        """``retry:`` value with jitter, so a fleet of browsers does not come back at once."""
        s = self.settings.server
        base = s.retry if base is None else base
        return int((base + self._rand() * s.retry_jitter) * 1000)

    def opening(self, pairs: frozenset[str], last_event_id: str | None) -> bytes:
        """What a new stream gets first: replay from the ring if it covers ``last_event_id``,
        else one ``event: snapshot`` per pair. Raises ``ValueError`` for a malformed id."""
        # Updates already in latest/ring must not be sent again after the opening.
        self.fanout.flush()
        now_ms = time.time_ns() // 1_000_000
        head = clock_event(now_ms)
        body: bytes | None = None
        if last_event_id:
            epoch, gseq = parse_event_id(last_event_id)
            replay = self.ring.since(epoch, gseq, pairs)
            if replay is not None:
                body = b"".join(replay)
        if body is None:
            body = self.snapshot_events(pairs)
        now = self._clock()
        markers = b"".join(
            stale_event(self.latest[p], now - self.fresh_at.get(p, now), now_ms)
            for p in self.pairs
            if p in pairs and p in self.quiet and p in self.latest and not self.latest[p].stale
        )
        return head + body + markers

    def snapshot_events(self, pairs: Iterable[str]) -> bytes:
        """``event: snapshot`` for each pair with data, in configured order, id = position."""
        return b"".join(self._snapshot_by_pair(pairs).values())

    def _snapshot_by_pair(self, pairs: Iterable[str]) -> dict[str, bytes]:
        """The ``event: snapshot`` of each pair with data, by pair, in configured order."""
        position = f"{self.epoch}-{self.gseq}"
        return {
            pair: encode_event(self.latest_raw[pair], event="snapshot", id=position)
            for pair in self.pairs
            if pair in pairs and pair in self.latest_raw
        }

    # --- resync and shutdown -------------------------------------------------------------

    def apply_snapshot(self, snap: dict[str, PriceUpdate], reason: str) -> None:
        """After a bus gap: take the re-read snapshot (fenced by the subscription) and
        send every client its pairs afresh."""
        self.last_gap = reason
        fanout = self.fanout
        fanout.flush()
        for pair, update in snap.items():
            current = self.latest.get(pair)
            if current is not None and (current.epoch, current.seq) > (update.epoch, update.seq):
                continue
            self.latest[pair] = update
            self.latest_raw[pair] = update.to_json()
            self.received_at[pair] = time.time()
            # A snapshot entry is as old as its ingest stamp says, not as old as the read.
            age = max(0.0, time.time() - update.ingest_ns / 1e9) if update.ingest_ns else 0.0
            self._heard(update, age)
            if (update.epoch, update.gseq) > (self.epoch, self.gseq):
                self.epoch, self.gseq = update.epoch, update.gseq
        fanout.complete()
        # Events between our last one and the snapshot are lost to us: resume from here only.
        self.ring.reset(self.epoch or None, self.gseq)
        if self.ready:
            self.resyncs += 1
            log.info("resync after bus gap (%s): %d clients", reason, fanout.clients)
        else:
            log.info("hub ready: %d of %d pairs have a snapshot", len(snap), len(self.pairs))
        self.ready = True
        # A lagging client gets the snapshot as its pending slots.
        fanout.resend(self._snapshot_by_pair)
        # A pair still quiet after the re-read is told stale again: the snapshot just
        # sent does not say so itself.
        now, now_ms = self._clock(), time.time_ns() // 1_000_000
        for pair in self.pairs:
            held = self.latest.get(pair)
            if pair in self.quiet and held is not None and not held.stale:
                quiet_s = now - self.fresh_at.get(pair, now)
                fanout.publish(pair, stale_event(held, quiet_s, now_ms))

    async def drain(self, window: float) -> None:
        """Graceful shutdown: refuse new streams, tell every client when to come back
        (jittered ``retry:``), and close the streams spread over ``window`` seconds."""
        self.draining = True
        fanout = self.fanout
        fanout.flush()
        fanout.complete()
        clients = fanout.all_clients()
        for client in clients:
            if client.transport.is_closing():
                continue
            fanout.write(client, b": server restarting\nretry: %d\n\n" % self.retry_ms())
        steps = max(1, min(len(clients), 20))
        per_step = -(-len(clients) // steps) if clients else 0
        for i in range(steps):
            for client in clients[i * per_step : (i + 1) * per_step]:
                fanout.finish(client, "draining")
            if i + 1 < steps:
                await asyncio.sleep(window / steps)
