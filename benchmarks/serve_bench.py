"""The serve benchmark: one pinned serve worker against the C loader, and nchan beside it.

``make bench`` (benchmarks/bench.py) runs the standard loadtest scenarios. This
driver answers the questions those do not: how one serve
worker copes with 10,000 and 19,900 clients each receiving 10 updates/s, what it costs
per delivered event and per connection, whether new connections are still accepted
promptly during the fan-out, what ``--workers 2`` adds, and how nginx + nchan (one
worker) does on the same machine in the same sitting, so the figures come with a ratio
rather than a number from another day.

Each run spawns a simulator and a serve (loadtest.spawn), pins serve to CPU 0 and the
loader (sseload.c, ``-S 4 -k ingest_ns``) to CPU 1, and measures over the
loader's window: server CPU from /proc (utime + stime of the serve process tree) per
delivered event, RSS growth from before the first client to the window start per
connection, and the time for a few extra clients to get their response while the
fan-out runs. Every case runs ``--repeat`` times; the table shows medians.

    python -m benchmarks.serve_bench [--clients 10000,19900] [--repeat 3]
        [--duration 20] [--workers 1,2] [--nchan] [--floor] [--out docs/benchmarks.md]

``--spread N`` answers another question with pricectl's own loader (sseload.c streams
one URL and checks one sequence per connection): 10,000 clients each streaming 1 to 5
of N pairs (seeded, ``--seed``) against all of them on one pair, alternating, serve
pinned to CPU 0 and ingest on a private Redis in both cases (:func:`run_spread`):

    flock /tmp/bench.lock python -m benchmarks.serve_bench --spread 200 --clients 10000 \
        --repeat 3 --duration 15 --ramp 5000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import sseload
from benchmarks.pinning import pin_tree
from pricectl.core.pairs import bundled_symbols
from pricectl.core.universe import Universe
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.probe import read_metrics, sample_process_tree
from pricectl.loadtest.report import build_report
from pricectl.loadtest.runner import run as loadtest_run
from pricectl.loadtest.spawn import free_port, spawned_system
from tests.redis_server import private_redis

__all__ = ["main", "nchan_server", "probe_connects", "run_case"]

BEGIN = "<!-- serve-bench:begin -->"
END = "<!-- serve-bench:end -->"
STREAM = "/api/market-data/stream?pairs=BTC/USD"
RATE = 10.0
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
#: --spread: seconds the loader waits after the window for clients still behind it.
DRAIN = 20.0


def _core_busy(cpus: set[int] | None) -> float:
    """Busy seconds (everything but idle and iowait, softirq included) of ``cpus`` so far.

    The process's own utime + stime leave out the loopback network work that the
    kernel hands to ksoftirqd once a core is saturated; the pinned core's busy time
    does not (it also counts anything else that ran there, so the machine must be quiet).
    """
    if not cpus:
        return 0.0
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(x) for x in fields]
                total += sum(ticks) - ticks[3] - ticks[4]
    return total / os.sysconf("SC_CLK_TCK")


def probe_connects(port: int, path: str, count: int, timeout: float = 10.0) -> list[float]:
    """Milliseconds for each of ``count`` new clients, one after another, from connect to
    the end of the response headers (the server accepted and answered the stream)."""
    out: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Accept: text/event-stream\r\n\r\n".encode()
                )
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(b"HTTP/1.1 200"):
                    out.append(1000 * (time.perf_counter() - t0))
        except OSError:
            pass
    return out


def _sseload(
    binary: str,
    port: int,
    path: str,
    clients: int,
    ramp: float,
    duration: float,
    tmp: Path,
    cpus: str | None,
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    ready, out = tmp / "ready", tmp / "out.json"
    cmd = sseload.command(
        binary,
        port,
        path,
        clients,
        ramp=ramp,
        duration=duration,
        json_out=out,
        ready=ready,
        ready_timeout=30,
        sources=4,
        cpus=cpus,
    )
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL), ready, out


def _measure(
    pid: int,
    port: int,
    path: str,
    binary: str,
    clients: int,
    ramp: float,
    duration: float,
    extra: int,
    loader_cpus: str | None,
    published: Any,
    core: set[int] | None = None,
) -> dict[str, Any]:
    """Run the loader against ``port`` and sample the server process ``pid`` around its window."""
    base = sample_process_tree(pid)
    with tempfile.TemporaryDirectory() as d:
        proc, ready, out = _sseload(
            binary, port, path, clients, ramp, duration, Path(d), loader_cpus
        )
        limit = time.monotonic() + clients / ramp + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > limit:
                proc.kill()
                raise RuntimeError(f"loader ended before its window (status {proc.poll()})")
            time.sleep(0.01)
        start, pub0, core0 = sample_process_tree(pid), published(), _core_busy(core)
        t0 = time.monotonic()
        time.sleep(duration / 2)
        connects = probe_connects(port, path, extra)
        time.sleep(max(0.0, t0 + duration - time.monotonic()))
        end, pub1, core1 = sample_process_tree(pid), published(), _core_busy(core)
        proc.wait(timeout=duration + 120)
        result: dict[str, Any] = json.loads(out.read_text())
    assert base is not None and start is not None and end is not None
    events = result["events"]
    expected = result["established"] * (pub1 - pub0)
    missing = result["seq_gaps"]
    cpu = end.cpu_s - start.cpu_s
    return {
        "clients": clients,
        "established": result["established"],
        # Exact: each connection's events against the holes in its own sequence. (The
        # published count is sampled over a window that differs from the loader's by up
        # to a latency, so events / expected is only a sanity check, kept as "coverage".)
        "delivered": events / (events + missing) if events else 0.0,
        "coverage": events / expected if expected else 0.0,
        "gaps": result["seq_gaps"],
        "min_per_conn": result["per_conn_events_min"],
        "expected_per_conn": pub1 - pub0,
        "closed": result["closed_by_server"],
        "p50": result["latency_ms"]["p50"],
        "p99": result["latency_ms"]["p99"],
        "max": result["latency_ms"]["max"],
        "events_per_s": result["events_per_s_window"],
        "server_cpu_pct": 100 * cpu / (end.at - start.at),
        "us_per_event": 1e6 * cpu / max(1, events),
        "core_busy_pct": 100 * (core1 - core0) / (end.at - start.at) if core else float("nan"),
        "core_us_per_event": 1e6 * (core1 - core0) / max(1, events) if core else float("nan"),
        "kb_per_conn": (start.rss_bytes - base.rss_bytes) / 1024 / max(1, result["established"]),
        "connect_ms": statistics.median(connects) if connects else float("nan"),
        "connect_max_ms": max(connects) if connects else float("nan"),
        "connects": f"{len(connects)}/{extra}",
        "loader_cpu_pct": result["loader_cpu_pct_window"],
    }


def run_case(
    binary: str, clients: int, workers: int, duration: float, ramp: float, extra: int
) -> dict[str, Any]:
    """One pricectl serve run: 1 worker pinned to CPU 0 (loader on 1), or N unpinned."""
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis()) if workers > 1 else None
        system = stack.enter_context(
            spawned_system(
                ["BTC/USD"], RATE, redis_url=redis_url, ingest_processes=1, serve_workers=workers
            )
        )
        port = system.serve_port
        cores = os.cpu_count() or 1
        pinned = workers == 1 and cores >= 2
        if pinned:
            pin_tree(system.serve_pid, {0})
            pin_tree(system.simulator.pid, {1})
        elif cores >= workers:
            # One core per worker (the loader goes where there is room): the fan-out's
            # work splits across cores, which is what --workers is for.
            with open(f"/proc/{system.serve_pid}/task/{system.serve_pid}/children") as f:
                for core, child in enumerate(int(c) for c in f.read().split()):
                    pin_tree(child, {core % cores})

        def published() -> float:
            if workers > 1:  # /metrics reaches one worker at random: use the nominal rate
                return RATE * time.monotonic()
            m = read_metrics(f"http://127.0.0.1:{port}/metrics")
            return m.get("pricectl_updates_received_total", 0.0)

        row = _measure(
            system.serve_pid,
            port,
            STREAM,
            binary,
            clients,
            ramp,
            duration,
            extra,
            "1" if pinned else None,
            published,
            {0} if pinned else None,
        )
        row["server"] = f"pricectl serve, {workers} worker{'s' if workers > 1 else ''}"
        return row


_NGINX_CONF = """
load_module {module};
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 40000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /sub {{ nchan_subscriber eventsource; nchan_channel_id btc;
                       nchan_subscriber_first_message newest; }}
    location = /pub {{ nchan_publisher; nchan_channel_id btc;
                       nchan_message_buffer_length 10; nchan_message_timeout 60s; }}
  }}
}}
"""


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait (10 s at most) until ``proc`` accepts connections on ``port``."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def nchan_server() -> Iterator[tuple[int, int, Any]]:
    """nginx + nchan, one worker, and a publisher at 10 messages/s carrying ``ingest_ns``
    and ``seq``; yields (port, worker pid, published-count function)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d, "nginx.conf")
        conf.write_text(_NGINX_CONF.format(module=NCHAN_MODULE, dir=d, port=port))
        master = subprocess.Popen(["nginx", "-c", str(conf), "-p", d], stderr=subprocess.DEVNULL)
        stop = threading.Event()
        count = [0]

        def publish() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            next_at = time.monotonic()
            while not stop.is_set():
                body = json.dumps(
                    {"ingest_ns": time.time_ns(), "seq": count[0] + 1, "pad": "x" * 200}
                )
                with contextlib.suppress(OSError, http.client.HTTPException):
                    conn.request("POST", "/pub", body=body)
                    conn.getresponse().read()
                    count[0] += 1
                next_at += 1 / RATE
                stop.wait(max(0.0, next_at - time.monotonic()))
            conn.close()

        try:
            _wait_listening(port, master, "nginx")
            with open(f"/proc/{master.pid}/task/{master.pid}/children") as f:
                worker = int(f.read().split()[0])
            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
            yield port, worker, lambda: float(count[0])
            stop.set()
            thread.join(timeout=5)
        finally:
            master.send_signal(signal.SIGQUIT)
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                master.kill()


@contextlib.contextmanager
def floor_server() -> Iterator[tuple[int, int]]:
    """The floor (loadtest/floor.py) in a subprocess; yields (port, pid)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.floor", "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc, "the floor server")
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_floor(
    binary: str, clients: int, duration: float, ramp: float, extra: int
) -> dict[str, Any]:
    """The same-sitting floor: a bare asyncio fan-out pinned to CPU 0, loader on CPU 1."""
    with floor_server() as (port, pid):
        pin_tree(pid, {0})
        started = time.monotonic()
        row = _measure(
            pid,
            port,
            STREAM,
            binary,
            clients,
            ramp,
            duration,
            extra,
            "1",
            lambda: RATE * (time.monotonic() - started),
            {0},
        )
        row["server"] = "floor: bare asyncio fan-out (loadtest/floor.py)"
        return row


def run_nchan(
    binary: str, clients: int, duration: float, ramp: float, extra: int
) -> dict[str, Any]:
    """The anchor: nginx + nchan, worker pinned to CPU 0, loader on CPU 1."""
    with nchan_server() as (port, worker, published):
        pin_tree(worker, {0})
        row = _measure(
            worker, port, "/sub", binary, clients, ramp, duration, extra, "1", published, {0}
        )
        row["server"] = "nginx + nchan 1.3.6, one worker"
        return row


def spread_sets(pairs: list[str], clients: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """Each client's pairs: 1 to 5 of ``pairs``, drawn with ``seed`` (the same every run)."""
    rng = random.Random(seed)
    return tuple(tuple(rng.sample(pairs, rng.randint(1, 5))) for _ in range(clients))


def spread_pairs(count: int) -> list[str]:
    """The first ``count`` TRADING pairs of the bundled list, by canonical name."""
    universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
    return list(universe.pairs[:count])


def run_spread(
    clients: int, npairs: int, rate: float, duration: float, ramp: float, seed: int
) -> dict[str, Any]:
    """One run with the project's loader (per-client pair sets), serve pinned to CPU 0.

    ``npairs`` 1: every client streams BTC/USD at ``rate`` updates/s. More: every pair
    of :func:`spread_pairs` is pinned and each client streams 1 to 5 of them
    (:func:`spread_sets`). Ingest runs on a private Redis in both cases, so serve's CPU
    is the fan-out and its bus reader alone. Every reading client's window count is
    held to what ingest published for its own pairs (each pair's seq range in the
    window, seen by any client): ``short``/``over`` clients, beside the loader's own
    gap and duplicate counts.
    """
    pairs = ["BTC/USD"] if npairs == 1 else spread_pairs(npairs)
    sets = spread_sets(pairs, clients, seed) if npairs > 1 else ()
    settings = {"PRICECTL_SERVER__MAX_PAIRS_PER_CONNECTION": str(max(50, npairs))}
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis())
        system = stack.enter_context(
            spawned_system(
                pairs,
                rate,
                redis_url=redis_url,
                ingest_processes=1,
                startup_timeout=60.0,
                settings=settings,
            )
        )
        cores = os.cpu_count() or 1
        pinned = cores >= 2
        if pinned:
            pin_tree(system.serve_pid, {0})
            pin_tree(system.simulator.pid, {1})
            for p in system.ingest:
                pin_tree(p.pid, {1})
        plan = Plan(
            host="127.0.0.1",
            port=system.serve_port,
            pairs=tuple(pairs),
            clients=clients,
            ramp=ramp,
            duration=duration,
            processes=1,
            cpus=(1,) if pinned else None,
            pair_sets=sets,
            # A late client's last window events still count once it reads them: the
            # drain is long enough for a loaded machine's seconds of latency.
            drain_timeout=DRAIN,
        )
        samples: dict[str, Any] = {}

        def on_window(phase: str, _into: float) -> None:
            if phase in ("start", "end") and phase not in samples:
                samples[phase] = sample_process_tree(system.serve_pid)

        result = loadtest_run(plan, on_window=on_window)
    report = build_report(result)
    start, end = samples.get("start"), samples.get("end")
    if start is None or end is None:
        raise RuntimeError("serve was not sampled at both ends of the window")
    spans: dict[str, int] = {}
    seen: dict[tuple[str, int], list[int]] = {}
    for f in result.finals:
        for pair, epoch, lo, hi in f["ranges"]:
            r = seen.setdefault((pair, epoch), [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
    for (pair, _), (lo, hi) in seen.items():
        spans[pair] = spans.get(pair, 0) + hi - lo + 1
    short = over = missing = 0
    checked = 0
    for f in result.finals:
        for index, got in f["client_events"]:
            want = sum(spans.get(p, 0) for p in plan.pairs_of(index))
            checked += 1
            if got < want:
                short += 1
                missing += want - got
            elif got > want:
                over += 1
    cpu = end.cpu_s - start.cpu_s
    delivered = report.events_delivered
    return {
        "case": f"{npairs} pair{'s' if npairs > 1 else ''}",
        "clients": clients,
        "established": report.established,
        "pairs": len(pairs),
        "rate": rate,
        "published_per_s": sum(spans.values()) / duration,
        "delivered_events": delivered,
        "expected_events": report.events_expected,
        "delivery": report.delivery,
        "gaps": report.gaps,
        "duplicates": report.duplicates,
        "clients_checked": checked,
        "clients_short": short,
        "clients_over": over,
        "client_missing": missing,
        "events_per_s": delivered / duration,
        "p50": report.latency_ms.get("p50", float("nan")),
        "p99": report.latency_ms.get("p99", float("nan")),
        "server_cpu_pct": 100 * cpu / (end.at - start.at),
        "us_per_event": 1e6 * cpu / max(1, delivered),
        "loader_cpu_pct": report.loader["cpu_pct"],
    }


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float | int) and not isinstance(value, bool):
            row[key] = statistics.median(float(r[key]) for r in runs)
    row["runs"] = len(runs)
    if "delivered" in runs[0]:
        row["delivered_min"] = min(r["delivered"] for r in runs)
    if "delivery" in runs[0]:
        row["delivery_min"] = min(r["delivery"] for r in runs)
    row["p99_all"] = "/".join(f"{r['p99']:.0f}" for r in runs)
    row["us_all"] = "/".join(f"{r['us_per_event']:.2f}" for r in runs)
    if "clients_short" in runs[0]:  # a count per run, not a median: one short client matters
        row["short_all"] = "/".join(str(r["clients_short"]) for r in runs)
        row["over_all"] = "/".join(str(r["clients_over"]) for r in runs)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| server | clients | runs | events/s | delivered (min) | gaps | p50 ms "
        "| p99 ms (each run) | server CPU | µs/event | core busy | core µs/event | KB/conn "
        "| new client ms (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['server']} | {int(r['clients']):,} | {r['runs']} | {r['events_per_s']:,.0f} "
            f"| {100 * r['delivered']:.2f} % ({100 * r['delivered_min']:.2f} %) "
            f"| {r['gaps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} ({r['p99_all']}) "
            f"| {r['server_cpu_pct']:.0f} % | {r['us_per_event']:.2f} "
            f"| {r['core_busy_pct']:.0f} % | {r['core_us_per_event']:.2f} | {r['kb_per_conn']:.1f} "
            f"| {r['connect_ms']:.0f} ({r['connect_max_ms']:.0f}) |"
        )
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace (or append) this driver's section of docs/benchmarks.md, nothing else."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print the table, and (with --out) write it into docs/benchmarks.md."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench")
    ap.add_argument("--clients", default="10000,19900")
    ap.add_argument("--workers", default="1", help="comma list, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--ramp", type=float, default=2000.0)
    ap.add_argument("--extra", type=int, default=10, help="new clients probed mid-window")
    ap.add_argument("--nchan", action="store_true", help="also run nginx + nchan (anchor)")
    ap.add_argument(
        "--floor", action="store_true", help="also run a bare asyncio fan-out (the floor)"
    )
    ap.add_argument("--sseload", default=None, help="path to sseload.c (default: $SSELOAD_C)")
    ap.add_argument("--json", type=Path, default=None, help="append every run here")
    ap.add_argument("--out", type=Path, default=None, help="docs/benchmarks.md to update")
    ap.add_argument(
        "--from-json", type=Path, default=None, help="no runs: tabulate runs saved by --json"
    )
    ap.add_argument(
        "--spread",
        type=int,
        default=0,
        help="N: alternate 1 pair / N pairs (1 to 5 per client) with pricectl's loader",
    )
    ap.add_argument("--seed", type=int, default=15, help="--spread: the pair sets' seed")
    args = ap.parse_args(argv)
    if args.spread:
        return _spread_main(args, argv)
    if args.from_json:
        saved: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for line in args.from_json.read_text().splitlines():
            run = json.loads(line)
            saved.setdefault((run["server"], run["clients"]), []).append(run)
        table = _table([_median_row(runs) for runs in saved.values()])
        print(table)
        if args.out:
            cmd = "python -m benchmarks.serve_bench " + " ".join(argv or sys.argv[1:])
            write_section(
                args.out, _section(table, dt.datetime.now(dt.UTC), os.getloadavg()[0], cmd)
            )
        return 0
    binary = sseload.build(sseload.find_source(args.sseload))
    if binary is None:
        print(
            "serve_bench: needs gcc and sseload.c: pass --sseload FILE or set SSELOAD_C",
            file=sys.stderr,
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()[0]
    cases: list[tuple[str, int, int]] = []
    for n in (int(c) for c in args.clients.split(",")):
        if args.nchan:
            cases.append(("nchan", n, 1))
        if args.floor:
            cases.append(("floor", n, 1))
        cases += [("pricectl", n, int(w)) for w in args.workers.split(",")]
    rows = []
    for kind, n, w in cases:
        runs = []
        for i in range(args.repeat):
            print(f"serve_bench: {kind} {n} clients, {w} worker(s), run {i + 1}", file=sys.stderr)
            try:
                if kind == "nchan":
                    run = run_nchan(binary, n, args.duration, args.ramp, args.extra)
                elif kind == "floor":
                    run = run_floor(binary, n, args.duration, args.ramp, args.extra)
                else:
                    run = run_case(binary, n, w, args.duration, args.ramp, args.extra)
            except Exception as exc:  # a failed run is reported, the others go on
                print(f"serve_bench: run failed: {exc}", file=sys.stderr)
                continue
            run["loadavg_before"] = os.getloadavg()[0]
            print(json.dumps(run), file=sys.stderr)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(run) + "\n")
            runs.append(run)
        if runs:
            rows.append(_median_row(runs))
    table = _table(rows)
    print(table)
    if args.out:
        cmd = "python -m benchmarks.serve_bench " + " ".join(argv or sys.argv[1:])
        write_section(args.out, _section(table, started, load, cmd))
    return 0


SPREAD_BEGIN = "<!-- spread-bench:begin -->"
SPREAD_END = "<!-- spread-bench:end -->"


def _spread_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """1 pair / N pairs alternating, ``--repeat`` runs each: medians and their ratio.

    Both cases deliver about the same events per second: the N-pair case publishes
    each pair at 10 / (mean pairs per client) updates/s.
    """
    clients = int(args.clients.split(",")[0])
    sets = spread_sets(spread_pairs(args.spread), clients, args.seed)
    mean = statistics.fmean(len(s) for s in sets)
    started, load = dt.datetime.now(dt.UTC), os.getloadavg()[0]
    runs: dict[int, list[dict[str, Any]]] = {1: [], args.spread: []}
    for i in range(args.repeat):
        for npairs in (1, args.spread):
            rate = RATE if npairs == 1 else RATE / mean
            print(f"serve_bench: {npairs} pair(s), {clients} clients, run {i + 1}", file=sys.stderr)
            try:
                run = run_spread(clients, npairs, rate, args.duration, args.ramp, args.seed)
            except Exception as exc:  # a failed run is reported, the others go on
                print(f"serve_bench: run failed: {exc}", file=sys.stderr)
                continue
            print(json.dumps(run), file=sys.stderr)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(run) + "\n")
            runs[npairs].append(run)
    rows = {n: _median_row(r) for n, r in runs.items() if r}
    table = _spread_table(list(rows.values()))
    one, many = rows.get(1), rows.get(args.spread)
    ratio = many["us_per_event"] / one["us_per_event"] if one and many else float("nan")
    text = table + f"\nratio {args.spread} pairs / 1 pair, µs per delivered event: {ratio:.2f}\n"
    print(text)
    if args.out:
        cmd = "python -m benchmarks.serve_bench " + " ".join(argv or sys.argv[1:])
        write_section(
            args.out,
            f"{SPREAD_BEGIN}\n## `pricectl serve`: {clients:,} clients over {args.spread} pairs\n\n"
            f"Generated {started:%Y-%m-%d %H:%M} UTC by `{cmd}` (load average {load:.1f} at "
            f"the start; mean {mean:.2f} pairs per client, seed {args.seed}).\n\n"
            + text
            + SPREAD_END,
            SPREAD_BEGIN,
            SPREAD_END,
        )
    return 0


def _spread_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| case | clients | runs | published/s | delivered/s | delivered | gaps | dups "
        "| clients short / over (each run) | p50 ms | p99 ms | serve CPU | µs/event (each run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['case']} | {int(r['established']):,} | {r['runs']} "
            f"| {r['published_per_s']:,.0f} | {r['events_per_s']:,.0f} "
            f"| {100 * r['delivery']:.2f} % (min {100 * r['delivery_min']:.2f} %) "
            f"| {r['gaps']:.0f} | {r['duplicates']:.0f} "
            f"| {r['short_all']} / {r['over_all']} of {r['clients_checked']:,.0f} "
            f"| {r['p50']:.0f} | {r['p99']:.0f} | {r['server_cpu_pct']:.0f} % "
            f"| {r['us_per_event']:.2f} ({r['us_all']}) |"
        )
    return "\n".join(out) + "\n"


def _section(table: str, started: dt.datetime, load: float, cmd: str) -> str:
    return (
        f"{BEGIN}\n## `pricectl serve`: one worker, 10,000 and 19,900 clients\n\n"
        f"Generated {started:%Y-%m-%d %H:%M} UTC by `{cmd}` (load average {load:.1f} "
        "at the start).\n\n" + table + f"{END}"
    )


if __name__ == "__main__":
    sys.exit(main())
