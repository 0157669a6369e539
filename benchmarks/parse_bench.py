"""How many Binance frames per second one process turns into price updates.

Measures :meth:`pricectl.core.binance.FrameParser.parse` alone (no sockets), over:

* ``ticker`` and ``bookTicker`` combined-stream frames built by the simulator's own
  generator (:class:`pricectl.simulator.market.Market`), for a handful of pairs;
* the real 2021-04-05 recording (1651 bookTicker + 349 aggTrade frames, a parser for
  ``bookTicker`` that ignores and counts the aggTrade frames), repeated.

Each figure is the median of ``--runs`` runs. Run::

    python -m benchmarks.parse_bench            # or: --frames 200000 --runs 5 --json

Goal: at least 50,000 frames/s on one core for ticker and bookTicker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pricectl.core.binance import FrameParser
from pricectl.core.pairs import PairMap
from pricectl.simulator.market import Market

__all__ = ["bench", "main", "recording_pairs", "simulated_frames"]

_PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD")
_RECORDING = "cryptofeed-binance-spot-2021-04-05.jsonl"


def simulated_frames(kind: str, n: int, seed: int = 0) -> list[str]:
    """``n`` combined frames of ``kind`` (``ticker`` or ``bookTicker``) from the generator."""
    market = Market(seed)
    pm = PairMap.build(_PAIRS, {"USD": "USDT"})
    symbols = pm.symbols
    out: list[str] = []
    now_ms = 1_700_000_000_000
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        now_ms += 1
        if kind == "ticker":
            market.trade(symbol, now_ms)
            data = market.ticker(symbol, now_ms)
        else:
            data = market.trade(symbol, now_ms)[2]
        payload = json.dumps(data, separators=(",", ":"))
        out.append(f'{{"stream":"{symbol.lower()}@{kind}","data":{payload}}}')
    return out


#: The real recordings, kept with the tests (the benchmark reads them, never imports).
_REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "binance" / "real"


def recording_pairs() -> tuple[str, ...]:
    """The display pairs of the 10 symbols in the 2021-04-05 recording (its ``.pairs.txt``)."""
    text = (_REAL / _RECORDING.replace(".jsonl", ".pairs.txt")).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


def _recording_frames(n: int) -> list[str] | None:
    path = _REAL / _RECORDING
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return (lines * (n // len(lines) + 1))[:n]


def bench(frames: list[str], pair_map: PairMap, kind: str, runs: int) -> dict[str, float]:
    """Median frames/s over ``runs`` passes of a fresh parser over ``frames``."""
    rates = []
    produced = 0
    for _ in range(runs):
        parser = FrameParser(pair_map, kind)
        recv_ns = time.time_ns()
        t0 = time.perf_counter()
        for text in frames:
            parser.parse(text, recv_ns)
        elapsed = time.perf_counter() - t0
        rates.append(len(frames) / elapsed)
        produced = parser.counts[f"parsed:{kind}"]
    return {
        "frames": len(frames),
        "updates": produced,
        "median_fps": statistics.median(rates),
        "min_fps": min(rates),
        "max_fps": max(rates),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per case (or JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames per run and case")
    ap.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)

    sim_pairs = PairMap.build(_PAIRS, {"USD": "USDT"})
    results: dict[str, dict[str, float]] = {}
    for kind in ("ticker", "bookTicker"):
        frames = simulated_frames(kind, args.frames)
        results[f"simulated {kind}"] = bench(frames, sim_pairs, kind, args.runs)
    recorded = _recording_frames(args.frames)
    if recorded is not None:
        pm = PairMap.build(recording_pairs(), {"USD": "USDT"})
        results["recording 2021-04-05 (bookTicker parser)"] = bench(
            recorded, pm, "bookTicker", args.runs
        )
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
    else:
        for name, r in results.items():
            print(
                f"{name:45s} {r['median_fps']:>10,.0f} frames/s median "
                f"(min {r['min_fps']:,.0f}, max {r['max_fps']:,.0f}; "
                f"{r['frames']:,} frames, {r['updates']:,} updates)"
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
