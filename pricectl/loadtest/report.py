"""The load-test report: worker counts added up, server resources, thresholds, text and JSON.

The report is plain data (:meth:`Report.to_dict` is the ``--json`` document); the
text form is a handful of aligned lines that read the same in a terminal and a CI log.
Thresholds (:class:`Thresholds`) turn it into an exit status: every breach is named.

The server's CPU and memory come from the samples a
:class:`~pricectl.loadtest.probe.ServerProbe` took around the window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pricectl.core.histogram import Histogram
from pricectl.loadtest.probe import ServerProbe

__all__ = ["Report", "Thresholds", "build_report"]

# --- thresholds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Limits that make the run fail (exit 1); ``None`` means not checked."""

    max_p99_ms: float | None = None
    min_delivery: float | None = None
    max_gaps: int | None = None
    max_errors: int | None = None

    def breaches(self, report: Report) -> list[str]:
        """One line per limit the report breaks, naming the limit and the value."""
        out: list[str] = []
        if self.max_p99_ms is not None and report.latency_ms["p99"] > self.max_p99_ms:
            out.append(
                f"p99 latency {report.latency_ms['p99']:.1f} ms > --max-p99-ms {self.max_p99_ms:g}"
            )
        if self.min_delivery is not None and report.delivery < self.min_delivery:
            out.append(
                f"delivery {report.delivery:.5f} < --min-delivery {self.min_delivery:g} "
                f"({report.events_delivered} of {report.events_expected} events)"
            )
        if self.max_gaps is not None and report.gaps > self.max_gaps:
            out.append(
                f"gaps {report.gaps} ({report.missing} events missing) > --max-gaps {self.max_gaps}"
            )
        if self.max_errors is not None and report.error_count > self.max_errors:
            out.append(
                f"errors {report.error_count} (failed connections, stream errors, server "
                f"closes) > --max-errors {self.max_errors}"
            )
        return out


# --- the report ----------------------------------------------------------------------------


def _ms(h: Histogram, scale: float) -> dict[str, float]:
    return {
        "n": h.count,
        "p50": h.quantile(0.5) / scale,
        "p90": h.quantile(0.9) / scale,
        "p99": h.quantile(0.99) / scale,
        "p999": h.quantile(0.999) / scale,
        "max": h.max / scale,
        "mean": h.mean / scale,
    }


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


@dataclass
class Report:
    """Everything a run measured (see :func:`build_report`)."""

    target: str
    clients: int
    pairs: list[str]
    processes: int
    duration_s: float
    ramp_per_s: float
    scenario: str | None
    ready_after_s: float
    attempted: int
    established: int
    failed: dict[str, int]
    server_closes: int
    reconnects: int
    stream_errors: dict[str, int]
    open_at_end: int
    events: int
    events_window: int
    events_delivered: int
    events_expected: int
    events_per_s: float
    delivery: float
    latency_ms: dict[str, float]
    connect_ms: dict[str, float]
    snapshot_ms: dict[str, float]
    longest_silence_ms: dict[str, float]
    storm_reconnect_ms: dict[str, float] | None
    gaps: int
    missing: int
    duplicates: int
    resyncs: int
    epoch_changes: int
    slow_clients: int
    loader: dict[str, float]
    server: dict[str, Any] | None
    lost_workers: int
    #: How each loader process ended (``status``: on time, late, failed, lost).
    workers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        """Failed attempts, errors on open streams and server closes (slow readers excluded)."""
        return (
            sum(self.failed.values())
            + sum(self.stream_errors.values())
            + self.server_closes
            + self.lost_workers
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        out = dict(self.__dict__)
        out["error_count"] = self.error_count
        out["ok"] = not self.breaches
        return out

    def lines(self) -> list[str]:
        """The text report, one aligned line per topic."""
        lat = self.latency_ms
        silence = self.longest_silence_ms
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "none"
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.stream_errors.items())) or "none"
        out = [
            f"target        {self.target}  clients={self.clients} pairs={','.join(self.pairs)} "
            f"processes={self.processes} ramp={self.ramp_per_s:g}/s window={self.duration_s:g}s"
            + (f" scenario={self.scenario}" if self.scenario else ""),
            f"connections   attempted={self.attempted} established={self.established} "
            f"failed={sum(self.failed.values())} ({failed}) ready after {self.ready_after_s:.2f}s",
            f"              server closes={self.server_closes} reconnects={self.reconnects} "
            f"stream errors={errs} open at end={self.open_at_end}",
            f"connect       p50={self.connect_ms['p50']:.0f} ms p99={self.connect_ms['p99']:.0f} ms"
            f"  time to snapshot p50={self.snapshot_ms['p50']:.0f} ms "
            f"p99={self.snapshot_ms['p99']:.0f} ms",
            f"events        {self.events_window} in window ({self.events_per_s:,.0f}/s); "
            f"delivered {self.events_delivered} of {self.events_expected} expected: "
            f"delivery {self.delivery:.5f}",
            f"latency       p50={lat['p50']:.2f} p90={lat['p90']:.2f} p99={lat['p99']:.2f} "
            f"p99.9={lat['p999']:.2f} max={lat['max']:.2f} ms (n={int(lat['n'])})",
            f"sequence      gaps={self.gaps} (missing {self.missing}) duplicates={self.duplicates}"
            f" resyncs={self.resyncs} epoch changes={self.epoch_changes}",
            f"silence       longest gap between events per client: "
            f"p50={silence['p50']:.0f} ms max={silence['max']:.0f} ms",
        ]
        if self.storm_reconnect_ms is not None and self.storm_reconnect_ms["n"]:
            s = self.storm_reconnect_ms
            out.append(
                f"storm         reconnected after the drop: p50={s['p50']:.0f} "
                f"p99={s['p99']:.0f} max={s['max']:.0f} ms (n={int(s['n'])})"
            )
        if self.slow_clients:
            out.append(f"slow readers  {self.slow_clients} clients stopped reading (not counted)")
        ld = self.loader
        out.append(
            f"loader        cpu {ld['cpu_window_s']:.2f}s in window = {ld['cpu_pct']:.1f}% of one "
            f"core ({ld['us_per_event']:.1f} us/event), maxrss {ld['maxrss_kb'] / 1024:.0f} MB"
        )
        if self.server:
            sv = self.server
            parts = []
            if "cpu_pct" in sv:
                parts.append(f"cpu {sv['cpu_pct']:.1f}% of one core")
            if "us_per_event" in sv:
                parts.append(f"{sv['us_per_event']:.2f} us/delivered event")
            if "rss_mb" in sv:
                parts.append(f"rss {sv['rss_mb']:.1f} MB")
            if "bytes_per_connection" in sv:
                parts.append(f"{sv['bytes_per_connection'] / 1024:.1f} KB/connection")
            if "events_sent" in sv:
                parts.append(f"events sent {int(sv['events_sent'])}")
            out.append("server        " + ", ".join(parts))
        for note in self.notes:
            out.append(f"note          {note}")
        for b in self.breaches:
            out.append(f"BREACH        {b}")
        return out


def build_report(
    result: Any,
    *,
    scenario: str | None = None,
    probe: ServerProbe | None = None,
    notes: list[str] | None = None,
) -> Report:
    """Add up a :class:`~pricectl.loadtest.runner.RunResult` into a :class:`Report`."""
    plan = result.plan
    finals: list[dict[str, Any]] = result.finals
    lat = Histogram()
    conn = Histogram()
    snap = Histogram()
    storm = Histogram()
    silence = Histogram()
    failed: dict[str, int] = {}
    errors: dict[str, int] = {}
    spans: dict[tuple[str, int], list[int]] = {}
    tot: dict[str, int] = {}
    seq: dict[str, int] = {}
    cpu_window = 0.0
    maxrss = 0
    for f in finals:
        lat.merge(Histogram.from_dict(f["latency"]))
        conn.merge(Histogram.from_dict(f["connect_ms"]))
        snap.merge(Histogram.from_dict(f["snapshot_ms"]))
        storm.merge(Histogram.from_dict(f["storm_ms"]))
        silence.merge(Histogram.from_dict(f["silence_ms"]))
        _add(failed, f["failed"])
        _add(errors, f["errors"])
        _add(seq, f["sequence"])
        for key in (
            "attempted",
            "established",
            "server_closes",
            "reconnects",
            "events",
            "events_window",
            "fast_clients",
            "slow_clients",
            "fast_events_window",
            "open_at_end",
        ):
            tot[key] = tot.get(key, 0) + int(f[key])
        for pair, epoch, lo, hi in f["ranges"]:
            r = spans.setdefault((pair, epoch), [lo, hi])
            r[0] = min(r[0], lo)
            r[1] = max(r[1], hi)
        cpu_window += float(f["cpu_window_s"])
        maxrss += int(f["maxrss_kb"])
    cpu_share = sum(
        float(f["cpu_window_s"]) / float(f["wall_window_s"])
        for f in finals
        if f.get("wall_window_s")
    )
    pair_clients: dict[str, int] = {}
    for f in finals:
        _add(pair_clients, f.get("pair_clients", {}))
    if pair_clients:  # each pair's published updates x the reading clients that stream it
        expected = sum(
            (hi - lo + 1) * pair_clients.get(pair, 0) for (pair, _), (lo, hi) in spans.items()
        )
    else:
        expected = sum(hi - lo + 1 for lo, hi in spans.values()) * tot.get("fast_clients", 0)
    delivered = tot.get("fast_events_window", 0)
    delivery = delivered / expected if expected else 0.0
    duration = plan.duration
    events_window = tot.get("events_window", 0)
    server: dict[str, Any] | None = None
    all_notes = list(notes or [])
    all_notes.extend(_worker_notes(result, plan.drain_timeout))
    late = sum(1 for f in finals if f.get("window_late"))
    if late:
        all_notes.append(
            f"{late} loader process(es) learnt of the window after it opened (machine overloaded):"
            " early window events may be counted as before it"
        )
    if expected == 0:
        all_notes.append("no price events in the window: is the server publishing?")
    if probe is not None:
        server = _server_figures(probe, events_window, tot.get("open_at_end", 0))
        all_notes.extend(probe.problems)
    return Report(
        target=f"http://{plan.host}:{plan.port}{plan.target}",
        clients=plan.clients,
        pairs=list(plan.pairs),
        processes=plan.processes,
        duration_s=duration,
        ramp_per_s=plan.ramp,
        scenario=scenario,
        ready_after_s=result.ready_after_s,
        attempted=tot.get("attempted", 0),
        established=tot.get("established", 0),
        failed=failed,
        server_closes=tot.get("server_closes", 0),
        reconnects=tot.get("reconnects", 0),
        stream_errors=errors,
        open_at_end=tot.get("open_at_end", 0),
        events=tot.get("events", 0),
        events_window=events_window,
        events_delivered=delivered,
        events_expected=expected,
        events_per_s=events_window / duration if duration else 0.0,
        delivery=delivery,
        latency_ms=_ms(lat, 1e6),
        connect_ms=_ms(conn, 1.0),
        snapshot_ms=_ms(snap, 1.0),
        longest_silence_ms=_ms(silence, 1.0),
        storm_reconnect_ms=_ms(storm, 1.0) if storm.count else None,
        gaps=seq.get("gaps", 0),
        missing=seq.get("missing", 0),
        duplicates=seq.get("duplicates", 0),
        resyncs=seq.get("resyncs", 0),
        epoch_changes=seq.get("epoch_changes", 0),
        slow_clients=tot.get("slow_clients", 0),
        loader={
            "cpu_window_s": cpu_window,
            # CPU over the wall time each worker really measured: an overloaded worker
            # wakes late and measures a shorter stretch than the window.
            "cpu_pct": 100.0 * cpu_share,
            "us_per_event": 1e6 * cpu_window / events_window if events_window else 0.0,
            "maxrss_kb": maxrss,
        },
        server=server,
        lost_workers=result.lost_workers,
        workers=[dataclasses.asdict(w) for w in getattr(result, "workers", [])],
        notes=all_notes,
    )


def _worker_notes(result: Any, drain_timeout: float) -> list[str]:
    """One line per loader process that was not on time or did not read everything."""
    out = []
    for fate in getattr(result, "workers", []):
        who = f"loader process {fate.index} (pid {fate.pid})"
        if fate.status == "late":
            out.append(
                f"{who} was late: it sent its report only when asked to stop, "
                "after the window and the drain (overloaded); its figures stop there"
            )
        elif fate.status == "failed":
            out.append(f"{who} failed: {fate.detail}; its clients are in no figure")
        elif fate.status == "lost":
            out.append(f"{who} sent no report ({fate.detail}); its clients are in no figure")
    for f in result.finals:
        if f.get("behind"):
            out.append(
                f"loader process {f.get('worker', '?')}: {f['behind']} clients had not caught "
                f"up {drain_timeout:g}s after the window (loader or server behind); "
                "their events still unread are not counted"
            )
    return out


def _server_figures(probe: ServerProbe, events: int, connections: int) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if probe.start is not None and probe.end is not None:
        wall = probe.end.at - probe.start.at
        cpu = probe.end.cpu_s - probe.start.cpu_s
        out["pid"] = probe.pid
        out["processes"] = probe.end.pids
        out["cpu_s"] = cpu
        out["cpu_pct"] = 100.0 * cpu / wall if wall > 0 else 0.0
        if events:
            out["us_per_event"] = 1e6 * cpu / events
        out["rss_mb"] = probe.end.rss_bytes / 2**20
        if probe.baseline is not None and connections:
            out["bytes_per_connection"] = (
                probe.end.rss_bytes - probe.baseline.rss_bytes
            ) / connections
    m0, m1 = probe.metrics_start, probe.metrics_end
    if m1:
        for name, key in (
            ("pricectl_events_sent_total", "events_sent"),
            ("pricectl_updates_received_total", "updates_received"),
            ("pricectl_slow_dropped_total", "slow_dropped"),
        ):
            if name in m1:
                out[key] = m1[name] - m0.get(name, 0.0)
        if "pricectl_clients" in m1:
            out["clients"] = m1["pricectl_clients"]
    return out or None
