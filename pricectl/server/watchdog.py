"""A bound on the graceful stop: past it the process exits anyway, saying why.

``pricectl serve`` drains its clients over ``server.drain_window`` on SIGTERM; a stop
that has not finished :data:`GRACE` seconds after that (a stuck connection, a task
that ignores its cancel) must not keep the process, and the port, forever. The timer
is a thread, so it fires even if the event loop itself is stuck.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

__all__ = ["GRACE", "arm"]

log = logging.getLogger("pricectl.server")

#: Seconds past the drain window a stop may take.
GRACE = 5.0


def arm(limit: float, what: str = "serve") -> threading.Timer:
    """Start the bound: after ``limit`` seconds, log and ``os._exit(1)``; ``cancel()`` it
    when the stop finished."""

    def overdue() -> None:
        log.error(
            "%s: the graceful stop did not finish within %.0fs; exiting now without it",
            what,
            limit,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)

    timer = threading.Timer(limit, overdue)
    timer.daemon = True
    timer.start()
    return timer
