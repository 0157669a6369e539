"""The bus benchmark's coalescing publisher, run as the benchmark program it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.waiting import UNIT

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60 * UNIT)
def test_publisher_coalesces_updates_that_arrive_together(redis_server: RedisServer) -> None:
    """Updates submitted while a publish is in flight go out together: far fewer script calls
    than updates (50 are submitted between two yields to the loop, so at most a handful
    of calls whatever the machine's load), and a subscriber gets every one, in order."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bus_bench",
            "--url",
            redis_server.url,
            "--mode",
            "submit",
            "--updates",
            "500",
            "--per-yield",
            "50",
            "--runs",
            "1",
            "--subscribe",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=45 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert run["received"] == 500 and run["in_order"]
    assert 0 < run["batches"] < 50
