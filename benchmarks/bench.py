"""``make bench``: the standard scenarios, and docs/benchmarks.md's loadtest table.

Runs each shipped scenario with ``--spawn`` (simulator + one serve worker started here),
then the 10,000-client steady case with serve pinned to CPU 0 and the loader to CPU 1,
and, when ``gcc`` and ``sseload.c`` (``--sseload`` or ``$SSELOAD_C``) are at hand, the
same case measured by that independent C loader. Each case runs ``--repeat`` times
(default 3) and the table shows the median of each figure, because the machine is
shared and noisy.

The section between ``<!-- loadtest:begin -->`` and ``<!-- loadtest:end -->`` in
docs/benchmarks.md is rewritten; everything else in the file is left alone, so other
benchmarks keep their own sections.

    python -m benchmarks.bench [--repeat 3] [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import sseload
from pricectl.loadtest.probe import ServerProbe, sample_process_tree
from pricectl.loadtest.session import Options, run_load_test
from pricectl.loadtest.spawn import spawned_system
from tests.redis_server import private_redis

__all__ = ["main", "run_sseload"]

BEGIN = "<!-- loadtest:begin -->"
END = "<!-- loadtest:end -->"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _row(name: str, command: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Any) -> float:
        out = []
        for r in reports:
            try:
                out.append(float(get(r)))
            except (KeyError, TypeError):
                continue
        return _median(out)

    return {
        "case": name,
        "command": command,
        "runs": len(reports),
        "clients": reports[0]["clients"] if reports else 0,
        "delivery": med(lambda r: r["delivery"]),
        "events_per_s": med(lambda r: r["events_per_s"]),
        "p50": med(lambda r: r["latency_ms"]["p50"]),
        "p99": med(lambda r: r["latency_ms"]["p99"]),
        "max": med(lambda r: r["latency_ms"]["max"]),
        "gaps": med(lambda r: r["gaps"]),
        "errors": med(lambda r: r["error_count"]),
        "loader_pct": med(lambda r: r["loader"]["cpu_pct"]),
        "server_pct": med(lambda r: r["server"]["cpu_pct"]),
        "server_us": med(lambda r: r["server"]["us_per_event"]),
        "kb_per_conn": med(lambda r: r["server"]["bytes_per_connection"] / 1024),
    }


def _cli(options: Options) -> str:
    parts = ["pricectl loadtest --spawn"]
    if options.scenario:
        parts.append(f"--scenario {options.scenario}")
    if options.clients is not None:
        parts.append(f"--clients {options.clients}")
    if options.duration is not None:
        parts.append(f"--duration {options.duration:g}s")
    if options.ramp is not None:
        parts.append(f"--ramp {options.ramp:g}/s")
    return " ".join(parts)


def run_sseload(
    binary: str, clients: int, duration: float, ramp: float, cpus: tuple[int, ...] | None
) -> dict[str, Any]:
    """The same steady case measured by sseload.c against a spawned serve."""
    with spawned_system(["BTC/USD"], 10.0) as system:
        if cpus:
            os.sched_setaffinity(system.serve_pid, {0})
        probe = ServerProbe(pid=system.serve_pid)
        probe.at_baseline()
        with tempfile.TemporaryDirectory() as tmp:
            ready = Path(tmp, "ready")
            out = Path(tmp, "out.json")
            cmd = sseload.command(
                binary,
                system.serve_port,
                "/api/market-data/stream?pairs=BTC/USD",
                clients,
                ramp=ramp,
                duration=duration,
                json_out=out,
                ready=ready,
                cpus=",".join(map(str, cpus)) if cpus else None,
            )
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            start = end = None
            while proc.poll() is None:
                if start is None and ready.exists():
                    start = sample_process_tree(system.serve_pid)
                try:
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
            end = sample_process_tree(system.serve_pid)
            result: dict[str, Any] = json.loads(out.read_text())
        if start is not None and end is not None and probe.baseline is not None:
            cpu = end.cpu_s - start.cpu_s
            result["server_cpu_pct"] = 100.0 * cpu / duration
            result["server_us_per_event"] = 1e6 * cpu / max(1, result["events"])
            result["kb_per_conn"] = (end.rss_bytes - probe.baseline.rss_bytes) / 1024 / clients
    return result


def _sseload_row(runs: list[dict[str, Any]], command: str) -> dict[str, Any]:
    expected = [r["conns"] * 10 * r["hold_s"] for r in runs]

    def med(key: str, sub: str | None = None) -> float:
        return _median([float(r[key][sub] if sub else r.get(key, 0.0)) for r in runs])

    return {
        "case": "steady 10k, C loader (sseload.c)",
        "command": command,
        "runs": len(runs),
        "clients": runs[0]["conns"] if runs else 0,
        "delivery": _median([r["events"] / e for r, e in zip(runs, expected, strict=True)]),
        "events_per_s": med("events_per_s_window"),
        "p50": med("latency_ms", "p50"),
        "p99": med("latency_ms", "p99"),
        "max": med("latency_ms", "max"),
        "gaps": med("seq_gaps"),
        "errors": med("failed"),
        "loader_pct": med("loader_cpu_pct_window"),
        "server_pct": med("server_cpu_pct"),
        "server_us": med("server_us_per_event"),
        "kb_per_conn": med("kb_per_conn"),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | clients | runs | delivered | events/s | p50 ms | p99 ms | max ms | gaps "
        "| errors | loader CPU | server CPU | server µs/event | KB/conn |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['case']} | {r['clients']:,} | {r['runs']} | {100 * r['delivery']:.2f} % "
        f"| {r['events_per_s']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} "
        f"| {r['gaps']:.0f} | {r['errors']:.0f} | {r['loader_pct']:.0f} % "
        f"| {r['server_pct']:.0f} % | {r['server_us']:.1f} | {r['kb_per_conn']:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _section(rows: list[dict[str, Any]], started: dt.datetime, notes: list[str]) -> str:
    cmds = "\n".join(f"    {r['command']}" for r in rows)
    note_text = "".join(f"- {n}\n" for n in notes)
    return (
        f"{BEGIN}\n"
        "## `pricectl loadtest`: standard scenarios (`make bench`)\n\n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores "
        f"(Python {sys.version.split()[0]}), shared with other work, so each figure is the "
        "median of the runs. Every case spawns its own simulator and one serve worker "
        "(memory bus, bookTicker, 10 updates/s per pair unless the scenario says otherwise). "
        "Latency is receive time minus `ingest_ns`; delivery counts events of the window "
        "against the sequence numbers published in it; CPU is percent of one core over "
        "the window.\n\n"
        + _table(rows)
        + "\nCommands (each case):\n\n"
        + cmds
        + "\n\n"
        + note_text
        + f"{END}\n"
    )


def write_section(path: Path, section: str) -> None:
    """Replace (or add) the loadtest section of docs/benchmarks.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        before = text[: text.index(BEGIN)]
        after = text[text.index(END) + len(END) :].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark suite and rewrite the loadtest section of docs/benchmarks.md."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short windows, no 10k case")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--sseload", default=None, help="path to sseload.c (default: $SSELOAD_C)")
    args = ap.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    two = (os.cpu_count() or 1) >= 2
    quick = 5.0 if args.quick else None
    cases: list[tuple[str, Options]] = [
        (name, Options(spawn=True, scenario=name, duration=quick))
        for name in ("steady", "burst", "reconnect-storm", "slow-readers")
    ]
    if shutil.which("redis-server"):
        cases.append(("failover", Options(spawn=True, scenario="failover", duration=quick)))
    if not args.quick:
        cases.append(
            (
                "steady 10k, one serve worker",
                Options(
                    spawn=True,
                    scenario="steady",
                    clients=10_000,
                    duration=20.0,
                    ramp=2000.0,
                    serve_cpus=(0,) if two else None,
                    loader_cpus=(1,) if two else None,
                ),
            )
        )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name, options in cases:
        reports = []
        for i in range(args.repeat):
            print(f"bench: {name} run {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
            try:
                with _redis_for(options) as opts:
                    reports.append(run_load_test(opts).to_dict())
            except Exception as exc:  # a case that cannot run is reported, not fatal
                notes.append(f"{name}: run {i + 1} failed: {exc}")
        if reports:
            rows.append(_row(name, _cli(options), reports))
    source = sseload.find_source(args.sseload)
    binary = None if args.quick else sseload.build(source)
    if binary is not None and source is not None:
        runs = []
        for i in range(args.repeat):
            print(f"bench: sseload run {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
            runs.append(run_sseload(binary, 10_000, 20.0, 2000.0, (1,) if two else None))
        cmd = (
            f"gcc -O2 -o /tmp/sseload {source.name}; taskset -c 1 /tmp/sseload -p PORT "
            "-u '/api/market-data/stream?pairs=BTC/USD' -n 10000 -r 2000 -d 20 -k ingest_ns"
        )
        rows.append(_sseload_row(runs, cmd))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.out, _section(rows, started, notes))
    print(_table(rows))
    return 0


class _redis_for:
    """For the failover case: a throwaway redis-server on a free port, then the options."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Options:
        if self.options.scenario != "failover":
            return self.options
        from dataclasses import replace

        return replace(self.options, redis=self.stack.enter_context(private_redis()))

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


if __name__ == "__main__":
    sys.exit(main())
