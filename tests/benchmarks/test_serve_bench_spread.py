"""serve_bench --spread, run as the benchmark program it is, on a small scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import UNIT

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90 * UNIT)
def test_spread_holds_every_client_to_its_own_pairs(tmp_path: Path) -> None:
    """40 clients on one pair, then 40 spread over 20 pairs (1 to 5 each): every client
    reads exactly what was published for its own pairs, and a CPU figure comes out."""
    runs = tmp_path / "runs.jsonl"
    args = ["--spread", "20", "--clients", "40", "--repeat", "1", "--duration", "1.5"]
    args += ["--ramp", "1000", "--json", str(runs)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_case = {r["case"]: r for r in map(json.loads, runs.read_text().splitlines())}
    assert set(by_case) == {"1 pair", "20 pairs"}, proc.stderr
    for r in by_case.values():
        assert r["established"] == 40 and r["clients_checked"] == 40
        assert r["gaps"] == 0 and r["duplicates"] == 0
        assert r["clients_short"] == 0 and r["clients_over"] == 0
        assert r["delivery"] == 1.0 and r["us_per_event"] > 0
    assert by_case["20 pairs"]["pairs"] == 20
    assert "ratio 20 pairs / 1 pair" in proc.stdout
