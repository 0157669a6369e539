"""``pricectl loadtest`` against an independent loader, on the same serve, in one sitting.

The load tester's figures should agree with an independent loader's within 10 %. The
independent one is ``sseload.c`` (``--sseload`` or ``$SSELOAD_C``): C, one epoll loop,
its own HTTP/chunked/SSE parsing and its own histogram code, with the same bucket
layout. This driver starts one simulator and one ``serve`` (memory bus, bookTicker, 10 updates/s,
one pair), pins serve to CPU 0 and the loaders and the simulator to CPU 1 (as
serve_bench does), and runs the two loaders one after the other against that same
serve, alternating which goes first, ``--runs`` times each. Before each run it waits
until serve has no client left from the previous one.

For each loader it reports events/s in the window, delivery, latency p50/p99 and the
loader's own CPU, and then the ratio pricectl / sseload of the medians. The two define
their windows differently (``pricectl loadtest``: updates ingested in the window, waited
for; sseload: events received in the window), so counts differ at the edges by up to a
latency's worth of events; delivery is each loader's own exact figure (pricectl: events
against the sequence numbers published in the window; sseload: events against the holes
in each connection's sequence).

    python -m benchmarks.crosscheck [--clients 10000] [--runs 3] [--duration 20]
        [--ramp 2000] [--processes 1] [--json runs.jsonl]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import sseload
from benchmarks.pinning import pin_tree
from pricectl.loadtest.probe import read_metrics
from pricectl.loadtest.session import Options, run_load_test
from pricectl.loadtest.spawn import spawned_system

__all__ = ["main", "run_pricectl", "run_sseload"]

STREAM = "/api/market-data/stream?pairs=BTC/USD"
RATE = 10.0


def run_pricectl(
    port: int, serve_pid: int, clients: int, ramp: float, duration: float, processes: int
) -> dict[str, Any]:
    """One ``pricectl loadtest --url`` run, loader pinned to CPU 1 when there are two."""
    two = (os.cpu_count() or 1) >= 2
    report = run_load_test(
        Options(
            url=f"http://127.0.0.1:{port}",
            clients=clients,
            ramp=ramp,
            duration=duration,
            processes=processes,
            server_pid=serve_pid,
            loader_cpus=(1,) if two else None,
        )
    ).to_dict()
    return {
        "loader": f"pricectl loadtest ({processes} process{'es' if processes > 1 else ''})",
        "established": report["established"],
        "events": report["events_window"],
        "events_per_s": report["events_per_s"],
        "delivered": report["delivery"],
        "gaps": report["gaps"],
        "p50": report["latency_ms"]["p50"],
        "p90": report["latency_ms"]["p90"],
        "p99": report["latency_ms"]["p99"],
        "max": report["latency_ms"]["max"],
        "loader_cpu_pct": report["loader"]["cpu_pct"],
        "loader_us_per_event": report["loader"]["us_per_event"],
        "server_cpu_pct": (report["server"] or {}).get("cpu_pct", float("nan")),
        "notes": report["notes"],
    }


def run_sseload(
    binary: str, port: int, clients: int, ramp: float, duration: float
) -> dict[str, Any]:
    """One sseload run (``-k ingest_ns``, seq gaps from ``seq``), pinned to CPU 1."""
    two = (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out.json")
        cmd = sseload.command(
            binary,
            port,
            STREAM,
            clients,
            ramp=ramp,
            duration=duration,
            json_out=out,
            ready_timeout=30,
            cpus="1" if two else None,
        )
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, timeout=duration + 180)
        r: dict[str, Any] = json.loads(out.read_text())
    events, missing = r["events"], r["seq_gaps"]
    return {
        "loader": "sseload.c (1 process)",
        "established": r["established"],
        "events": events,
        "events_per_s": r["events_per_s_window"],
        "delivered": events / (events + missing) if events else 0.0,
        "gaps": missing,
        "p50": r["latency_ms"]["p50"],
        "p90": r["latency_ms"]["p90"],
        "p99": r["latency_ms"]["p99"],
        "max": r["latency_ms"]["max"],
        "loader_cpu_pct": r["loader_cpu_pct_window"],
        "loader_us_per_event": 1e6 * r["loader_cpu_s_window"] / events if events else 0.0,
        "server_cpu_pct": float("nan"),
        "notes": [],
    }


def _wait_idle(port: int, timeout: float = 60.0) -> None:
    """Until serve reports no connected client (the previous run's are all gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if read_metrics(f"http://127.0.0.1:{port}/metrics").get("pricectl_clients", 1) == 0:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"serve still has clients {timeout:.0f}s after the run")


_FIGURES = ("events_per_s", "delivered", "p50", "p90", "p99", "loader_cpu_pct")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per loader (medians, each run's p99), then pricectl / sseload."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["loader"], []).append(r)
    out = [
        "| loader | runs | events/s | delivered | p50 ms | p90 ms | p99 ms (each run) "
        "| loader CPU | loader µs/event |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in by.items():
        each = "/".join(f"{r['p99']:.0f}" for r in rs)
        out.append(
            f"| {name} | {len(rs)} | {_median(rs, 'events_per_s'):,.0f} "
            f"| {100 * _median(rs, 'delivered'):.2f} % | {_median(rs, 'p50'):.1f} "
            f"| {_median(rs, 'p90'):.1f} | {_median(rs, 'p99'):.1f} ({each}) "
            f"| {_median(rs, 'loader_cpu_pct'):.0f} % | {_median(rs, 'loader_us_per_event'):.2f} |"
        )
    ours = [rs for name, rs in by.items() if name.startswith("pricectl")]
    theirs = [rs for name, rs in by.items() if name.startswith("sseload")]
    if ours and theirs:
        ratio = {k: _median(ours[0], k) / max(1e-9, _median(theirs[0], k)) for k in _FIGURES}
        out.append(
            f"| ratio pricectl / sseload | | {ratio['events_per_s']:.3f} "
            f"| {ratio['delivered']:.4f} | {ratio['p50']:.2f} | {ratio['p90']:.2f} "
            f"| {ratio['p99']:.2f} | {ratio['loader_cpu_pct']:.2f} | |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both loaders ``--runs`` times against one spawned serve; print the table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.crosscheck")
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--ramp", type=float, default=2000.0)
    ap.add_argument("--processes", type=int, default=1, help="pricectl loader processes")
    ap.add_argument("--sseload", default=None, help="path to sseload.c (default: $SSELOAD_C)")
    ap.add_argument("--json", type=Path, default=None, help="append every run here")
    args = ap.parse_args(argv)
    binary = sseload.build(sseload.find_source(args.sseload), "pricectl-crosscheck-sseload")
    if binary is None:
        print(
            "crosscheck: needs gcc and sseload.c: pass --sseload FILE or set SSELOAD_C",
            file=sys.stderr,
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    with spawned_system(["BTC/USD"], RATE) as system:
        if (os.cpu_count() or 1) >= 2:
            pin_tree(system.serve_pid, {0})
            pin_tree(system.simulator.pid, {1})
        port = system.serve_port
        for i in range(args.runs):
            order = ("pricectl", "sseload") if i % 2 == 0 else ("sseload", "pricectl")
            for who in order:
                _wait_idle(port)
                print(f"crosscheck: run {i + 1}, {who}", file=sys.stderr, flush=True)
                if who == "pricectl":
                    row = run_pricectl(
                        port,
                        system.serve_pid,
                        args.clients,
                        args.ramp,
                        args.duration,
                        args.processes,
                    )
                else:
                    row = run_sseload(binary, port, args.clients, args.ramp, args.duration)
                row.update(run=i + 1, clients=args.clients, at=started.isoformat())
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                runs.append(row)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
