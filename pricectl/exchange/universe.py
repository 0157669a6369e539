"""The servable pairs as the exchange lists them now: ``exchangeInfo`` at start, refreshed.

Ingest and serve each hold a :class:`UniverseSource`: it asks ``GET /api/v3/exchangeInfo``
(weight 20) through the process's REST client at start, retrying with backoff until the
exchange answers, then every ``exchange.universe_refresh``. Until the first answer
:attr:`UniverseSource.universe` is None, and only the pinned pairs are servable.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.universe import Universe
from pricectl.errors import FeedError, RateLimitedError
from pricectl.exchange.binance_rest import BinanceRest

__all__ = ["UNIVERSE_RETRY", "UniverseSource"]

log = logging.getLogger("pricectl.universe")

#: Delays between exchangeInfo attempts until the first answer (weight 20 each: a
#: minute's budget of 1200 allows 60, so a 1 s start keeps well inside it).
UNIVERSE_RETRY = BackoffPolicy(initial=1.0, max=30.0, multiplier=2.0, reset_after=60.0)


class UniverseSource:
    """The latest :class:`Universe` from ``rest``; ``await run()`` keeps it fresh."""

    def __init__(
        self,
        rest: BinanceRest,
        aliases: Mapping[str, str],
        refresh: float,
        *,
        retry: BackoffPolicy = UNIVERSE_RETRY,
    ) -> None:
        self.rest = rest
        self.aliases = dict(aliases)
        self.refresh = refresh
        self.retry = retry
        self.universe: Universe | None = None
        #: Wall-clock time of the last successful fetch.
        self.fetched_at: float | None = None
        self.failures = 0
        #: The last failed attempt's error (None after a success).
        self.last_error: str | None = None
        self._ready = asyncio.Event()

    async def fetch(self) -> Universe:
        """One ``exchangeInfo`` into :attr:`universe`; raises FeedError if REST fails."""
        info = await self.rest.exchange_info()
        universe = Universe.from_exchange_info(info, self.aliases)
        first = self.universe is None
        self.universe = universe
        self.fetched_at = time.time()
        self.last_error = None
        self._ready.set()
        if first:
            log.info("exchangeInfo: %d pairs can be served", len(universe))
        return universe

    def missing(self) -> str | None:
        """Why no list of pairs is known yet (a sentence for health), or None once it is."""
        if self.universe is not None:
            return None
        if not self.failures:
            return "the exchange's list of pairs is not loaded yet"
        return (
            f"the exchange's list of pairs is not loaded: exchangeInfo failed "
            f"{self.failures} times, last: {self.last_error}; retrying"
        )

    async def ready(self, timeout: float) -> Universe | None:
        """The universe once known, waiting at most ``timeout`` seconds for it."""
        if self.universe is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self.universe

    async def run(self) -> None:
        """Fetch until it works, then refresh every ``refresh`` seconds; until cancelled."""
        backoff = Backoff(self.retry, rand=random.random)
        while True:
            try:
                await self.fetch()
            except RateLimitedError as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.warning("exchangeInfo: %s", exc)
                await asyncio.sleep(max(exc.retry_after, 1.0))
                continue
            except FeedError as exc:
                self.failures += 1
                self.last_error = str(exc)
                delay = backoff.next_delay(time.monotonic())
                level = logging.WARNING if self.universe is None else logging.INFO
                log.log(level, "exchangeInfo: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.connected(time.monotonic())
            await asyncio.sleep(self.refresh)
