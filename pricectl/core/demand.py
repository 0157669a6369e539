"""Which pairs the cluster subscribes to: the pinned ones and those browsers want.

Every serve process records, for each pair its clients watch (or asked ``/prices``
of), the wall-clock time it was last wanted; the bus keeps the newest time per pair
for the whole cluster (docs/protocol.md, "Pairs on demand"). The leader subscribes to
:meth:`Demand.active`: the pinned pairs (``pairs:`` in the config, always on) and the
most recently wanted others, at most ``max_pairs`` in all. A pair nobody has wanted for
``idle_grace`` seconds drops out (:meth:`Demand.expire`); when more are wanted than the
cap allows, the least recently wanted go first (eviction). A pair wanted within
``busy_window`` (a serve renews what its clients watch every ``refresh``) is being
watched now and never drops out, however short ``idle_grace`` is:
:attr:`DemandPolicy.expiry` is the longer of the two.

A new pair is only let in when it would not push out a pair someone is watching
*now* (wanted within ``busy_window``): :meth:`Demand.admit` says why not otherwise,
and :class:`Activations` bounds how fast a client (by IP) and the whole process turn
inactive pairs on, so a client cycling through thousands of pairs is told "slow down"
instead of making the leader churn subscriptions past Binance's limits.

Pure: time is an argument (wall-clock seconds for the wanted times, because serve
processes on several hosts compare them; monotonic for the rate windows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pricectl.core.ratelimit import SlidingWindow

__all__ = ["MIN_IDLE_GRACE", "Activations", "Demand", "DemandPolicy"]

#: The shortest ``exchange.idle_grace`` the config accepts (seconds): three wanted-set
#: renewals (``refresh`` is a third of the grace) of at least a third of a second each.
MIN_IDLE_GRACE = 1.0


@dataclass(frozen=True)
class DemandPolicy:
    """How long a pair stays after its last viewer, the cap, and the activation rates.

    ``idle_grace``: seconds a pair stays subscribed after it was last wanted (a browser
    that reloads, or switches back, finds it still live). ``refresh``: how often a serve
    re-records the pairs its clients watch; a third of ``idle_grace`` or less, so one late
    refresh does not drop a watched pair. ``busy_window``: a pair wanted within it counts
    as watched now and is never evicted to make room. ``per_ip`` / ``total``: at most
    that many activations of inactive pairs per ``window`` seconds, per client address
    and per serve process.
    """

    idle_grace: float = 60.0
    max_pairs: int = 1500
    refresh: float = 5.0
    per_ip: int = 20
    total: int = 200
    window: float = 60.0

    def __post_init__(self) -> None:
        if not (self.idle_grace > 0 and math.isfinite(self.idle_grace)):
            raise ValueError(f"idle_grace must be a number of seconds > 0, got {self.idle_grace}")
        if self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {self.max_pairs}")
        if not 0 < self.refresh <= self.idle_grace:
            raise ValueError(f"refresh must be above 0 and at most idle_grace, got {self.refresh}")
        if self.per_ip < 1 or self.total < 1:
            raise ValueError("activation limits must allow at least 1 per window")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"window must be a number of seconds > 0, got {self.window}")

    @property
    def busy_window(self) -> float:
        """Wanted within this many seconds: somebody watches it now (two refreshes)."""
        return 2.0 * self.refresh + 1.0

    @property
    def expiry(self) -> float:
        """Seconds after its last want that a pair is forgotten: ``idle_grace``, but never
        less than ``busy_window``, so a pair a serve still renews is never dropped."""
        return max(self.idle_grace, self.busy_window)


class Demand:
    """Pinned pairs plus wanted pairs with their last-wanted wall time; see the module."""

    __slots__ = ("pinned", "policy", "wanted")

    def __init__(self, pinned: Iterable[str], policy: DemandPolicy) -> None:
        self.pinned: tuple[str, ...] = tuple(dict.fromkeys(pinned))
        self.policy = policy
        #: Pair -> wall-clock time it was last wanted (pinned pairs are not kept here).
        self.wanted: dict[str, float] = {}

    def want(self, pairs: Iterable[str], now: float) -> list[str]:
        """Record ``pairs`` wanted at ``now``; the ones that were not wanted before."""
        new: list[str] = []
        pinned = self.pinned
        for p in pairs:
            if p in pinned:
                continue
            if p not in self.wanted:
                new.append(p)
            if self.wanted.get(p, -math.inf) < now:
                self.wanted[p] = now
        return new

    def replace(self, wanted: Mapping[str, float]) -> None:
        """Take the cluster's whole wanted set (as read from the bus)."""
        self.wanted = {p: t for p, t in wanted.items() if p not in self.pinned}

    def expire(self, now: float) -> list[str]:
        """Forget pairs not wanted for :attr:`~DemandPolicy.expiry`; those forgotten."""
        limit = now - self.policy.expiry
        gone = [p for p, t in self.wanted.items() if t <= limit]
        for p in gone:
            del self.wanted[p]
        return gone

    def active(self, now: float) -> tuple[str, ...]:
        """What to subscribe to: pinned, then the most recently wanted (within
        :attr:`~DemandPolicy.expiry`) up to ``max_pairs`` in all; ties broken by name."""
        room = max(0, self.policy.max_pairs - len(self.pinned))
        limit = now - self.policy.expiry
        live = [(t, p) for p, t in self.wanted.items() if t > limit]
        live.sort(key=lambda tp: (-tp[0], tp[1]))
        chosen = sorted(p for _, p in live[:room])
        return self.pinned + tuple(chosen)

    def busy(self, now: float) -> int:
        """Wanted pairs somebody watches now (wanted within ``busy_window``)."""
        limit = now - self.policy.busy_window
        return sum(1 for t in self.wanted.values() if t > limit)

    def admit(self, pair: str, now: float) -> str | None:
        """Why ``pair`` cannot be turned on now (one sentence), or None.

        A pair already pinned or wanted is always admitted. A new one is refused only
        when every slot of ``max_pairs`` holds a pinned pair or one watched now:
        admitting it would evict somebody's live prices.
        """
        if pair in self.pinned or pair in self.wanted:
            return None
        used = len(self.pinned) + self.busy(now)
        if used >= self.policy.max_pairs:
            return (
                f"the cluster serves its maximum of {self.policy.max_pairs} pairs "
                "(exchange.max_pairs), all of them watched now; try again later"
            )
        return None


class Activations:
    """How fast inactive pairs may be turned on: per client address and for the process.

    :meth:`allow` takes a monotonic ``now``. The per-address windows of addresses that
    have been quiet for a whole window are dropped (:meth:`prune`), so a stream of new
    addresses cannot grow memory without bound.
    """

    __slots__ = ("_by_ip", "_total", "policy", "refused")

    def __init__(self, policy: DemandPolicy) -> None:
        self.policy = policy
        self._total = SlidingWindow(policy.total, policy.window)
        self._by_ip: dict[str, SlidingWindow] = {}
        #: Activations refused, by reason ("per_ip", "total").
        self.refused: dict[str, int] = {}

    def allow(self, ip: str, count: int, now: float) -> str | None:
        """Record ``count`` activations from ``ip`` at ``now``; why not (one sentence) or None.

        All or nothing: a request naming three new pairs takes three slots or none.
        """
        if count <= 0:
            return None
        p = self.policy
        mine = self._by_ip.get(ip)
        if mine is None:
            if len(self._by_ip) > 10_000:
                self.prune(now)
            mine = self._by_ip[ip] = SlidingWindow(p.per_ip, p.window)
        if mine.count(now) + count > p.per_ip:
            self.refused["per_ip"] = self.refused.get("per_ip", 0) + 1
            return (
                f"too many new pairs from {ip}: at most {p.per_ip} per {p.window:g}s "
                f"(server.activations_per_ip); retry in {max(1.0, mine.wait_time(now)):.0f}s"
            )
        if self._total.count(now) + count > p.total:
            self.refused["total"] = self.refused.get("total", 0) + 1
            return (
                f"too many new pairs on this server: at most {p.total} per {p.window:g}s "
                f"(server.activations); retry in {max(1.0, self._total.wait_time(now)):.0f}s"
            )
        for _ in range(count):
            mine.try_acquire(now)
            self._total.try_acquire(now)
        return None

    def retry_after(self, ip: str, now: float) -> float:
        """Seconds until ``ip`` may activate one more pair."""
        mine = self._by_ip.get(ip)
        wait = mine.wait_time(now) if mine is not None else 0.0
        return max(wait, self._total.wait_time(now))

    def prune(self, now: float) -> None:
        """Drop the windows of addresses with nothing in the current window."""
        for ip in [ip for ip, w in self._by_ip.items() if w.count(now) == 0]:
            del self._by_ip[ip]
