"""One load-test run from options to report: scenario, target or spawned system, probe.

``pricectl loadtest`` is glue over :func:`run_load_test`; ``make bench`` calls it too.
Every knob follows one precedence (:func:`resolve`): flag > scenario > config > built-in.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from pricectl.config import LoadtestSettings
from pricectl.errors import UsageError
from pricectl.loadtest.plan import STREAM_PATH, Plan, plan_processes
from pricectl.loadtest.probe import ServerProbe
from pricectl.loadtest.report import Report, Thresholds, build_report
from pricectl.loadtest.runner import Progress, run
from pricectl.loadtest.scenarios import Scenario, load_scenario

if TYPE_CHECKING:
    from pricectl.loadtest.spawn import Spawned

__all__ = ["Options", "check_reachable", "parse_target", "resolve", "run_load_test"]


@dataclass(frozen=True)
class Options:
    """Everything ``pricectl loadtest`` accepts; ``None`` means "not given on the command line"."""

    url: str | None = None
    clients: int | None = None
    pairs: tuple[str, ...] | None = None
    ramp: float | None = None
    duration: float | None = None
    #: Loader processes; 0 is one per core.
    processes: int | None = None
    scenario: str | None = None
    spawn: bool = False
    redis: str | None = None
    serve_workers: int = 1
    #: Pin the spawned serve / the loader processes to these CPUs (benchmarks).
    serve_cpus: tuple[int, ...] | None = None
    loader_cpus: tuple[int, ...] | None = None
    update_rate: float | None = None
    server_pid: int | None = None
    max_p99_ms: float | None = None
    min_delivery: float | None = None
    max_gaps: int | None = None
    max_errors: int | None = None
    connect_timeout: float = 10.0
    drain_timeout: float = 5.0
    notes: list[str] = field(default_factory=list)


def parse_target(url: str) -> tuple[str, int, str]:
    """``http://host:port[/path]`` -> ``(host, port, stream path)``; UsageError if not."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url must be http://HOST:PORT[/path], got {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"--url has a bad port: {url!r}") from None
    path = parts.path if parts.path not in ("", "/") else STREAM_PATH
    return parts.hostname, port, path


def check_reachable(host: str, port: int, timeout: float = 3.0) -> None:
    """Refuse to start against a server that does not accept connections (exit 2)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot reach http://{host}:{port}: {reason}") from None


#: The last layer, for the knobs the ``loadtest`` section of the configuration has no
#: key for (those it has take their built-in from :class:`LoadtestSettings`).
_BUILT_IN_PAIRS = ("BTC/USD",)
_BUILT_IN_UPDATE_RATE = 10.0


def resolve(
    options: Options, config: LoadtestSettings | None = None
) -> tuple[Options, Scenario | None]:
    """Fill every knob ``options`` leaves ``None``, then validate (UsageError, exit 2).

    One precedence for every knob: the flag (``options``), else the scenario's value,
    else the configuration's (``config``, the ``loadtest`` section; ``None`` for none),
    else the built-in. A layer that has no such knob is skipped: a scenario has no
    ``processes``, the configuration no ``pairs``, ``update_rate``, ``max_gaps`` or
    ``max_errors``. A configured threshold of 0 means "not checked", as in the file.
    """
    scenario = load_scenario(options.scenario) if options.scenario else None
    sc = scenario or Scenario(name="")
    cfg = config if config is not None else LoadtestSettings()
    th = sc.thresholds
    o = options
    clients = _pick(o.clients, sc.clients, last=cfg.clients)
    ramp = _pick(o.ramp, sc.ramp, last=float(cfg.ramp))
    duration = _pick(o.duration, sc.duration, last=cfg.duration)
    o = replace(
        o,
        clients=clients,
        ramp=ramp,
        duration=duration,
        processes=_pick(o.processes, last=cfg.processes),
        pairs=_pick(o.pairs, sc.pairs, last=_BUILT_IN_PAIRS),
        update_rate=_pick(o.update_rate, sc.update_rate, last=_BUILT_IN_UPDATE_RATE),
        max_p99_ms=_pick(o.max_p99_ms, th.get("max_p99_ms"), last=cfg.max_p99_ms or None),
        min_delivery=_pick(o.min_delivery, th.get("min_delivery"), last=cfg.min_delivery or None),
        max_gaps=_pick(o.max_gaps, last=_int(th.get("max_gaps"))),
        max_errors=_pick(o.max_errors, last=_int(th.get("max_errors"))),
    )
    if clients <= 0:
        raise UsageError(f"--clients must be at least 1, got {clients}")
    if ramp <= 0:
        raise UsageError(f"--ramp must be above 0 connections/s, got {ramp:g}")
    if duration <= 0:
        raise UsageError("--duration must be above 0")
    if o.min_delivery is not None and not 0 <= o.min_delivery <= 1:
        raise UsageError(f"--min-delivery must be within 0..1, got {o.min_delivery:g}")
    if o.spawn == (o.url is not None):
        raise UsageError("give exactly one of --url URL or --spawn")
    if o.redis and not o.spawn:
        raise UsageError("--redis only applies with --spawn")
    if scenario is not None and scenario.kill_leader_at is not None and not (o.spawn and o.redis):
        raise UsageError(
            f"scenario {scenario.name} kills the ingest leader: it needs --spawn --redis URL"
        )
    return o, scenario


_T = TypeVar("_T")


def _pick(*layers: _T | None, last: _T) -> _T:
    """The first of ``layers`` (highest first) that sets the knob, else ``last``."""
    return next((v for v in layers if v is not None), last)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


@contextlib.contextmanager
def _system(
    o: Options, lease: dict[str, float] | None = None
) -> Iterator[tuple[str, int, str, int | None, Spawned | None]]:
    if o.spawn:
        from pricectl.loadtest.spawn import spawned_system

        assert o.pairs is not None and o.update_rate is not None
        with spawned_system(
            list(o.pairs),
            o.update_rate,
            redis_url=o.redis,
            serve_workers=o.serve_workers,
            lease=lease,
        ) as system:
            if o.serve_cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(system.serve_pid, o.serve_cpus)
            yield "127.0.0.1", system.serve_port, STREAM_PATH, system.serve_pid, system
    else:
        assert o.url is not None
        host, port, path = parse_target(o.url)
        check_reachable(host, port)
        yield host, port, path, o.server_pid, None


def run_load_test(
    options: Options,
    config: LoadtestSettings | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Report:
    """Resolve, (spawn,) run, report, check thresholds. The report carries any breaches."""
    o, scenario = resolve(options, config)
    assert o.clients is not None and o.ramp is not None and o.duration is not None
    assert o.pairs is not None and o.processes is not None
    if o.url is not None:
        parse_target(o.url)  # bad URLs fail before anything starts
    procs, _per_proc, note = plan_processes(o.clients, o.processes)
    notes = list(o.notes)
    if note:
        notes.append(note)
        if on_note is not None:
            on_note(note)
    lease = scenario.lease if scenario and o.redis else None
    if lease:
        notes.append(
            "ingest lease "
            + ", ".join(f"{k} {v:g}s" for k, v in sorted(lease.items()))
            + " (scenario)"
        )
    with _system(o, lease) as (host, port, path, pid, system):
        probe = ServerProbe(pid=pid, metrics_url=f"http://{host}:{port}/metrics")
        probe.at_baseline()
        plan = Plan(
            host=host,
            port=port,
            pairs=o.pairs,
            clients=o.clients,
            ramp=o.ramp,
            duration=o.duration,
            processes=procs,
            path=path,
            connect_timeout=o.connect_timeout,
            drain_timeout=o.drain_timeout,
            slow_share=scenario.slow_share if scenario else 0.0,
            slow_at=scenario.slow_at if scenario else 0.0,
            drop_at=scenario.drop_at if scenario else None,
            cpus=o.loader_cpus,
        )
        kill_at = scenario.kill_leader_at if scenario else None
        killed: list[int | None] = []

        def on_window(phase: str, into: float) -> None:
            if phase == "start":
                probe.at_start()
            elif phase == "end":
                probe.at_end()
            elif (
                phase == "tick" and kill_at is not None and not killed and into >= kill_at
            ):  # failover
                assert o.redis is not None and system is not None
                killed.append(system.kill_leader(o.redis))
                if on_note is not None:
                    on_note(
                        f"killed the ingest leader (pid {killed[0]}) at {into:.1f}s"
                        if killed[0] is not None
                        else f"no ingest process held the lease at {into:.1f}s: killed none"
                    )

        result = run(plan, on_progress=on_progress, on_window=on_window)
        if probe.end is None:
            probe.at_end()
    if killed and killed[0] is not None:
        notes.append(f"ingest leader pid {killed[0]} killed at {kill_at:g}s into the window")
    elif killed:
        notes.append(f"failover: no ingest process held the lease at {kill_at:g}s, none killed")
    report = build_report(
        result, scenario=scenario.name if scenario else None, probe=probe, notes=notes
    )
    report.breaches = Thresholds(
        max_p99_ms=o.max_p99_ms,
        min_delivery=o.min_delivery,
        max_gaps=o.max_gaps,
        max_errors=o.max_errors,
    ).breaches(report)
    return report
