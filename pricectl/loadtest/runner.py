"""The parent of a load test: start the loader processes, show progress, merge the results.

:func:`run` forks :attr:`~pricectl.loadtest.plan.Plan.processes` workers
(:mod:`pricectl.loadtest.worker`), gives each its share of the clients, and
coordinates the phases the way the independent C loader (``sseload.c``, see
benchmarks/README.md) does, so that the two can be compared on the same server:

1. *ramp*: each worker opens its share of the clients at its share of the ramp rate
   and reports ``ready`` once every client has connected or failed once;
2. *window*: when all workers are ready (or ``ready_timeout`` passed) the parent picks
   the window ``[t0, t1]`` in wall-clock nanoseconds; an event belongs to the window
   when its ``ingest_ns`` falls in it, so the window is defined at the publisher and
   events still in flight at ``t1`` are waited for rather than lost;
3. *drain*: after ``t1`` a worker waits until each reading client has seen an update
   ingested after ``t1`` on every pair (so everything before has arrived), at most
   ``drain_timeout``, then sends its final counts and exits.

The result (:class:`RunResult`) is every worker's final counts plus how each worker
ended (:class:`WorkerFate`); :func:`~pricectl.loadtest.report.build_report` adds them
up. Delivery is events received in the window over events expected: per pair, the
number of sequence numbers ``(epoch, seq)`` that any client saw in the window, times
the clients that should have seen them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from pricectl.core.histogram import Histogram
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.worker import worker_entry

__all__ = ["Progress", "RunResult", "WorkerFate", "run"]

#: The window opens this long after the parent decides, so every worker knows it before
#: the first event of the window can arrive (a late worker is reported, not mis-counted).
_WINDOW_LEAD_NS = 2_000_000_000


@dataclass
class Progress:
    """What the live display shows, refreshed twice a second."""

    target: int
    phase: str = "ramp"
    connected: int = 0
    established: int = 0
    failed: int = 0
    errors: int = 0
    events: int = 0
    events_per_s: float = 0.0
    p99_ms: float = 0.0
    elapsed: float = 0.0
    window_left: float = 0.0


@dataclass
class WorkerFate:
    """How one loader process ended, for the report when it was not on time."""

    index: int
    pid: int | None
    #: ``on time``; ``late`` (its report came only when asked to stop); ``failed`` (it
    #: raised: ``detail`` says what); ``lost`` (no report: ``detail`` has the exit status)
    status: str
    detail: str = ""


@dataclass
class RunResult:
    """The merged finals of every worker, with the window's timing."""

    plan: Plan
    finals: list[dict[str, Any]]
    t0_ns: int
    t1_ns: int
    ready_after_s: float
    lost_workers: int = 0
    workers: list[WorkerFate] = field(default_factory=list)


def run(
    plan: Plan,
    on_progress: Callable[[Progress], None] | None = None,
    on_window: Callable[[str, float], None] | None = None,
) -> RunResult:
    """Run the load test described by ``plan``; blocks until the workers are done.

    ``on_progress`` is called about twice a second; ``on_window(phase, seconds_into)`` lets
    the caller act on the server side (sample its CPU at ``"start"``/``"end"``, kill a
    leader at a scenario's time via ``"tick"``).

    Every worker sends one report. One that has not sent it ``plan.report_grace``
    seconds after the window and the drain is asked to stop (``on_window("overdue")``)
    and then sends what it has (it is marked *late*); one that sends nothing within
    another ``report_grace`` is killed and *lost*. :attr:`RunResult.workers` says which
    worker ended how, so the report can name it.
    """
    ctx = multiprocessing.get_context("fork")
    n = plan.processes
    conns: list[Connection] = []
    procs: list[Any] = []
    first = 0
    for i in range(n):
        count = plan.clients // n + (1 if i < plan.clients % n else 0)
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(
            target=worker_entry,
            args=(plan, first, count, child_end),
            name=f"pricectl-loadtest-{i}",
            daemon=True,
        )
        p.start()
        child_end.close()
        conns.append(parent_end)
        procs.append(p)
        first += count
    started = time.monotonic()
    progress = Progress(target=plan.clients)
    latest: dict[int, dict[str, Any]] = {}
    rates: dict[int, float] = {}
    interval = Histogram()
    ready: set[int] = set()
    finals: dict[int, dict[str, Any]] = {}
    late: set[int] = set()
    failures: dict[int, str] = {}
    t0 = t1 = 0
    ready_after = -1.0
    ramp_time = plan.clients / plan.ramp
    ready_deadline = started + ramp_time + plan.ready_timeout + 5.0
    last_tick = started
    open_conns = {i: c for i, c in enumerate(conns)}
    # Until the window opens, the latest a report can be due; then the window's own end.
    report_due = ready_deadline + _WINDOW_LEAD_NS / 1e9 + plan.duration + plan.drain_timeout
    stop_sent: float | None = None
    try:
        while open_conns:
            now = time.monotonic()
            if stop_sent is None and now > report_due + plan.report_grace:
                stop_sent = now  # overdue: ask for what they have
                if on_window is not None:
                    on_window("overdue", (time.time_ns() - t0) / 1e9 if t0 else 0.0)
                for i in open_conns:
                    with contextlib.suppress(OSError):
                        conns[i].send(("stop",))
            if stop_sent is not None and now > stop_sent + plan.report_grace:
                break
            for c in wait(list(open_conns.values()), timeout=0.25):
                assert isinstance(c, Connection)
                i = conns.index(c)
                body: Any
                try:
                    kind, body = c.recv()
                except (EOFError, OSError):
                    open_conns.pop(i, None)
                    continue
                if kind == "progress":
                    prev = latest.get(i)
                    if prev is not None and body["t"] > prev["t"]:
                        rates[i] = (body["events"] - prev["events"]) / (body["t"] - prev["t"])
                    latest[i] = body
                    interval.merge(Histogram.from_dict(body["interval"]))
                elif kind == "ready":
                    ready.add(i)
                elif kind == "final":
                    body["worker"] = i
                    finals[i] = body
                    if stop_sent is not None:
                        late.add(i)
                    open_conns.pop(i, None)
                elif kind == "failed":
                    failures[i] = str(body)
            now = time.monotonic()
            if not t0 and (len(ready) == n or now > ready_deadline):
                ready_after = now - started
                t0 = time.time_ns() + _WINDOW_LEAD_NS
                t1 = t0 + int(plan.duration * 1e9)
                report_due = now + (t1 - time.time_ns()) / 1e9 + plan.drain_timeout
                for c in conns:
                    with contextlib.suppress(OSError):
                        c.send(("window", t0, t1))
                progress.phase = "window"
                if on_window is not None:
                    on_window("start", 0.0)
            if t0 and progress.phase == "window":
                into = (time.time_ns() - t0) / 1e9
                if on_window is not None and into >= 0:
                    on_window("tick", into)
                if into >= plan.duration:
                    progress.phase = "drain"
                    if on_window is not None:
                        on_window("end", into)
            if now - last_tick >= 0.5:
                progress.connected = sum(b["connected"] for b in latest.values())
                progress.established = sum(b["established"] for b in latest.values())
                progress.failed = sum(b["failed"] for b in latest.values())
                progress.errors = sum(b["errors"] for b in latest.values())
                progress.events = sum(b["events"] for b in latest.values())
                progress.events_per_s = sum(rates.values())
                progress.p99_ms = interval.quantile(0.99) / 1e6
                progress.elapsed = now - started
                progress.window_left = max(0.0, (t1 - time.time_ns()) / 1e9) if t1 else 0.0
                interval.reset()
                last_tick = now
                if on_progress is not None:
                    on_progress(progress)
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.send(("stop",))
        for i, p in enumerate(procs):
            if i in open_conns and p.is_alive():  # had its grace: no point waiting longer
                p.kill()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for c in conns:
            c.close()
    fates = []
    for i, p in enumerate(procs):
        if i in finals:
            status, detail = ("late", "") if i in late else ("on time", "")
        elif i in failures:
            status, detail = "failed", failures[i]
        else:
            status = "lost"
            code = p.exitcode
            detail = "killed: it did not stop when asked" if code == -9 else f"exit status {code}"
        fates.append(WorkerFate(i, p.pid, status, detail))
    return RunResult(
        plan=plan,
        finals=[finals[i] for i in sorted(finals)],
        t0_ns=t0,
        t1_ns=t1,
        ready_after_s=ready_after,
        lost_workers=n - len(finals),
        workers=fates,
    )
