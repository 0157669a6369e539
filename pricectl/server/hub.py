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

A new stream's opening comes from here (a replay from the ring when it covers the
client's ``Last-Event-ID``, else a snapshot per pair), and so do the decisions
around streams: admission (draining, ``max_connections``, per-address limit), the
jittered ``retry:``, and the graceful drain at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from pricectl.bus.base import Bus, Gap, Update
from pricectl.config import Settings
from pricectl.core.history import HistoryRing, parse_event_id
from pricectl.core.sse import encode_event
from pricectl.core.ticks import PriceUpdate
from pricectl.server.fanout import Fanout

__all__ = ["Hub"]

log = logging.getLogger("pricectl.server.hub")


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
        self.pairs: tuple[str, ...] = settings.pair_map.pairs
        self._rand = rand
        s = settings.server
        self.fanout = Fanout(
            high_water=s.high_water,
            write_timeout=s.write_timeout,
            ping_interval=s.ping_interval,
            clock=clock,
        )
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
        """Consume the bus until cancelled: updates fan out, gaps resync every client."""
        self.fanout.start()
        sub = self.bus.subscribe(self.pairs)
        try:
            async for event in sub:
                if isinstance(event, Update):
                    self.on_update(event.update, event.raw)
                elif isinstance(event, Gap):
                    self.apply_snapshot(await sub.resync(event.reason), event.reason)
        finally:
            with contextlib.suppress(Exception):
                await sub.aclose()
            self.fanout.stop()

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
        if last_event_id:
            epoch, gseq = parse_event_id(last_event_id)
            replay = self.ring.since(epoch, gseq, pairs)
            if replay is not None:
                return b"".join(replay)
        return self.snapshot_events(pairs)

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
