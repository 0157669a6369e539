"""Leader lease timing: when to renew, when to step down, how long standbys wait
(docs/architecture.md, "The lease").

The lease lives in Redis (``SET pricectl:leader <token> NX PX <ttl>``, renewed by
compare-and-extend); this module only decides *when*. Defaults follow client-go's leader
election: ``ttl`` 15 s, ``renew_deadline`` 10 s, ``retry`` 2 s.

- The leader tries to renew every ``retry`` seconds, whether the last try worked or not.
- If no renewal has succeeded for ``renew_deadline`` (measured on the local monotonic
  clock), it steps down: stop publishing, close the exchange socket. Because
  ``renew_deadline < ttl``, it has stopped before Redis can let the key expire and a
  standby can take over, so two leaders never publish at once by the timers alone (the
  fenced publish in Redis is the second line of defence: docs/architecture.md, "The bus").
- A standby tries to acquire every :attr:`LeasePolicy.watch` seconds (0.3 s with the
  defaults), jittered by up to 50% so standbys started together do not hit Redis in
  lock-step. Each attempt also asks Redis whether the holder still has a connection
  (its presence channel: docs/architecture.md, "The lease"), so a crashed leader is replaced
  within about a watch period; after a Redis error the standby waits ``retry`` instead.
- A leader publishes only while :meth:`LeaseClock.may_publish` holds: its last successful
  renew is younger than ``renew_deadline``. The relay asks before every publish, so a
  process that wakes from a freeze publishes nothing before it notices it must step down.

Pass the monotonic time taken *before* sending the acquire or renew command: Redis starts
the TTL when it runs the command, which is no earlier, so the local deadline stays on the
safe side of the real expiry::

    clock = LeaseClock(LeasePolicy())
    clock.acquired(now=0.0)
    clock.should_renew(1.0), clock.should_renew(2.0)   # (False, True)
    clock.renew_failed(2.0); clock.renew_failed(4.0)   # Redis unreachable ...
    clock.must_step_down(9.9), clock.must_step_down(10.0)  # (False, True)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pricectl.core.duration import duration
from pricectl.core.policy import Rules

__all__ = ["LeaseClock", "LeasePolicy"]


@dataclass(frozen=True)
class LeasePolicy:
    """Lease timings in seconds (config ``leader``); requires ``0 < retry < renew_deadline
    < ttl``, finite.

    ``retry < renew_deadline`` leaves room for several renew attempts before stepping down
    (five with the defaults), so one lost round trip never costs the leadership.
    """

    ttl: float = duration(15.0)
    renew_deadline: float = duration(10.0)
    retry: float = duration(2.0)

    def __post_init__(self) -> None:
        # The chain ttl > renew_deadline > retry > 0 makes every timing positive, and a
        # finite ttl makes them all finite.
        rules = Rules(self)
        rules.require(
            self.renew_deadline < self.ttl, "renew_deadline", "must be shorter than", than="ttl"
        )
        rules.require(
            self.retry < self.renew_deadline, "retry", "must be shorter than", than="renew_deadline"
        )
        rules.require(self.retry > 0, "retry", "must be greater than 0", got=False)
        rules.finite("ttl")
        rules.check()

    @property
    def ttl_ms(self) -> int:
        """The TTL as Redis ``PX`` wants it."""
        return max(1, round(self.ttl * 1000))

    @property
    def watch(self) -> float:
        """Seconds between a standby's acquire attempts, each of which also checks that
        the holder is still connected: 0.3 s, or ``retry / 2`` if that is shorter."""
        return min(0.3, self.retry / 2)


class LeaseClock:
    """One process's view of its lease; every method takes ``now`` in monotonic seconds."""

    def __init__(self, policy: LeasePolicy | None = None) -> None:
        self.policy = policy if policy is not None else LeasePolicy()
        self._since: float | None = None
        self._last_ok: float | None = None
        self._last_attempt: float | None = None
        self._failures = 0

    # -- observability -------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True between :meth:`acquired` and :meth:`released`."""
        return self._since is not None

    @property
    def since(self) -> float | None:
        """When leadership was acquired (``None`` as a standby)."""
        return self._since

    @property
    def last_renew_ok(self) -> float | None:
        """When the lease was last acquired or successfully renewed."""
        return self._last_ok

    @property
    def renew_failures(self) -> int:
        """Failed renew attempts since the last success."""
        return self._failures

    def step_down_at(self) -> float | None:
        """The instant the leader must step down unless a renewal succeeds first."""
        return None if self._last_ok is None else self._last_ok + self.policy.renew_deadline

    # -- events --------------------------------------------------------------------------

    def acquired(self, now: float) -> None:
        """This process became leader at ``now``."""
        self._since = now
        self._last_ok = now
        self._last_attempt = now
        self._failures = 0

    def renewed(self, now: float) -> None:
        """A renew attempt started at ``now`` succeeded."""
        self._last_ok = now
        self._last_attempt = now
        self._failures = 0

    def renew_failed(self, now: float) -> None:
        """A renew attempt at ``now`` failed (Redis error or timeout; not a lost lease)."""
        self._last_attempt = now
        self._failures += 1

    def released(self) -> None:
        """Leadership ended (stepped down, released, or found lost): back to standby."""
        self._since = None
        self._last_ok = None
        self._last_attempt = None
        self._failures = 0

    # -- decisions -----------------------------------------------------------------------

    def should_renew(self, now: float) -> bool:
        """Leader only: ``retry`` seconds have passed since the last renew attempt."""
        return self._last_attempt is not None and now >= self._last_attempt + self.policy.retry

    def must_step_down(self, now: float) -> bool:
        """Leader only: no successful renewal within ``renew_deadline`` of the last one."""
        deadline = self.step_down_at()
        return deadline is not None and now >= deadline

    def may_publish(self, now: float) -> bool:
        """Leader only: the last successful renew is younger than ``renew_deadline``.

        False as a standby. Checked synchronously before each publish: a leader frozen
        past the deadline must not publish what piled up while it was frozen.
        """
        deadline = self.step_down_at()
        return deadline is not None and now < deadline

    def next_wakeup(self, now: float) -> float:
        """When the leader loop should next look: the next renew or the step-down deadline.

        Never earlier than ``now``; a standby gets ``now + retry`` (use
        :meth:`standby_delay` for the jittered wait between acquire attempts).
        """
        if self._last_attempt is None or self._last_ok is None:
            return now + self.policy.retry
        renew_at = self._last_attempt + self.policy.retry
        return max(now, min(renew_at, self._last_ok + self.policy.renew_deadline))

    def standby_delay(self, rand: Callable[[], float] = random.random) -> float:
        """Wait after Redis failed: ``retry * (1 + 0.5 * rand())``."""
        jitter = min(1.0, max(0.0, rand()))
        return self.policy.retry * (1.0 + 0.5 * jitter)

    def watch_delay(self, rand: Callable[[], float] = random.random) -> float:
        """Wait before a standby's next acquire attempt: ``watch * (1 + 0.5 * rand())``."""
        jitter = min(1.0, max(0.0, rand()))
        return self.policy.watch * (1.0 + 0.5 * jitter)
