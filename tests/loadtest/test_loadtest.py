"""`pricectl loadtest` end to end: a self-contained run in CI, thresholds, bad arguments."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pricectl.errors import UsageError
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.report import build_report
from pricectl.loadtest.runner import run
from pricectl.loadtest.scenarios import load_scenario, shipped_scenarios
from pricectl.loadtest.spawn import spawned_system
from tests.redis_server import RedisServer
from tests.waiting import UNIT

PRICECTL = [sys.executable, "-m", "pricectl.cli"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICECTL_")}
    return subprocess.run(
        [*PRICECTL, "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=timeout * UNIT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(90 * UNIT)
def test_spawned_run_delivers_every_event_within_thresholds(tmp_path: Path) -> None:
    """CI gate: 2000 clients on a spawned simulator + serve get every event, no gaps."""
    out = tmp_path / "report.json"
    proc = _run(
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
def test_breached_threshold_exits_1_naming_it(tmp_path: Path) -> None:
    """An impossible p99 bound makes the run exit 1 and name --max-p99-ms."""
    out = tmp_path / "r.json"
    proc = _run(
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
def test_bad_arguments_get_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Zero clients, an unknown scenario, an unreachable URL ...: one clear line, exit 2."""
    args = [a.replace("{closed}", str(_closed_port())) for a in args]
    proc = _run(args, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_shipped_scenarios_load() -> None:
    """The five shipped scenarios exist and parse, with their distinguishing actions."""
    assert shipped_scenarios() == [
        "burst",
        "failover",
        "reconnect-storm",
        "slow-readers",
        "steady",
    ]
    assert load_scenario("steady").update_rate == 10
    assert load_scenario("reconnect-storm").drop_at == 5.0
    assert load_scenario("slow-readers").slow_share == pytest.approx(0.1)
    failover = load_scenario("failover")
    assert failover.kill_leader_at == 8.0 and failover.requires_redis
    assert len(load_scenario("burst").pairs or ()) == 5


def test_bad_scenario_file_names_the_key(tmp_path: Path) -> None:
    """A scenario file with an unknown key is refused naming the file and the key."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("clients: 10\nclientz: 5\n")
    proc = _run(["--spawn", "--scenario", str(bad)], timeout=30)
    assert proc.returncode == 2
    assert "mine.yaml: unknown key 'clientz'" in proc.stderr


@pytest.mark.timeout(90 * UNIT)
def test_a_stalled_loader_process_is_named_and_the_run_still_reports() -> None:
    """A worker stalled past the window reports when asked (late); a silent one is named."""
    with spawned_system(["BTC/USD"], 10.0) as system:
        plan = Plan(
            host="127.0.0.1",
            port=system.serve_port,
            pairs=("BTC/USD",),
            clients=30,
            ramp=1000.0,
            duration=1.0,
            processes=3,
            drain_timeout=1.0,
            report_grace=1.0 * UNIT,
        )

        def on_window(phase: str, _into: float) -> None:
            workers = {p.name: p.pid for p in multiprocessing.active_children()}
            if phase == "start":  # 1 and 2 stall before they even learn of the window
                for name in ("pricectl-loadtest-1", "pricectl-loadtest-2"):
                    os.kill(workers[name], signal.SIGSTOP)
            elif phase == "overdue":  # the parent is about to ask for what they have
                os.kill(workers["pricectl-loadtest-1"], signal.SIGCONT)

        result = run(plan, on_window=on_window)
    fates = {w.index: w for w in result.workers}
    assert [fates[i].status for i in range(3)] == ["on time", "late", "lost"]
    assert "did not stop" in fates[2].detail
    report = build_report(result)
    text = "\n".join(report.lines())
    assert f"loader process 1 (pid {fates[1].pid}) was late" in text
    assert f"loader process 2 (pid {fates[2].pid}) sent no report" in text
    assert report.established == 20  # the late worker's figures count; the lost one's cannot
    assert report.events_window > 0 and report.lost_workers == 1


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
def test_failover_scenario_end_to_end(tmp_path: Path, redis_server: RedisServer) -> None:
    """--scenario failover with Redis and ingest: every client sees the gap and the new epoch."""
    scenario = tmp_path / "failover-short.yaml"
    scenario.write_text(_SHORT_FAILOVER)
    out = tmp_path / "report.json"
    proc = _run(
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


def test_scenario_lease_is_read_and_checked(tmp_path: Path) -> None:
    """A scenario's lease is read as durations; an unknown lease key is refused by name."""
    good = tmp_path / "good.yaml"
    good.write_text("lease: {ttl: 2s, renew_deadline: 1500ms, retry: 0.3s}\n")
    assert load_scenario(str(good)).lease == {"ttl": 2.0, "renew_deadline": 1.5, "retry": 0.3}
    assert load_scenario("failover").lease == {}  # the shipped one: the default lease
    bad = tmp_path / "bad.yaml"
    bad.write_text("lease: {tll: 2s}\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: lease: expected keys among ttl"):
        load_scenario(str(bad))
