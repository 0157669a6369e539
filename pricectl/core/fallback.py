"""Which source serves each pair now: live WS, REST polling, or the cached value
(docs/architecture.md, "The resilience core").

The cascade, per pair (the update's ``source``: ``ws`` | ``rest`` | ``cache``):

1. ``WS`` while the WebSocket is usable (connected, breaker closed) *and* the pair's last
   WS update is younger than ``stale_after``. A healthy socket that has stopped carrying
   one pair (a delisted or halted symbol, a lost subscription) drops that pair alone off WS.
2. ``REST`` otherwise, as long as REST polling works (fewer than
   ``rest_failures_before_cache`` consecutive failed polls) and the pair is not stale.
   REST covers a pair from the moment its WebSocket is down, not only once the breaker
   opens or the pair goes stale: a reconnect that takes seconds is not a hole. Each pair
   off WS is polled at most once per ``rest_poll_interval`` (2 s of one 24 h ticker call
   keeps far inside Binance's 1200 weight/minute; a ``Retry-After`` pauses polling).
3. ``CACHE`` when REST is failing too, *or* the pair has had no fresh data for
   ``stale_after`` whatever REST is doing (paused by a ``Retry-After`` of a minute, slow,
   throttled): the last value is re-published marked stale, at once and then at most
   once per ``rest_poll_interval`` so viewers see it age. REST keeps being polled at its
   pace, and the first success brings the pairs back to ``REST``.

A pair is *stale* (:meth:`Cascade.is_stale`) when no fresh WS or REST data came for
``stale_after``, and always while it is served from ``CACHE``: no working source can vouch
for the price, so it is never shown as live. Because stale implies ``CACHE``, a stale
pair is always *published* stale at ``stale_after``: consumers learn it from the data,
not only from a health endpoint.

Call pattern (the relay owns the clock and the I/O; this class only decides)::

    res = settings.resilience
    cascade = Cascade(pairs, res.fallback, stale_after=res.heartbeat.stale_after)
    # WS adapter:
    cascade.ws_state(True, now)            # connected and breaker closed
    cascade.ws_update("BTC/USD", now)      # each frame; publish it with source="ws"
    cascade.ws_state(False, now)           # dropped / breaker open
    # relay loop, woken at least by cascade.next_due(now):
    for pair in cascade.rest_due(now):     # these count as polled at `now`
        ...                                # poll them (one batched request)
    # then, per pair in a good response:  cascade.rest_success(pair, now), publish "rest"
    # or for a failed request:             cascade.rest_failure(now, retry_after=...)
    for pair in cascade.cache_due(now):    # these count as re-published at `now`
        ...                                # re-publish the last value: source="cache", stale

Example::

    c = Cascade(["BTC/USD"], FallbackPolicy(rest_poll_interval=2, rest_failures_before_cache=3),
                stale_after=30)
    c.ws_state(True, 0.0); c.ws_update("BTC/USD", 0.0)
    c.source("BTC/USD", 1.0)        # Source.WS
    c.ws_state(False, 5.0)
    c.rest_due(5.0)                 # ["BTC/USD"]
    c.rest_failure(5.0); c.rest_failure(7.0); c.rest_failure(9.0)
    c.source("BTC/USD", 9.0)        # Source.CACHE
    c.cache_due(9.0)                # ["BTC/USD"]

The tracked pairs change with :meth:`Cascade.set_pairs` (kept pairs keep their state);
``ws_state(healthy, now, down)`` can name pairs whose own WebSocket connection is down
while others are up (several connections share the pairs).

Pure: time is ``now``, monotonic seconds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from pricectl.core.duration import duration
from pricectl.core.heartbeat import Staleness
from pricectl.core.policy import Rules

__all__ = ["Cascade", "FallbackPolicy", "Source"]


class Source(enum.StrEnum):
    """Where a pair's price comes from; the value is the update's ``source`` field."""

    WS = "ws"
    REST = "rest"
    CACHE = "cache"


@dataclass(frozen=True)
class FallbackPolicy:
    """Pace of the cascade off WS (config ``resilience.fallback``); defaults match
    ``config/pricectl.yaml``.

    When a pair counts as stale is the heartbeat's ``stale_after``, passed to the
    :class:`Cascade` beside this policy: the config keeps it in ``resilience.heartbeat``
    because the WebSocket's idle check and the pair's staleness are the same question
    about silence, and the cascade is only one of the places that ask it.
    """

    rest_poll_interval: float = duration(2.0)
    rest_failures_before_cache: int = 3

    def __post_init__(self) -> None:
        rules = Rules(self)
        rules.require(
            self.rest_poll_interval > 0, "rest_poll_interval", "must be greater than 0", got=False
        )
        rules.finite("rest_poll_interval")
        rules.require(
            self.rest_failures_before_cache >= 1,
            "rest_failures_before_cache",
            "must be at least 1",
            got=False,
        )
        rules.check()


class Cascade:
    """The per-pair source decision for a set of pairs (changed with :meth:`set_pairs`);
    see the module docstring."""

    def __init__(
        self,
        pairs: Iterable[str],
        policy: FallbackPolicy | None = None,
        *,
        stale_after: float = 30.0,
    ) -> None:
        self.pairs: tuple[str, ...] = tuple(dict.fromkeys(pairs))
        self._known = frozenset(self.pairs)
        self.policy = policy if policy is not None else FallbackPolicy()
        self._fresh = Staleness(stale_after)
        #: Seconds without a fresh update after which a pair is stale (and off WS).
        self.stale_after = self._fresh.stale_after
        self._ws_healthy = False
        self._ws_down: frozenset[str] = frozenset()
        self._ws_last: dict[str, float] = {}
        self._rest_failures = 0
        self._rest_paused_until = -math.inf
        self._polled_at: dict[str, float] = {}
        self._cached_at: dict[str, float] = {}

    # -- observability -------------------------------------------------------------------

    @property
    def ws_healthy(self) -> bool:
        """The last :meth:`ws_state` report."""
        return self._ws_healthy

    @property
    def known(self) -> frozenset[str]:
        """The tracked pairs, as a set (for membership tests on a hot path)."""
        return self._known

    @property
    def rest_failures(self) -> int:
        """Consecutive failed REST polls (reset by any success)."""
        return self._rest_failures

    def age(self, pair: str, now: float) -> float | None:
        """Seconds since the last fresh WS or REST data for ``pair`` (``None`` if never)."""
        self._check(pair)
        return self._fresh.age(pair, now)

    def sources(self, now: float) -> dict[str, Source]:
        """Every pair's source at ``now`` (for ``/health``)."""
        return {p: self.source(p, now) for p in self.pairs}

    # -- the tracked pairs -----------------------------------------------------------------

    def set_pairs(self, pairs: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        """Track exactly ``pairs`` from ``now`` on; ``(added, removed)``, each in order.

        Pairs kept keep their state. A removed pair's state is forgotten (added again
        later, it starts afresh). An added pair counts as polled at ``now``: the caller
        fetches its snapshot itself, so its first REST poll is due one
        ``rest_poll_interval`` later, not at once.
        """
        wanted = tuple(dict.fromkeys(pairs))
        keep = frozenset(wanted)
        added = [p for p in wanted if p not in self._known]
        removed = [p for p in self.pairs if p not in keep]
        for p in removed:
            self._ws_last.pop(p, None)
            self._polled_at.pop(p, None)
            self._cached_at.pop(p, None)
            self._fresh.forget(p)
        for p in added:
            self._polled_at[p] = now
        self.pairs = wanted
        self._known = keep
        return added, removed

    # -- events --------------------------------------------------------------------------

    def ws_state(self, healthy: bool, now: float, down: frozenset[str] = frozenset()) -> None:
        """Report the WebSocket as usable (breaker closed) or not, from ``now``; ``down``
        are the pairs whose own connection is down (several connections share the pairs:
        one dropping takes only its pairs off WS at once)."""
        self._ws_healthy = healthy
        self._ws_down = down

    def ws_update(self, pair: str, now: float) -> None:
        """A WS update of ``pair`` arrived at ``now`` (and is being published as ``ws``)."""
        self._check(pair)
        self._ws_last[pair] = now
        self._fresh.seen(pair, now)

    def rest_success(self, pair: str, now: float) -> None:
        """A REST poll returned fresh data for ``pair`` at ``now``; REST counts as working."""
        self._check(pair)
        self._rest_failures = 0
        self._fresh.seen(pair, now)

    def rest_failure(self, now: float, retry_after: float = 0.0) -> None:
        """One REST poll failed at ``now``; ``retry_after`` (a 429's header) pauses polling."""
        self._rest_failures += 1
        if retry_after > 0:
            self._rest_paused_until = max(self._rest_paused_until, now + retry_after)

    # -- decisions -----------------------------------------------------------------------

    def source(self, pair: str, now: float) -> Source:
        """Which source serves ``pair`` at ``now`` (the cascade in the module docstring)."""
        self._check(pair)
        if self._on_ws(pair, now):
            return Source.WS
        if self._rest_failures >= self.policy.rest_failures_before_cache:
            return Source.CACHE
        if self._fresh.is_stale(pair, now) and self._fresh.age(pair, now) is not None:
            return Source.CACHE
        return Source.REST

    def is_stale(self, pair: str, now: float) -> bool:
        """No fresh WS/REST data for ``stale_after`` (or never), or served from the cache."""
        return self._fresh.is_stale(pair, now) or self.source(pair, now) is Source.CACHE

    def rest_due(self, now: float) -> list[str]:
        """Pairs off WS whose REST poll is due at ``now``; they count as polled at ``now``.

        Empty while a ``retry_after`` pause runs. A pair that just left WS is due at once.
        """
        if now < self._rest_paused_until:
            return []
        due = [
            p
            for p in self.pairs
            if not self._on_ws(p, now) and self._elapsed(self._polled_at.get(p), now)
        ]
        for p in due:
            self._polled_at[p] = now
        return due

    def cache_due(self, now: float) -> list[str]:
        """``CACHE`` pairs to re-publish (stale) at ``now``; they count as re-published.

        Each pair at most once per ``rest_poll_interval``; a pair entering ``CACHE`` is due
        at once. The relay re-publishes its last value of the pair, if it has one.
        """
        due = [
            p
            for p in self.pairs
            if self.source(p, now) is Source.CACHE and self._elapsed(self._cached_at.get(p), now)
        ]
        for p in due:
            self._cached_at[p] = now
        return due

    def next_due(self, now: float) -> float:
        """The earliest instant at which a decision may change without new events.

        A relay loop sleeps until ``min(next_due(now), <next I/O event>)``; never before
        ``now``. Covers WS pairs going stale, REST polls and cache re-publishes coming due.
        """
        interval = self.policy.rest_poll_interval
        candidates: list[float] = []
        for p in self.pairs:
            if self._on_ws(p, now):
                candidates.append(self._ws_last[p] + self.stale_after)
                continue
            polled = self._polled_at.get(p)
            poll_at = -math.inf if polled is None else polled + interval
            candidates.append(max(self._rest_paused_until, poll_at))
            if self.source(p, now) is Source.CACHE:
                cached = self._cached_at.get(p)
                candidates.append(-math.inf if cached is None else cached + interval)
            else:
                # Only a future flip: a past one needs no action and would make this ``now``.
                stale_at = self._fresh.stale_at(p)
                if stale_at is not None and stale_at > now:
                    candidates.append(stale_at)
        if not candidates:
            return now + interval
        return max(now, min(candidates))

    # -- internals -----------------------------------------------------------------------

    def _on_ws(self, pair: str, now: float) -> bool:
        last = self._ws_last.get(pair)
        return (
            self._ws_healthy
            and last is not None
            and now < last + self.stale_after
            and pair not in self._ws_down
        )

    def _elapsed(self, last: float | None, now: float) -> bool:
        return last is None or now >= last + self.policy.rest_poll_interval

    def _check(self, pair: str) -> None:
        if pair not in self._known:
            raise KeyError(f"unknown pair {pair!r}; the cascade tracks {', '.join(self.pairs)}")
