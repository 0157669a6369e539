"""A gate for log lines about a recurring problem: one per key per interval, counting the rest.

A feed that sends garbage at 1000 frames a second, or a bus that refuses every publish
while Redis is down, must not write 1000 lines a second. The gate decides, per key
(the kind of problem), whether a line may go out now, and counts the ones it held back
so the next line can say how many there were. It writes nothing itself:
:class:`pricectl.logs.RateLimitedLog` is the logger built on it, and an adapter with
its own clock may ask the gate directly.

Pure: time is an argument (monotonic seconds)::

    gate = LogGate(interval_s=10.0)
    gate.allow("invalid_json", now=0.0)     # True: log it
    gate.allow("invalid_json", now=1.0)     # False: held back, counted
    gate.allow("invalid_json", now=10.0)    # True
    gate.take_suppressed("invalid_json")    # 1: "and 1 more since last report"
"""

from __future__ import annotations

from collections import Counter

__all__ = ["LogGate"]


class LogGate:
    """At most one log line per ``interval_s`` per key, counting what it held back.

    A caller logs only when ``allow(key, now)`` is true, and then says how many of the
    same kind were held back since its last line (:meth:`take_suppressed`), so a feed
    sending garbage at 1000 frames/s produces one line per interval, not 1000.
    """

    __slots__ = ("_last", "_suppressed", "interval_s")

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def allow(self, key: str, now: float) -> bool:
        """True if a line for ``key`` may be logged at monotonic time ``now``."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] += 1
            return False
        self._last[key] = now
        return True

    def take_suppressed(self, key: str) -> int:
        """How many lines for ``key`` were held back since the last allowed one (resets)."""
        return self._suppressed.pop(key, 0)
