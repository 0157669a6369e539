"""The exchange's rate limits, kept on our side so Binance never has to enforce them.

Binance disconnects a WebSocket that receives more than **5 messages per second** and
may ban an IP that opens more than **300 connections per 5 minutes** or keeps going
after a REST 429 (docs/binance.md §3 and §5, from Binance's documentation). The adapters ask
this module before each send, connect or REST request:

- :class:`SlidingWindow` -- at most ``limit`` events in *any* window of ``window``
  seconds (a log of the last ``limit`` event times, so the bound is exact rather than
  the "up to twice the rate across a boundary" of fixed windows). Used for outgoing
  WS messages (:meth:`SlidingWindow.per_second`) and for connection attempts.
- :class:`WeightBudget` -- REST request weight per wall-clock minute, fed from the
  ``X-MBX-USED-WEIGHT-1M`` header, plus the ``Retry-After`` pause of a 429/418.

Pure: time is an argument. ``SlidingWindow`` takes monotonic seconds; ``WeightBudget``
takes wall-clock seconds because Binance's weight minute is a calendar minute::

    sends = SlidingWindow.per_second(4.0)
    sends.try_acquire(now=0.0)      # True (x4), then False until now >= 1.0
    sends.wait_time(now=0.5)        # 0.5

    budget = WeightBudget(1200)
    budget.record_used(1190, wall=60.5)
    budget.wait_time(weight=20, wall=61.0)   # 59.0: wait for the next minute
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingWindow", "WeightBudget"]


def _until(deadline: float, now: float) -> float:
    """``deadline - now``, nudged up so that ``now + result >= deadline`` holds in floats.

    Without the nudge, an adapter that sleeps exactly the returned time can land one
    rounding error short of the deadline and be refused again.
    """
    wait = deadline - now
    if wait <= 0.0:
        return 0.0
    while now + wait < deadline:
        wait = math.nextafter(wait, math.inf)
    return wait


class SlidingWindow:
    """At most ``limit`` events in any half-open interval ``(t - window, t]``.

    Precisely (in floats): an event at ``u`` counts at ``t`` while ``u + window > t``.

    An event may happen at ``now`` iff fewer than ``limit`` recorded events are younger
    than ``window``: the oldest of the last ``limit`` must be at least ``window`` old.
    Times passed in must not go backwards (monotonic clock).
    """

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError(f"rate limit must allow at least 1 event, got {limit}")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"rate window must be a finite number of seconds > 0, got {window}")
        self.limit = int(limit)
        self.window = float(window)
        self._times: deque[float] = deque(maxlen=self.limit)

    @classmethod
    def per_second(cls, rate: float, slack: float = 0.0) -> SlidingWindow:
        """A limiter for "``rate`` messages per second" that never exceeds it in any second.

        ``rate`` >= 1 becomes ``floor(rate)`` per 1 s (4.5/s -> 4 per second: a fractional
        allowance would let a second hold one more than ``rate``); ``rate`` < 1 becomes one
        event per ``1 / rate`` seconds. ``slack`` seconds are added to the window because
        the server counts *arrival* times: a burst sent at ``t`` and the next at ``t + 1``
        can arrive bunched within one second when the first was delayed in the network.
        """
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number > 0, got {rate}")
        if not (slack >= 0 and math.isfinite(slack)):
            raise ValueError(f"slack must be a finite number >= 0, got {slack}")
        if rate >= 1:
            return cls(int(rate), 1.0 + slack)
        return cls(1, 1.0 / rate + slack)

    def wait_time(self, now: float) -> float:
        """Seconds from ``now`` until an event would be allowed (0.0 if it is now)."""
        if len(self._times) < self.limit:
            return 0.0
        return _until(self._times[0] + self.window, now)

    def try_acquire(self, now: float) -> bool:
        """Record an event at ``now`` if the limit allows it; False (nothing recorded) if not."""
        if self.wait_time(now) > 0.0:
            return False
        self._times.append(now)
        return True

    def count(self, now: float) -> int:
        """Events recorded in the window ending at ``now`` (for metrics)."""
        return sum(1 for t in self._times if t + self.window > now)


class WeightBudget:
    """REST request weight of the current wall-clock window, against our own ``budget``.

    Binance counts weight per IP per calendar minute and reports the total so far in
    ``X-MBX-USED-WEIGHT-1M`` on every response. We keep ``budget`` (below Binance's 6000,
    default 1200) so one relay never eats the IP's whole allowance; a request whose
    weight would take the minute past it waits for the next minute instead.

    ``window_s`` is the length of that calendar window: 60 for Binance's minute; the
    local exchange counts its clients' weight with the same class and may shorten it.

    A 429 or 418 carries ``Retry-After`` seconds: :meth:`pause` stops every request until
    then (a 418 is an IP ban that grows with each offence, so hammering is the worst
    thing to do).
    """

    __slots__ = ("_paused_until", "_window", "budget", "used", "window_s")

    def __init__(self, budget: int, window_s: float = 60.0) -> None:
        if budget < 1:
            raise ValueError(f"REST weight budget must be at least 1, got {budget}")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(
                f"weight window must be a finite number of seconds > 0, got {window_s}"
            )
        self.budget = int(budget)
        self.window_s = float(window_s)
        #: Weight used in the current window, as far as we know.
        self.used = 0
        self._window = -1
        self._paused_until = -math.inf

    @property
    def paused_until(self) -> float:
        """Wall-clock time until which requests are paused (``-inf`` if never)."""
        return self._paused_until

    def _roll(self, wall: float) -> None:
        window = int(wall // self.window_s)
        if window != self._window:
            self._window = window
            self.used = 0

    def window_end(self, wall: float) -> float:
        """Wall-clock time at which the window containing ``wall`` ends and its weight resets."""
        return (int(wall // self.window_s) + 1) * self.window_s

    def used_at(self, wall: float) -> int:
        """Weight used in the window containing ``wall`` (0 once that window is new)."""
        self._roll(wall)
        return self.used

    def record_used(self, used: int, wall: float) -> None:
        """The server said ``used`` weight is spent this window (the header's value)."""
        self._roll(wall)
        # Responses can arrive out of order: keep the highest figure of the window.
        self.used = max(self.used, int(used))

    def charge(self, weight: int, wall: float) -> None:
        """Count a request we are about to send (before its header tells the real total)."""
        self._roll(wall)
        self.used += int(weight)

    def pause(self, retry_after: float, wall: float) -> None:
        """A 429/418 said wait ``retry_after`` seconds from ``wall``."""
        self._paused_until = max(self._paused_until, wall + max(0.0, retry_after))

    def wait_time(self, weight: int, wall: float) -> float:
        """Seconds to wait before a request of ``weight`` may go out (0.0 = now).

        Waits out a Retry-After pause, and the rest of the window when ``weight`` would
        take this window past the budget. A request heavier than the whole budget is
        allowed at the start of a window (otherwise it could never be sent).
        """
        if wall < self._paused_until:
            return _until(self._paused_until, wall)
        self._roll(wall)
        if self.used + weight <= self.budget or self.used == 0:
            return 0.0
        return _until(self.window_end(wall), wall)
