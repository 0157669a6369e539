"""loader_bench runs on the loader's modules and checks its own counts (run as a program)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loader_bench_times_every_event_it_feeds() -> None:
    """`python -m benchmarks.loader_bench --json`: ns per event, for the events it fed."""
    args = ["--clients", "20", "--events", "6", "--feed", "4", "--runs", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader_bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["clients"] == 20 and result["events"] == 4 and result["runs"] == 2
    assert len(result["ns_per_event_runs"]) == 2 and result["ns_per_event"] > 0
