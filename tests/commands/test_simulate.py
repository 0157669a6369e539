"""`pricectl simulate` as a real process: prints both URLs, serves WS and REST, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pricectl.cli import main
from pricectl.loadtest.spawn import free_port
from tests.waiting import wait_for


@contextmanager
def _simulate(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run `pricectl simulate ARGS`; yield the process and its stdout lines as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pricectl.cli", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)


def test_simulate_prints_both_urls_and_serves() -> None:
    """It prints BINANCE_WS_URL and BINANCE_REST_URL for the port, and answers REST and WS."""
    port = free_port()
    with _simulate("--port", str(port), "--pairs", "BTC/USD,ETH/USD") as (proc, lines):
        wait_for(lambda: len(lines) >= 2 or proc.poll() is not None, 20, "the two URL lines")
        assert lines[:2] == [
            f"BINANCE_WS_URL=ws://127.0.0.1:{port}\n",
            f"BINANCE_REST_URL=http://127.0.0.1:{port}\n",
        ]
        rest = f"http://127.0.0.1:{port}/api/v3/ticker/price?symbol=BTCUSDT"
        with urllib.request.urlopen(rest, timeout=5) as r:
            assert json.load(r)["symbol"] == "BTCUSDT"

        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/ws/ethusdt@ticker", open_timeout=5) as ws:
            event = json.loads(ws.recv(timeout=5))
        assert event["e"] == "24hrTicker" and event["s"] == "ETHUSDT"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_simulate_fault_at_start() -> None:
    """--fault rest500 makes REST answer 500 from the first request."""
    port = free_port()
    with _simulate("--port", str(port), "--fault", "rest500") as (proc, lines):
        wait_for(lambda: len(lines) >= 2 or proc.poll() is not None, 20, "the two URL lines")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v3/ping", timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 500
        else:
            raise AssertionError("expected HTTP 500")


def test_simulate_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown fault or a bad duration is a usage error (exit 2) naming the option."""
    assert main(["simulate", "--fault", "explode"]) == 2
    assert "explode" in capsys.readouterr().err
    assert main(["simulate", "--max-connection-age", "soon"]) == 2
    assert "--max-connection-age" in capsys.readouterr().err
