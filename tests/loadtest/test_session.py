"""One load-test run from options to report, end to end through `pricectl loadtest`."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.waiting import UNIT

Run = Callable[..., subprocess.CompletedProcess[str]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90 * UNIT)
def test_spawned_run_delivers_every_event_within_thresholds(
    tmp_path: Path, run_loadtest: Run
) -> None:
    """CI gate: 2000 clients on a spawned simulator + serve get every event, no gaps."""
    out = tmp_path / "report.json"
    proc = run_loadtest(
        [
            "--spawn",
            "--clients",
            "2000",
            "--duration",
            "20s",
            "--min-delivery",
            "0.999",
            "--max-gaps",
            "0",
            "--max-p99-ms",
            "5000",
            "--json",
            str(out),
        ],
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["breaches"] == []
    assert report["established"] == 2000
    assert report["events_expected"] >= 2000 * 150  # ~10 updates/s for 20 s
    assert report["delivery"] >= 0.999
    assert report["gaps"] == 0 and report["duplicates"] == 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["server"]["cpu_s"] > 0
    assert "delivery 1.0" in proc.stdout or "delivery 0.99" in proc.stdout


@pytest.mark.timeout(60 * UNIT)
def test_breached_threshold_exits_1_naming_it(tmp_path: Path, run_loadtest: Run) -> None:
    """An impossible p99 bound makes the run exit 1 and name --max-p99-ms."""
    out = tmp_path / "r.json"
    proc = run_loadtest(
        [
            "--spawn",
            "--clients",
            "50",
            "--duration",
            "3s",
            "--max-p99-ms",
            "0.001",
            "--json",
            str(out),
        ],
        timeout=50,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--max-p99-ms" in proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert any("p99" in b for b in report["breaches"])
    assert report["delivery"] > 0.99  # the run itself was fine


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:1", "--clients", "0"], "--clients must be at least 1"),
        (["--spawn", "--scenario", "no-such-thing"], "unknown scenario 'no-such-thing'"),
        (["--url", "http://127.0.0.1:{closed}", "--clients", "5"], "cannot reach"),
        (["--url", "ftp://example", "--clients", "5"], "--url must be http://"),
        (["--clients", "5"], "give exactly one of --url URL or --spawn"),
        (["--url", "http://127.0.0.1:1", "--pairs", "NOPE"], "--pairs"),
        (["--spawn", "--scenario", "failover"], "needs --spawn --redis"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    args: list[str], message: str, run_loadtest: Run
) -> None:
    """Zero clients, an unknown scenario, an unreachable URL ...: one clear line, exit 2."""
    args = [a.replace("{closed}", str(_closed_port())) for a in args]
    proc = run_loadtest(args, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


_SHORT_FAILOVER = """\
# the shipped failover scenario, shortened for CI: a 2 s lease instead of 15 s
description: ingest leader killed mid-run, short lease
clients: 50
pairs: [BTC/USD]
ramp: 1000
duration: 7s
update_rate: 10
kill_leader_at: 1.5s
requires_redis: true
lease: {ttl: 2s, renew_deadline: 1.5s, retry: 0.3s}
thresholds: {max_gaps: 0, min_delivery: 0.999}
"""


@pytest.mark.timeout(90 * UNIT)
def test_failover_scenario_end_to_end(
    tmp_path: Path, redis_server: RedisServer, run_loadtest: Run
) -> None:
    """--scenario failover with Redis and ingest: every client sees the gap and the new epoch."""
    scenario = tmp_path / "failover-short.yaml"
    scenario.write_text(_SHORT_FAILOVER)
    out = tmp_path / "report.json"
    proc = run_loadtest(
        ["--spawn", "--redis", redis_server.url, "--scenario", str(scenario), "--json", str(out)],
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    killed = [n for n in report["notes"] if n.startswith("ingest leader pid")]
    assert killed, report["notes"]
    assert report["established"] == 50 and report["error_count"] == 0
    # every client moved to the new leader's epoch, with nothing lost or repeated
    assert report["epoch_changes"] == 50
    assert report["gaps"] == 0 and report["duplicates"] == 0 and report["delivery"] >= 0.999
    # the gap browsers saw: the dead leader's lease running out, then the standby taking over
    silence = report["longest_silence_ms"]
    assert 1000 <= silence["p50"] <= silence["max"] < 6000, silence
