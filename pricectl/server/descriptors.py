"""File descriptors: serve's open-file limit, the connection budget it allows, and what
happens when accept() runs out of them.

Every connection holds a descriptor, and the common soft limit is 1,024 (the
``RLIMIT_NOFILE`` a login shell or a systemd service gets unless told otherwise):
far below ``server.max_connections``. At start serve raises its soft limit to the hard
limit (an unprivileged process may, see getrlimit(2)) and logs the result, then sizes:

- a **reserve** of :data:`RESERVE` descriptors that connections never take: the bus,
  the exchange, DNS look-ups and the dashboard's files need a few; and asyncio accepts a
  batch of connections before any of them is seen (so before the budget below can make
  room), which the reserve absorbs. A process that hits ``EMFILE`` cannot even answer
  ``/health``, and asyncio then stops accepting for a whole second;
- the **connection budget**, every other descriptor: the most connections open at once,
  streams included. Connections waiting for a request head (idle or half-sent: what a
  slowloris attack holds) are kept a margin below it,
  :data:`ACCEPT_AHEAD` connections: :class:`pricectl.server.connections.ServeServer`
  closes the ones that waited longest when a new one would pass that line, so the
  connections accepted but not yet seen, and those closed but not yet released, always
  fit;
- the **stream limit**: ``server.max_connections``, or less when it does not fit in the
  budget with :data:`REQUEST_ROOM` connections left for requests (``/health``, the page,
  a new stream's own request). serve warns once at start when it had to lower it.

The accept batch is what bounds the burst: asyncio accepts up to its ``backlog``
argument's worth of connections per wake-up, and takes the same number as the kernel's
listen queue. serve listens with :data:`ACCEPT_BATCH` and then sets the kernel's queue
to :data:`LISTEN_BACKLOG` itself (:func:`deepen_listen_queue`), so a reconnect storm
still queues in the kernel while each wake-up takes only a batch the reserve can hold.

If accept() fails all the same (``EMFILE``/``ENFILE``: another process took the
system's last descriptors), asyncio stops accepting for a second and retries; it reports
each failure through the loop's exception handler, and :func:`accept_error_handler`
turns those reports into one log line per interval instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pricectl.logs import RateLimitedLog

__all__ = [
    "ACCEPT_AHEAD",
    "ACCEPT_BATCH",
    "LISTEN_BACKLOG",
    "REQUEST_ROOM",
    "RESERVE",
    "ConnectionPlan",
    "FileLimit",
    "accept_error_handler",
    "deepen_listen_queue",
    "descriptors_in_use",
    "log_limit",
    "plan_connections",
    "raise_open_file_limit",
]

log = logging.getLogger("pricectl.server.descriptors")

#: Descriptors connections never take (bus and exchange connections, DNS, files, and
#: two accept batches in flight). Small on purpose: at the common hard limit of 20,000
#: it must leave room for the 19,900 streams of ``server.max_connections``.
RESERVE = 64
#: Connections kept free of streams for plain requests: /health, the page, a new stream.
REQUEST_ROOM = 16
#: Connections asyncio accepts per wake-up of the listening socket.
ACCEPT_BATCH = 32
#: Descriptors in flight between accept() and serve seeing the connection, or between
#: closing one and the kernel releasing it: a few loop iterations' worth of batches.
ACCEPT_AHEAD = 3 * ACCEPT_BATCH
#: The kernel's queue of connections not yet accepted (a reconnect storm waits there).
LISTEN_BACKLOG = 4096
#: asyncio's message for a failed accept() (selector_events.py).
_ACCEPT_FAILED = "socket.accept() out of system resource"


@dataclass(frozen=True)
class FileLimit:
    """The open-file limit before and after serve raised it, and what is in use."""

    soft_before: int
    soft: int
    hard: int
    in_use: int
    #: Why the soft limit could not be raised (empty when it was, or had no need).
    problem: str = ""


def descriptors_in_use() -> int:
    """Descriptors this process holds now (Linux's /proc; a guess of 16 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 16


def raise_open_file_limit() -> FileLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the limit as it is then."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses more than fs.nr_open; 1,048,576 is its default.
        target = _nr_open()
    problem = ""
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            problem = str(exc)
            target = soft
    else:
        target = soft
    return FileLimit(soft, target, hard, descriptors_in_use(), problem)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


@dataclass(frozen=True)
class ConnectionPlan:
    """How many connections and streams fit in the open-file limit."""

    #: Most connections open at once, streams included.
    budget: int
    #: Above this many open connections, those waiting for a request head are closed.
    waiting: int
    #: Most streams (``server.max_connections``, or less to fit).
    streams: int
    #: True when ``server.max_connections`` had to be lowered to ``streams``.
    lowered: bool


def plan_connections(limit: FileLimit, max_connections: int) -> ConnectionPlan:
    """The connection budget and stream limit for ``limit`` (see the module docstring)."""
    budget = max(1, limit.soft - limit.in_use - RESERVE)
    waiting = max(1, budget - ACCEPT_AHEAD)
    room = max(1, budget - REQUEST_ROOM)
    if max_connections <= 0 or max_connections > room:
        return ConnectionPlan(budget, waiting, room, max_connections > room)
    return ConnectionPlan(budget, waiting, max_connections, False)


def log_limit(limit: FileLimit, max_connections: int, plan: ConnectionPlan) -> None:
    """Say what the open-file limit is and whether the configured streams fit in it."""
    if limit.soft > limit.soft_before:
        log.info(
            "open files: soft limit raised from %d to %d (the hard limit); %d in use",
            limit.soft_before,
            limit.soft,
            limit.in_use,
        )
    else:
        log.info(
            "open files: limit %d (hard limit %s)%s; %d in use",
            limit.soft,
            "unlimited" if limit.hard < 0 else limit.hard,
            f", could not raise it: {limit.problem}" if limit.problem else "",
            limit.in_use,
        )
    if plan.lowered:
        log.warning(
            "server.max_connections (%d) does not fit in the open-file limit (%d): at most "
            "%d streams will be accepted, keeping %d descriptors for requests and %d in "
            "reserve. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, "
            "docker --ulimit nofile=) or lower server.max_connections.",
            max_connections,
            limit.soft,
            plan.streams,
            REQUEST_ROOM,
            RESERVE,
        )


def deepen_listen_queue(sockets: Any, backlog: int = LISTEN_BACKLOG) -> None:
    """Set the kernel's listen queue of each listening socket to ``backlog``.

    listen(2) on a socket that already listens changes its queue length; it is called on
    a duplicate of the descriptor, so asyncio keeps the socket it owns.
    """
    import socket

    for sock in sockets or ():
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            dup.listen(backlog)
        finally:
            dup.close()


def accept_error_handler(
    soft_limit: int, clock_interval: float = 10.0
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler that reports accept() failures once per interval.

    asyncio retries a failed accept by itself after a second; what it lacks is restraint
    in saying so (a report, with a traceback, per connection it could not take). Every
    other report goes to the loop's default handler.
    """
    rlog = RateLimitedLog(log, clock_interval)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            exc = context.get("exception")
            reason = getattr(exc, "strerror", None) or str(exc)
            rlog.warning(
                "accept",
                "cannot accept connections: %s (open-file limit %d); retrying every second",
                reason,
                soft_limit,
            )
            return
        loop.default_exception_handler(context)

    return handler
