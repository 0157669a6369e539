"""The pairs benchmark, run as the benchmark program it is, on a small scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import UNIT

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90 * UNIT)
def test_pairs_bench_measures_latency_and_cpu_per_update() -> None:
    """Three pairs added one at a time get a first update then a live one; 60 pairs active
    are spread as configured and every one publishes, with no control error."""
    args = ["--new", "3", "--interval", "0.1", "--pairs", "60", "--runs", "1"]
    args += ["--warmup", "0.5", "--seconds", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pairs_bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    lat = result["latency"]
    assert lat["pairs"] == 3
    assert 0 < lat["first_update_p50_ms"] <= lat["live_p50_ms"] <= lat["live_p99_ms"]
    assert lat["relay_time_to_live_ms"]["count"] == 3
    by_per = {r["streams_per_connection"]: r for r in result["cpu"]}
    assert by_per[200]["connections"] == 1 and by_per[200]["pairs"] == 60
    assert all(r["updates_per_s"] > 30 and r["us_per_update"] > 0 for r in result["cpu"])
