"""serve_bench's floor server speaks serve's stream: the loader reads it like serve's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pricectl.loadtest.serve_bench import floor_server
from tests.waiting import UNIT


@pytest.mark.timeout(60 * UNIT)
def test_floor_stream_is_read_by_the_loader_with_no_gaps(tmp_path: Path) -> None:
    """20 loader clients on the floor server get its 10 events/s, in order, as price events."""
    out = tmp_path / "report.json"
    with floor_server() as (port, _pid):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pricectl.cli",
                "loadtest",
                "--url",
                f"http://127.0.0.1:{port}",
                "--clients",
                "20",
                "--processes",
                "1",
                "--duration",
                "2s",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=45 * UNIT,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["established"] == 20
    assert report["events"] >= 20 * 10  # 10/s for 2 s, less the edges
    assert report["gaps"] == 0 and report["duplicates"] == 0
