"""Reconnect delays: exponential, capped, full jitter, reset after a healthy period
(docs/architecture.md, "The resilience core").

Delay ``n`` (counting from 0) is ``rand() * min(max, initial * multiplier**n)``: "full
jitter" in the AWS Architecture Blog's terms. Spreading each delay over the whole
``[0, cap)`` range is what stops a fleet of relays that lost Binance at the same moment
from reconnecting in lock-step; the cap keeps a long outage from turning into hour-long
waits once the exchange is back.

A connection that stayed up for ``reset_after`` seconds counts as healthy: the next drop
starts again from ``initial`` instead of carrying on from the previous outage's delays.

Pure: no clock, no sleeping. Time is ``now`` (monotonic seconds) and randomness is an
injected ``rand()`` returning a float in ``[0, 1)``, so tests can pin the exact sequence::

    backoff = Backoff(BackoffPolicy(), rand=lambda: 0.5)
    backoff.next_delay(now=0.0)  # 0.5  (cap 1 s)
    backoff.next_delay(now=1.0)  # 1.0  (cap 2 s)
    backoff.connected(now=2.0)
    backoff.next_delay(now=70.0)  # 0.5  (healthy for 68 s >= reset_after: schedule restarts)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pricectl.core.duration import duration
from pricectl.core.policy import Rules

__all__ = ["Backoff", "BackoffPolicy", "delays"]

#: A source of uniform floats in ``[0, 1)``; ``random.random`` in production.
Rand = Callable[[], float]


@dataclass(frozen=True)
class BackoffPolicy:
    """The schedule's shape (config ``resilience.backoff``). Defaults: 1 s doubling to 60 s,
    reset after 60 s of health.

    ``reset_after`` equals ``max`` so that a connection which survives one full maximum
    delay's worth of time is trusted again. Requires ``0 < initial <= max`` and
    ``multiplier >= 1``, all finite: a zero ``initial`` would reconnect in a tight loop,
    a ``max`` below ``initial`` is a typo more often than a wish.
    """

    initial: float = duration(1.0)
    max: float = duration(60.0)
    multiplier: float = 2.0
    reset_after: float = duration(60.0)

    def __post_init__(self) -> None:
        rules = Rules(self)
        rules.require(self.initial > 0, "initial", "must be greater than 0", got=False)
        rules.require(self.max >= self.initial, "max", "must be at least", than="initial")
        rules.require(self.multiplier >= 1, "multiplier", "must be >= 1")
        rules.require(self.reset_after >= 0, "reset_after", "must be >= 0")
        rules.finite("initial", "max", "multiplier")
        rules.check()

    def cap(self, attempt: int) -> float:
        """Upper bound of delay number ``attempt`` (0-based): ``min(max, initial * mult**n)``.

        Computed without overflowing: after a few hundred attempts ``mult**n`` would not fit
        in a float, but the answer is simply ``max`` by then.
        """
        if attempt <= 0:
            return self.initial
        try:
            grown = self.initial * self.multiplier**attempt
        except OverflowError:
            return self.max
        return min(self.max, grown)


def _jitter(cap: float, rand: Rand) -> float:
    """``rand() * cap`` clamped to ``[0, cap]``, so a misbehaving ``rand`` cannot break the cap."""
    return min(cap, max(0.0, rand() * cap))


def delays(policy: BackoffPolicy | None = None, rand: Rand = random.random) -> Iterator[float]:
    """Endless full-jitter delays for ``policy``; ``next()`` after each failed attempt.

    The plain-iterator form of the schedule, for loops that never see a healthy period
    (a REST retry, a test's fast policy). Reconnect loops want :class:`Backoff`.
    """
    policy = policy if policy is not None else BackoffPolicy()
    attempt = 0
    while True:
        yield _jitter(policy.cap(attempt), rand)
        attempt += 1


class Backoff:
    """The reconnect schedule of one connection, with the healthy-period reset.

    Call pattern in a reconnect loop::

        backoff = Backoff(settings.resilience.backoff)
        while True:
            try:
                ws = await connect()
            except OSError:
                await asyncio.sleep(backoff.next_delay(time.monotonic()))
                continue
            backoff.connected(time.monotonic())
            await serve(ws)                      # returns when the connection drops
            await asyncio.sleep(backoff.next_delay(time.monotonic()))
    """

    def __init__(self, policy: BackoffPolicy | None = None, rand: Rand = random.random) -> None:
        self.policy = policy if policy is not None else BackoffPolicy()
        self._rand = rand
        self._attempt = 0
        self._connected_at: float | None = None

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset (0 = next one is the first)."""
        return self._attempt

    @property
    def connected_at(self) -> float | None:
        """When the current connection came up, or ``None`` while not connected."""
        return self._connected_at

    def connected(self, now: float) -> None:
        """The connection is up at ``now``; if it lasts ``reset_after``, the schedule restarts."""
        self._connected_at = now

    def reset(self) -> None:
        """Start the schedule again from ``initial`` (e.g. after a deliberate reconnect)."""
        self._attempt = 0
        self._connected_at = None

    def next_delay(self, now: float) -> float:
        """The delay to wait after a failed attempt or a drop at ``now``: in ``[0, max]``.

        If the connection had been up since :meth:`connected` for at least ``reset_after``,
        this drop is treated as the first failure of a new outage.
        """
        if self._connected_at is not None and now - self._connected_at >= self.policy.reset_after:
            self._attempt = 0
        self._connected_at = None
        delay = _jitter(self.policy.cap(self._attempt), self._rand)
        self._attempt += 1
        return delay
