"""Readers for the hops before serve: the bus (``tail --from redis``) and the exchange
(``tail --from binance``), yielding the same :mod:`pricectl.client.events` as the SSE client.

Reading each hop of the pipeline with the same view is how an operator finds which hop is
wrong: prices on Binance but not on the bus means ingest; on the bus but not over SSE means
serve.

- :func:`bus_events`: reads the snapshot first, then follows the per-pair channels; after a
  Redis reconnect the bus says so (``Gap``) and the snapshot is read again, so the view
  resyncs instead of silently missing what was published during the outage
  (docs/architecture.md, "The bus").
- :func:`exchange_events`: one WebSocket to the exchange URL in the config, no server in
  between. Updates carry no leader epoch; they are numbered locally per pair so the
  sequence checks still hold.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pricectl.client.events import Connected, Disconnected, Price, StreamEvent
from pricectl.core.sequence import SequenceTracker
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import BusError, PricectlError

__all__ = ["bus_events", "exchange_events"]


def _price(
    tracker: SequenceTracker, update: PriceUpdate, *, snapshot: bool, event_id: str | None = None
) -> Price:
    check = tracker.check(update.pair, update.epoch, update.seq, snapshot=snapshot)
    return Price(
        update=update,
        check=check,
        snapshot=snapshot,
        event_id=event_id,
        received=time.monotonic(),
        received_ns=time.time_ns(),
    )


async def bus_events(
    url: str,
    pairs: Sequence[str],
    *,
    prefix: str = "",
    tracker: SequenceTracker | None = None,
    want_every: float = 5.0,
) -> AsyncIterator[StreamEvent]:
    """Snapshot, then live updates of ``pairs`` from the bus at ``url``.

    Raises :class:`~pricectl.errors.BusError` at once if the bus cannot be reached at the
    start; after that, outages are ridden out by the bus and announced as reconnects.

    The pairs are recorded as wanted in the bus while this runs (every ``want_every``
    seconds, like a serve does for its clients), so the leader subscribes to a pair no
    serve carries.
    """
    import asyncio

    from pricectl.bus import Gap, open_bus

    tracker = tracker if tracker is not None else SequenceTracker()
    bus = open_bus(url, prefix)
    await bus.start()

    async def keep_wanting() -> None:
        wake = True
        while True:
            with contextlib.suppress(BusError):
                await bus.want(list(pairs), time.time(), wake=wake)
                wake = False
            await asyncio.sleep(want_every)

    wanting: asyncio.Task[None] | None = None
    try:
        try:
            await bus.snapshot(pairs)  # fail fast with a clear error if unreachable
        except BusError:
            raise
        wanting = asyncio.ensure_future(keep_wanting())
        subscription = bus.subscribe(pairs)
        reconnects = 0
        try:
            async for event in subscription:
                if isinstance(event, Gap):
                    if event.reason != "subscribed":
                        reconnects += 1
                    yield Connected(source=url, reconnects=reconnects)
                    snap = await subscription.resync(event.reason)
                    for pair in pairs:
                        if pair in snap:
                            yield _price(tracker, snap[pair], snapshot=True)
                else:
                    yield _price(tracker, event.update, snapshot=False)
        finally:
            await subscription.aclose()
    finally:
        if wanting is not None:
            wanting.cancel()
            await asyncio.gather(wanting, return_exceptions=True)
        await bus.close()


async def exchange_events(
    settings: Any, pairs: Sequence[str], *, tracker: SequenceTracker | None = None
) -> AsyncIterator[StreamEvent]:
    """Live updates of ``pairs`` straight from the exchange WebSocket in ``settings``.

    The first connection is tried once up front so a wrong ``exchange.ws_url`` fails at
    once with a clear error instead of retrying quietly; after that the exchange client
    (:class:`~pricectl.exchange.binance_ws.BinanceWS`) reconnects under backoff and the
    breaker, and each change of its connection shows as Connected / Disconnected.
    """
    import asyncio

    from websockets.asyncio.client import connect

    from pricectl.core.binance import combined_url
    from pricectl.core.pairs import PairMap
    from pricectl.core.stamping import Stamper
    from pricectl.exchange.binance_ws import BinanceWS

    tracker = tracker if tracker is not None else SequenceTracker()
    base = settings.exchange.ws_url
    streams = [settings.pair_map.stream_for(p, settings.exchange.stream) for p in pairs]
    try:
        async with asyncio.timeout(settings.exchange.connect_timeout):
            probe = await connect(combined_url(base, streams), ping_interval=None, proxy=None)
        await probe.close()
    except Exception as exc:  # OSError, TimeoutError, and websockets' handshake errors
        reason = str(exc) or type(exc).__name__
        raise PricectlError(f"cannot connect to the exchange at {base}: {reason}") from None

    queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
    stamper = Stamper()  # no leader here: epoch 0, numbered as the relay numbers
    state = {"connected": False}

    async def on_batch(batch: list[PriceUpdate]) -> None:
        for stamped in stamper.stamp(batch, 0):
            event_id = f"0-{stamped.gseq}"
            queue.put_nowait(_price(tracker, stamped, snapshot=False, event_id=event_id))

    def on_state() -> None:
        up = ws.connected
        if up == state["connected"]:
            return
        state["connected"] = up
        if up:
            queue.put_nowait(Connected(source=base, reconnects=ws.reconnects))
        else:
            reason = ws.last_disconnect or "the exchange connection dropped"
            queue.put_nowait(Disconnected(reason=reason, retry_in=0.0, reconnects=ws.reconnects))

    res = settings.resilience
    ws = BinanceWS(
        settings.exchange,
        PairMap.build(pairs, settings.quote_aliases),
        on_batch,
        backoff=res.backoff,
        breaker=res.breaker,
        idle_timeout=res.heartbeat.idle_timeout,
        on_state=on_state,
    )
    # A task we own and cancel explicitly: a TaskGroup cannot span the generator's yields.
    runner = asyncio.create_task(ws.run(), name="tail-binance-ws")
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                runner.result()  # re-raise why the exchange client stopped
                return
            yield getter.result()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
