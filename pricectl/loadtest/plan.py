"""What a load test runs: the :class:`Plan`, and how many loader processes it takes.

A plan is the target (host, port, request path and pairs), the number of clients and
their ramp, the window, and the scenario's client-side actions (slow readers, a
reconnect storm). This module also decides the number of loader processes
(:func:`plan_processes`): the requested count, or more when one process may not hold
that many sockets under the open-files limit (:func:`raise_nofile_limit`).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "FD_MARGIN",
    "STREAM_PATH",
    "Plan",
    "plan_processes",
    "raise_nofile_limit",
    "stream_target",
]

#: serve's SSE endpoint, the request path when the URL gives none.
STREAM_PATH = "/api/market-data/stream"
#: File descriptors a loader process needs besides its sockets (the pipe to the parent,
#: the epoll, the event loop's own, standard streams).
FD_MARGIN = 64


def stream_target(pairs: list[str], path: str = STREAM_PATH) -> str:
    """The request target for ``pairs`` (``/api/market-data/stream?pairs=BTC/USD,ETH/USD``)."""
    return f"{path}?pairs={quote(','.join(pairs), safe='/,')}"


@dataclass(frozen=True)
class Plan:
    """What to run: the target, how many clients, and the scenario's client-side actions."""

    host: str
    port: int
    pairs: tuple[str, ...]
    clients: int
    ramp: float
    duration: float
    processes: int
    path: str = STREAM_PATH
    connect_timeout: float = 10.0
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0
    #: Share of clients (0..1) that stop reading at ``slow_at`` s into the window.
    slow_share: float = 0.0
    slow_at: float = 0.0
    #: Seconds into the window at which every client drops its connection and reconnects
    #: after the ``retry:`` the server gave it (reconnect storm); ``None``: never.
    drop_at: float | None = None
    #: Reconnect delay when the server gave no ``retry:`` (EventSource's default is 3 s).
    default_retry_ms: int = 3000
    #: CPUs the loader processes are pinned to (benchmarks: server on one core, loader on
    #: the other); ``None``: not pinned.
    cpus: tuple[int, ...] | None = None
    #: After the window and the drain, how long the parent waits for a worker's report
    #: before asking it to stop, and then how long for the report it sends on stopping.
    report_grace: float = 5.0
    #: Per-client pair sets: client ``i`` streams ``pair_sets[i % len(pair_sets)]``
    #: (a spread of clients over many pairs); empty: every client streams ``pairs``.
    pair_sets: tuple[tuple[str, ...], ...] = ()

    @property
    def target(self) -> str:
        """The request target of every client (of client 0 with ``pair_sets``)."""
        return self.target_of(0)

    def pairs_of(self, index: int) -> tuple[str, ...]:
        """The pairs client ``index`` streams."""
        if self.pair_sets:
            return self.pair_sets[index % len(self.pair_sets)]
        return self.pairs

    def target_of(self, index: int) -> str:
        """The request target of client ``index``."""
        return stream_target(list(self.pairs_of(index)), self.path)


def raise_nofile_limit(needed: int) -> tuple[int, int, str | None]:
    """Raise this process's open-files soft limit to the hard limit.

    Returns ``(soft, hard, problem)``; ``problem`` says what could not be done when the
    hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            return soft, hard, f"cannot raise the open-files limit from {soft} to {target}: {exc}"
    if soft < needed:
        return soft, hard, f"open-files limit is {soft} (hard {hard}), below the {needed} needed"
    return soft, hard, None


def plan_processes(clients: int, requested: int) -> tuple[int, int, str | None]:
    """How many loader processes: ``requested`` (0 = core count), more if the fd limit needs.

    Returns ``(processes, per_process_limit, note)``; ``note`` says when the count was
    raised because one process may not hold that many sockets.
    """
    procs = requested if requested > 0 else (os.cpu_count() or 1)
    procs = max(1, min(procs, clients))
    soft, hard, _ = raise_nofile_limit(0)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    per_proc = max(1, limit - FD_MARGIN)
    note = None
    need = -(-clients // per_proc)
    if need > procs:
        note = (
            f"open-files limit is {limit} per process: using {need} loader processes "
            f"instead of {procs}"
        )
        procs = need
    return procs, per_proc, note
