"""Liveness by silence: an idle connection, a stale pair (docs/architecture.md,
"The resilience core").

Two different questions, two classes, and :class:`HeartbeatPolicy` holding both limits
(config ``resilience.heartbeat``):

- :class:`IdleDetector`: has the *connection* said nothing (no frame at all) for
  ``idle_timeout``? Then it is half-dead (a NAT dropped it, the exchange hung) even though
  TCP never noticed: reconnect.
- :class:`Staleness`: has a *pair* had no fresh update for ``stale_after``? Then its last
  price must be shown as stale: a frozen price is never shown as live.

Both compare ``now >= last + limit``, with the deadline computed from the same two floats
every time, so the flip happens exactly at ``last + limit`` (no ``now - last`` rounding that
could make a reading flicker right at the threshold). Time is ``now``, monotonic seconds::

    idle = IdleDetector(30.0)
    idle.started(now=0.0)
    idle.seen(now=10.0)
    idle.is_idle(now=39.9), idle.is_idle(now=40.0)   # (False, True)

    fresh = Staleness(30.0)
    fresh.seen("BTC/USD", now=5.0)
    fresh.stale_pairs(["BTC/USD", "ETH/USD"], now=20.0)  # ["ETH/USD"]: never seen
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pricectl.core.duration import duration
from pricectl.core.policy import Rules

__all__ = ["HeartbeatPolicy", "IdleDetector", "Staleness"]


@dataclass(frozen=True)
class HeartbeatPolicy:
    """How long a silence may last: ``idle_timeout`` for a connection (any frame at all),
    ``stale_after`` for a pair (a fresh update). Both finite and greater than 0.

    30 s each by default: Binance's ticker streams send every second and its server pings
    come every 20 s, so 30 s of nothing is never a quiet market.
    """

    idle_timeout: float = duration(30.0)
    stale_after: float = duration(30.0)

    def __post_init__(self) -> None:
        rules = Rules(self)
        for name in ("idle_timeout", "stale_after"):
            rules.require(getattr(self, name) > 0, name, "must be greater than 0", got=False)
        rules.finite("idle_timeout", "stale_after")
        rules.check()


def _check_limit(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    return float(value)


class IdleDetector:
    """Idle when nothing arrived for ``idle_timeout`` since the last frame or the start."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = _check_limit("idle_timeout", idle_timeout)
        self._last: float | None = None

    @property
    def last_seen(self) -> float | None:
        """Time of the last frame (or of :meth:`started`); ``None`` before either."""
        return self._last

    def started(self, now: float) -> None:
        """The connection opened at ``now``: the baseline the first frame must beat."""
        self._last = now

    def seen(self, now: float) -> None:
        """A frame (any frame: data, ping, pong) arrived at ``now``."""
        self._last = now

    def deadline(self) -> float | None:
        """The instant the connection becomes idle if nothing arrives; ``None`` before start."""
        return None if self._last is None else self._last + self.idle_timeout

    def is_idle(self, now: float) -> bool:
        """True iff started and ``now >= last_seen + idle_timeout``. Never idle before start."""
        deadline = self.deadline()
        return deadline is not None and now >= deadline


class Staleness:
    """Per-pair freshness: stale when never seen, or no update for ``stale_after`` seconds."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = _check_limit("stale_after", stale_after)
        self._last: dict[str, float] = {}

    def seen(self, pair: str, now: float) -> None:
        """A fresh update of ``pair`` arrived at ``now``."""
        self._last[pair] = now

    def last_seen(self, pair: str) -> float | None:
        """When ``pair`` last had a fresh update, or ``None`` if never."""
        return self._last.get(pair)

    def age(self, pair: str, now: float) -> float | None:
        """Seconds since the last fresh update of ``pair`` (``None`` if never seen)."""
        last = self._last.get(pair)
        return None if last is None else now - last

    def stale_at(self, pair: str) -> float | None:
        """The instant ``pair`` turns stale if nothing new arrives; ``None`` if never seen."""
        last = self._last.get(pair)
        return None if last is None else last + self.stale_after

    def is_stale(self, pair: str, now: float) -> bool:
        """True when ``pair`` was never seen or ``now >= last_seen + stale_after``."""
        deadline = self.stale_at(pair)
        return deadline is None or now >= deadline

    def forget(self, pair: str) -> None:
        """Drop what is known of ``pair`` (it is no longer tracked)."""
        self._last.pop(pair, None)

    def stale_pairs(self, pairs: Iterable[str], now: float) -> list[str]:
        """The stale ones among ``pairs``, in the order given."""
        return [p for p in pairs if self.is_stale(p, now)]
