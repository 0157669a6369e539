"""What the local exchange costs as the number of subscribed symbols grows: 0, 5, 1,500.

Runs ``pricectl simulate`` as its own process (``--pairs`` keeps its two always-moving
symbols, as in ordinary use), subscribes N symbols' ``<kind>`` streams over
connections of at most 750 streams each (one SUBSCRIBE per connection), reads every
frame in this process, and measures the simulator's CPU time (``/proc/<pid>/stat``,
user + system) over ``--seconds`` after a warm-up. Each figure is the median of
``--runs`` runs; the simulator is started afresh for each run.

    python -m benchmarks.sim_bench                         # ticker, N = 0, 5, 1500
    python -m benchmarks.sim_bench --kind bookTicker --symbols 5,1500 --json

``--python`` and ``--cwd`` run another checkout's simulator (its own virtualenv), to
compare before and after a change. On a shared machine hold the lock:
``flock /tmp/bench.lock python -m benchmarks.sim_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

__all__ = ["main", "measure", "symbols"]

_PER_CONNECTION = 750
_TICKS = os.sysconf("SC_CLK_TCK")


def symbols(n: int) -> list[str]:
    """The first ``n`` symbols of the bundled list, in its order, upper case."""
    from pricectl.simulator.market import load_symbol_specs

    return list(load_symbol_specs())[:n]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _read(ws: Any, counter: list[int]) -> None:
    async for _ in ws:
        counter[0] += 1


async def _run(ws_url: str, pid: int, names: list[str], warmup: float, seconds: float) -> Any:
    counter = [0]
    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for i in range(0, len(names), _PER_CONNECTION):
            ws = await stack.enter_async_context(
                connect(ws_url + "/stream", ping_interval=None, max_queue=None)
            )
            request = {"method": "SUBSCRIBE", "params": names[i : i + _PER_CONNECTION], "id": i}
            await ws.send(json.dumps(request))
            answer = json.loads(await ws.recv())
            while "id" not in answer:
                answer = json.loads(await ws.recv())
            if answer != {"result": None, "id": i}:
                raise RuntimeError(f"SUBSCRIBE refused: {answer}")
            conns.append(ws)
        async with asyncio.TaskGroup() as tg:
            readers = [tg.create_task(_read(ws, counter)) for ws in conns]
            await asyncio.sleep(warmup)
            cpu0, frames0, t0 = _cpu_s(pid), counter[0], time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, frames1, t1 = _cpu_s(pid), counter[0], time.monotonic()
            for task in readers:
                task.cancel()
    wall = t1 - t0
    frames = frames1 - frames0
    return {
        "cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
        "frames_per_s": frames / wall,
        "us_per_frame": 1e6 * (cpu1 - cpu0) / frames if frames else float("nan"),
    }


def measure(
    n: int, kind: str, trade_rate: float, warmup: float, seconds: float, python: str, cwd: str
) -> dict[str, float]:
    """One run: a fresh simulator, ``n`` symbols' ``kind`` streams, its CPU over ``seconds``."""
    cmd = [python, "-m", "pricectl.cli", "simulate", "--port", "0", "--pairs", "BTC/USD,ETH/USD"]
    cmd += ["--trade-rate", str(trade_rate)]
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("BINANCE_WS_URL="):
            raise RuntimeError(f"simulate printed {line!r}")
        ws_url = line.strip().partition("=")[2]
        names = [f"{s.lower()}@{kind}" for s in symbols(n)]
        result: dict[str, float] = asyncio.run(_run(ws_url, proc.pid, names, warmup, seconds))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", default="0,5,1500", help="comma-separated N (default 0,5,1500)")
    ap.add_argument("--kind", default="ticker", help="stream type to subscribe (default ticker)")
    ap.add_argument("--trade-rate", type=float, default=10.0, help="the simulator's --trade-rate")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=sys.executable, help="the simulator's interpreter")
    ap.add_argument("--cwd", default=".", help="the checkout the simulator runs from")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.symbols.split(",")):
        runs = [
            measure(n, args.kind, args.trade_rate, args.warmup, args.seconds, args.python, args.cwd)
            for _ in range(args.runs)
        ]
        row: dict[str, Any] = {"symbols": n, "kind": args.kind, "runs": args.runs}
        for key in ("cpu_pct", "frames_per_s", "us_per_frame"):
            row[key] = statistics.median(r[key] for r in runs)
        row["cpu_pct_runs"] = [round(r["cpu_pct"], 2) for r in runs]
        rows.append(row)
    idle = next((r["cpu_pct"] for r in rows if r["symbols"] == 0), None)
    for r in rows:
        # CPU above the idle simulator (nothing subscribed), per frame delivered.
        extra = r["cpu_pct"] - idle if idle is not None else float("nan")
        r["marginal_us_per_frame"] = (
            1e4 * extra / r["frames_per_s"] if r["frames_per_s"] else float("nan")
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| subscribed | stream | frames/s | simulator CPU | µs/frame above idle | runs (CPU %) |")
    print("| ---: | --- | ---: | ---: | ---: | --- |")
    for r in rows:
        per = "" if r["symbols"] == 0 else f"{r['marginal_us_per_frame']:.1f}"
        print(
            f"| {r['symbols']} | {r['kind']} | {r['frames_per_s']:.0f} | {r['cpu_pct']:.2f} % "
            f"| {per} | {r['cpu_pct_runs']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
