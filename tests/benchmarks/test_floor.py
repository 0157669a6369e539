"""serve_bench's floor server speaks serve's stream: the loader reads it like serve's.

The floor is a benchmark program, so it runs as one (``python -m benchmarks.floor``):
the tests never import ``benchmarks/``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pricectl.loadtest.spawn import free_port
from tests.waiting import UNIT, wait_for

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def floor_server() -> Iterator[int]:
    """``python -m benchmarks.floor`` on a free port; yields the port once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.floor", "--port", str(port)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert proc.poll() is None, "the floor server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    try:
        wait_for(listening, 10, "the floor server to listen")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.timeout(60 * UNIT)
def test_floor_stream_is_read_by_the_loader_with_no_gaps(tmp_path: Path) -> None:
    """20 loader clients on the floor server get its 10 events/s, in order, as price events."""
    out = tmp_path / "report.json"
    with floor_server() as port:
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
