"""``pricectl ingest``: N candidates, one leader holding the exchange connection
(docs/architecture.md, "The lease").

Every instance runs the candidate loop of :class:`~pricectl.bus.leader.Leader`:

- **standby**: no exchange connection at all. It keeps a bus subscription to every pair
  and the latest value of each (re-read from ``prices:latest`` after any gap), so a
  takeover starts warm: those values seed the relay's cache stage. At start it checks
  the pairs against ``exchangeInfo`` once (one REST request), so a takeover goes
  straight to its REST snapshot: the check is the slowest request of a term's start.
- **leader**: runs :func:`pricectl.ingest.demand.lead_on_demand` under its fence: take the
  cluster's whole wanted set (pinned + wanted pairs), then :func:`pricectl.ingest.relay.lead`
  beside the demand loop: check the pairs, publish
  a REST snapshot, then go live on the WebSocket. Every publish is the fenced script, so
  nothing is ever published unfenced, and each one first asks the lease whether the last
  renew is recent enough (:meth:`~pricectl.bus.leader.Leader.may_publish`). Whatever
  ends a term (fenced by Redis, renew deadline passed, the relay failing) stops the relay
  and its exchange socket within two seconds, and the process is a candidate again.
- Redis unreachable, at start or later: the lease loop, the bus probe and the
  subscription each retry with backoff and say so in the log; the process never exits
  for it. A leader that cannot renew steps down at ``renew_deadline``.
- SIGTERM / SIGINT: stop the relay, release the lease (compare-and-delete, announced to
  the standbys, who take over at once), exit 0. A stop that has not finished within
  :data:`STOP_LIMIT` seconds exits anyway (status 1) with a log line saying so.
- SIGUSR1: log every task's await chain (:mod:`pricectl.ingest.stacks`), for a process
  that looks stuck.

Leadership is visible in the log: ``elected leader: <identity> epoch N``, ``stepped
down (epoch N): <why>``, and one ``ingest status:`` line every :data:`STATUS_EVERY`
seconds (role, epoch, updates published or followed, renew latency and failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from pricectl.bus.base import Fence, Gap
from pricectl.bus.leader import Leader, LeaderStatus
from pricectl.bus.redis import RedisBus
from pricectl.config import Settings, redact_url
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import ConfigError, FeedError, FencedError, UsageError
from pricectl.exchange.binance_rest import BinanceRest
from pricectl.exchange.offline import say_if_offline
from pricectl.exchange.universe import UniverseSource
from pricectl.ingest.demand import lead_on_demand
from pricectl.ingest.relay import Relay, RelayStatus
from pricectl.ingest.stacks import log_tasks

__all__ = ["STATUS_EVERY", "STOP_LIMIT", "Ingest", "IngestStatus", "check_bus", "run_ingest"]

log = logging.getLogger("pricectl.ingest")

#: Seconds between two ``ingest status:`` log lines: often enough to read the state of a
#: quiet standby from its log, rare enough not to drown anything else.
STATUS_EVERY = 60.0

#: What an ingest with no network is told, once, when the exchange does not resolve.
OFFLINE_HINT = (
    "no network? `pricectl simulate` runs a local exchange; point BINANCE_WS_URL and "
    "BINANCE_REST_URL (exchange.ws_url, exchange.rest_url) at the URLs it prints"
)

#: Seconds a SIGTERM/SIGINT stop may take before the process exits regardless: ingest
#: has no clients to drain, so this is the whole bound.
STOP_LIMIT = 5.0


def check_bus(settings: Settings) -> None:
    """Raise UsageError unless the bus is shared: ingest on ``memory://`` reaches no one."""
    if settings.bus.url.startswith("memory://"):
        raise UsageError(
            "ingest needs a shared bus: set bus.url / REDIS_URL to redis://... "
            "(with memory://, `pricectl serve` runs ingest in-process by itself)"
        )


@dataclass(frozen=True)
class IngestStatus:
    """One ingest candidate at one moment (:meth:`Ingest.status`)."""

    leader: LeaderStatus
    #: ``leader`` or ``standby``.
    role: str
    #: The newest epoch among the updates a standby followed (None before the first).
    followed_epoch: int | None
    followed: int
    resyncs: int
    fenced: int
    bus_connected: bool
    bus_reconnects: int
    #: The relay while this candidate leads, else None.
    relay: RelayStatus | None


class Ingest:
    """One ingest process: candidate loop, warm standby state, the relay while leader.

    Construct, then ``await run(stop)``; it returns after ``stop`` is set and the lease is
    released. :meth:`status` is safe to call any time.
    """

    def __init__(self, settings: Settings) -> None:
        check_bus(settings)
        self.settings = settings
        self.pairs = settings.pair_map.pairs
        self.bus = RedisBus(settings.bus.url, settings.bus.prefix)
        self.leader = Leader(
            settings.bus.url,
            settings.bus.prefix,
            policy=settings.leader,
            on_stuck=self._stuck,
        )
        #: The relay of the current term (None as a standby).
        self.relay: Relay | None = None
        #: Standby's warm view: the latest update of each pair seen on the bus.
        self.latest: dict[str, PriceUpdate] = {}
        #: Updates seen on the bus as a standby, and snapshot re-reads after a gap.
        self.followed = 0
        self.resyncs = 0
        #: Terms that ended because Redis refused a publish.
        self.fenced = 0
        self._standby = asyncio.Event()
        self._standby.set()
        self._fatal: BaseException | None = None
        self._stop: asyncio.Event | None = None
        #: True once a term has checked the pairs against exchangeInfo.
        self._validated = False
        #: One REST client for the life of the process: a takeover's snapshot request
        #: goes out on a warm session instead of opening one.
        self.rest = BinanceRest(settings.exchange, settings.pair_map)
        #: The servable pairs (exchangeInfo, refreshed): a delisted pair is not subscribed.
        self.universe = UniverseSource(
            self.rest, settings.quote_aliases, settings.exchange.universe_refresh
        )

    # --- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Compete for the lease until ``stop`` is set; then release it and return.

        Raises ConfigError if a term found the configured pairs wrong (unknown symbols):
        every candidate would fail the same way, so the process ends.
        """
        self._stop = stop
        lease = self.settings.leader
        log.info(
            "ingest %s: candidate for the lease at %s (ttl %gs, renew_deadline %gs, "
            "retry %gs), %d pairs",
            self.leader.identity,
            redact_url(self.settings.bus.url),
            lease.ttl,
            lease.renew_deadline,
            lease.retry,
            len(self.pairs),
        )
        await self.bus.start()
        try:
            async with asyncio.TaskGroup() as tg:
                candidate = tg.create_task(self.leader.run(self._term), name="ingest-candidate")
                others = [
                    tg.create_task(self._follow(), name="ingest-follow"),
                    tg.create_task(self._report(), name="ingest-status"),
                    tg.create_task(self._check_pairs(), name="ingest-check-pairs"),
                    tg.create_task(self.universe.run(), name="ingest-universe"),
                    tg.create_task(
                        say_if_offline(self.settings.exchange, OFFLINE_HINT, log),
                        name="ingest-offline-check",
                    ),
                ]
                await stop.wait()
                log.info("ingest: stopping; releasing the lease if held")
                # The candidate first: its end stops the relay and then releases the lease.
                candidate.cancel()
                await asyncio.wait([candidate])
                for t in others:
                    t.cancel()
        finally:
            await self.leader.close()
            await self.bus.close()
            await self.rest.close()
        if self._fatal is not None:
            raise self._fatal
        log.info("ingest: stopped")

    async def _term(self, fence: Fence) -> None:
        """One term as leader (run by the Leader, cancelled at step-down).

        Raises what ended the term (FencedError, LeaseLost, a feed error): the Leader logs
        it as the reason and competes again. A ConfigError (the pairs are wrong) also
        stops the process: every candidate would fail the same way.
        """
        self._standby.clear()
        s = self.settings
        relay = Relay(
            self.bus,
            fence,
            exchange=s.exchange,
            pair_map=s.pair_map,
            resilience=s.resilience,
            may_publish=self.leader.may_publish,
            rest=self.rest,
        )
        relay.seed(self.latest.values())
        self.relay = relay
        try:
            await lead_on_demand(
                relay,
                self.bus,
                s,
                lambda: self.universe.universe,
                validate=not self._validated,
            )
        except FencedError:
            self.fenced += 1
            raise
        except ConfigError as exc:
            log.error("ingest: %s; stopping", exc)
            self._fatal = exc
            if self._stop is not None:
                self._stop.set()
            raise
        finally:
            self._validated = self._validated or relay.validated
            self.relay = None
            self._standby.set()

    def _stuck(self) -> None:
        """The term's work did not stop when cancelled: show where it waits, cut its socket."""
        log_tasks(log)
        relay = self.relay
        if relay is not None:
            relay.abort()

    async def _check_pairs(self) -> None:
        """Check the pairs against exchangeInfo once, as a standby; a failure leaves the
        check to the first term (which retries it), wrong pairs stop the process."""
        try:
            await self.rest.validate_pairs()
        except ConfigError as exc:
            log.error("ingest: %s; stopping", exc)
            self._fatal = exc
            if self._stop is not None:
                self._stop.set()
            return
        except FeedError as exc:
            log.warning("ingest: cannot check the pairs yet (%s); the first term will", exc)
            return
        self._validated = True

    async def _follow(self) -> None:
        """As a standby, keep a subscription and the latest value of every pair warm."""
        while True:
            await self._standby.wait()
            sub = self.bus.subscribe(self.pairs)
            try:
                async for event in sub:
                    if not self._standby.is_set():
                        break  # we lead now: our own publishes need no watching
                    if isinstance(event, Gap):
                        self.latest.update(await sub.resync(event.reason))
                        self.resyncs += 1
                        continue
                    self.latest[event.update.pair] = event.update
                    self.followed += 1
                else:
                    return  # the bus was closed
            finally:
                with contextlib.suppress(Exception):
                    await sub.aclose()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            log.info("%s", self.status_line())

    # --- observability -----------------------------------------------------------------

    def status_line(self) -> str:
        """The ``ingest status:`` line logged every :data:`STATUS_EVERY` seconds."""
        st = self.status()
        if st.role == "leader":
            relay = st.relay
            return (
                f"ingest status: leader epoch {st.leader.epoch} since "
                f"{time.strftime('%H:%M:%S', time.localtime(st.leader.since or 0))}, "
                f"published {relay.published if relay is not None else None} "
                f"{dict(relay.published_by_source) if relay is not None else None}, "
                f"renew latency {_ms(st.leader.last_renew_latency)}, "
                f"renew failures {st.leader.renew_failures}"
            )
        return (
            f"ingest status: standby, leader epoch {st.followed_epoch}, "
            f"{st.followed} updates followed, {st.resyncs} resyncs, "
            f"redis {'connected' if st.bus_connected else 'unreachable'}"
        )

    def status(self) -> IngestStatus:
        """Leadership, bus and relay state."""
        lead_st = self.leader.status()
        epochs = [u.epoch for u in self.latest.values()]
        relay = self.relay
        return IngestStatus(
            leader=lead_st,
            role="leader" if lead_st.is_leader else "standby",
            followed_epoch=max(epochs) if epochs else None,
            followed=self.followed,
            resyncs=self.resyncs,
            fenced=self.fenced,
            bus_connected=self.bus.connected,
            bus_reconnects=self.bus.reconnects,
            relay=relay.status() if relay is not None else None,
        )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


async def run_ingest(settings: Settings) -> None:
    """``pricectl ingest``: run one candidate until SIGTERM/SIGINT, then release and return.

    Raises UsageError at once for a ``memory://`` bus. Once a stop is asked for, the
    process exits within :data:`STOP_LIMIT` seconds whatever happens (a watchdog thread,
    which works even if the event loop itself is stuck).
    """
    check_bus(settings)
    ingest = Ingest(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog = threading.Timer(STOP_LIMIT, _stop_overdue)
    watchdog.daemon = True

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            watchdog.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks, log)
    try:
        await ingest.run(stop)
    finally:
        watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


def _stop_overdue() -> None:
    """The watchdog: the graceful stop took too long; say so and leave (exit status 1)."""
    log.error(
        "ingest: the graceful stop did not finish within %.0fs; exiting now without it "
        "(the lease expires after its ttl if it was not released)",
        STOP_LIMIT,
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(1)
