"""The leader's half of pairs on demand: subscribe to pinned + wanted, as it changes.

Serve processes record the pairs their clients want in the bus (``Bus.want``) and wake
the leader; this loop reads the cluster's whole wanted set (``Bus.wanted``) at every
wake-up and at least every ``refresh`` (so pairs past ``idle_grace`` drop out on time),
computes :meth:`~pricectl.core.demand.Demand.active` (pinned first, the most recently
wanted next, at most ``exchange.max_pairs``) and hands it to
:meth:`~pricectl.ingest.relay.Relay.set_pairs` when it changed. A new leader calls
:func:`initial_pairs` before its first publish, so its REST snapshot and its first
SUBSCRIBE cover the whole set at once instead of pair by pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from pricectl.bus.base import Bus, Fence
from pricectl.config import Settings
from pricectl.core.demand import Demand
from pricectl.core.pairs import PairMap
from pricectl.core.universe import Universe
from pricectl.errors import BusError, PricectlError
from pricectl.ingest.relay import Relay, lead

__all__ = ["follow_demand", "initial_pairs", "lead_on_demand", "run_embedded_on_demand"]

log = logging.getLogger("pricectl.demand")


def _active(
    demand: Demand, wanted: dict[str, float], universe: Universe | None, wall: float
) -> tuple[str, ...]:
    if universe is not None:
        # A pair the exchange stopped listing (delisted, halted) is not subscribed.
        wanted = {p: t for p, t in wanted.items() if p in universe}
    demand.replace(wanted)
    return demand.active(wall)


async def initial_pairs(
    relay: Relay,
    bus: Bus,
    settings: Settings,
    universe: Callable[[], Universe | None] = lambda: None,
    *,
    timeout: float = 2.0,
) -> tuple[str, ...]:
    """Give ``relay`` the cluster's whole active set before its term's first publish.

    A bus that does not answer within ``timeout`` leaves the pinned pairs; the demand
    loop catches up once it does.
    """
    demand = Demand(settings.pair_map.pairs, settings.demand)
    try:
        async with asyncio.timeout(timeout):
            wanted = await bus.wanted(time.time(), demand.policy.expiry)
    except (BusError, TimeoutError) as exc:
        log.warning("demand: cannot read the wanted pairs yet (%s); pinned pairs first", exc)
        return relay.pairs
    active = _active(demand, wanted, universe(), time.time())
    if set(active) != set(relay.pairs):
        relay.set_pairs(PairMap.build(active, settings.quote_aliases))
        log.info("demand: taking over %d pairs (%d pinned)", len(active), len(demand.pinned))
    return active


async def follow_demand(
    relay: Relay,
    bus: Bus,
    settings: Settings,
    universe: Callable[[], Universe | None] = lambda: None,
) -> None:
    """Keep ``relay`` on pinned + wanted pairs until cancelled (see the module)."""
    demand = Demand(settings.pair_map.pairs, settings.demand)
    policy = demand.policy
    wake = asyncio.Event()
    current = tuple(relay.pairs)

    async def listen() -> None:
        async for _ in bus.demand_wakeups():
            wake.set()

    async with asyncio.TaskGroup() as tg:
        listener = tg.create_task(listen(), name="demand-wakeups")
        try:
            while True:
                wake.clear()
                wall = time.time()
                try:
                    wanted = await bus.wanted(wall, policy.expiry)
                except BusError as exc:
                    log.warning("demand: cannot read the wanted pairs: %s", exc)
                    wanted = None
                if wanted is not None:
                    active = _active(demand, wanted, universe(), wall)
                    if set(active) != set(current):
                        added = sorted(set(active) - set(current))
                        removed = sorted(set(current) - set(active))
                        relay.set_pairs(PairMap.build(active, settings.quote_aliases))
                        log.info(
                            "demand: %d pairs active (+%d -%d)%s",
                            len(active),
                            len(added),
                            len(removed),
                            f": +{', '.join(added[:5])}" if added else "",
                        )
                        current = active
                # The next pair to expire, or the refresh pace, whichever is first.
                wait = policy.refresh
                if demand.wanted:
                    oldest = min(demand.wanted.values())
                    wait = min(wait, max(0.05, oldest + policy.expiry - time.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wake.wait()
        finally:
            listener.cancel()


async def lead_on_demand(
    relay: Relay,
    bus: Bus,
    settings: Settings,
    universe: Callable[[], Universe | None] = lambda: None,
    *,
    validate: bool = True,
) -> None:
    """One term: the whole active set first, then :func:`~pricectl.ingest.relay.lead`
    with :func:`follow_demand` beside it; until cancelled or the term ends (what ended
    it is raised, as ``lead`` raises it)."""
    await initial_pairs(relay, bus, settings, universe)
    try:
        async with asyncio.TaskGroup() as tg:
            term = tg.create_task(lead(relay, validate=validate), name="relay-lead")
            follower = tg.create_task(
                follow_demand(relay, bus, settings, universe), name="relay-demand"
            )
            await asyncio.wait([term])
            follower.cancel()
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


async def run_embedded_on_demand(
    settings: Settings,
    bus: Bus,
    universe: Callable[[], Universe | None] = lambda: None,
    on_relay: Callable[[Relay], None] | None = None,
) -> None:
    """The relay inside ``pricectl serve`` with ``memory://``, following the wanted pairs
    of this process.

    Takes the in-process lease (``bus.local_fence()``), checks the pairs against the
    exchange's ``exchangeInfo``, publishes a REST snapshot, then runs the relay (as
    :func:`~pricectl.ingest.relay.lead` does). An exchange that cannot be reached at start
    is not fatal: it is logged and checked again in the background while the relay runs
    (serving cache/stale). ``on_relay(relay)`` hands the relay to serve for ``/health``.
    """
    local_fence = getattr(bus, "local_fence", None)
    if local_fence is None:
        raise PricectlError(f"the embedded relay needs the memory:// bus, got {bus.url}")
    fence: Fence = local_fence()
    relay = Relay(
        bus,
        fence,
        exchange=settings.exchange,
        pair_map=settings.pair_map,
        resilience=settings.resilience,
    )
    if on_relay is not None:
        on_relay(relay)
    await lead_on_demand(relay, bus, settings, universe)
