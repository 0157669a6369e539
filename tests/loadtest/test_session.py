"""One load-test run from options to report: precedence of every knob, end-to-end runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pricectl.config import LoadtestSettings
from pricectl.loadtest.session import Options, resolve
from pricectl.loadtest.spawn import free_port
from tests.redis_server import RedisServer
from tests.waiting import UNIT

Run = Callable[..., subprocess.CompletedProcess[str]]


# --- one precedence for every knob: flag > scenario > config > built-in ---------------------

_URL = "http://127.0.0.1:1"  # resolve() connects to nothing
#: What each layer sets a knob to, all different; None where the layer has no such knob.
#: knob: (flag, scenario file text, config value, built-in)
_LAYERS: dict[str, tuple[Any, str | None, Any, Any]] = {
    "clients": (11, "clients: 22", 33, 1000),
    "ramp": (11.0, "ramp: 22", 33, 2000.0),
    "duration": (11.0, "duration: 22s", 33.0, 30.0),
    "processes": (1, None, 3, 0),
    "pairs": (("ETH/USD",), "pairs: [SOL/USD]", None, ("BTC/USD",)),
    "update_rate": (11.0, "update_rate: 22", None, 10.0),
    "max_p99_ms": (11.0, "thresholds: {max_p99_ms: 22}", 33.0, None),
    "min_delivery": (0.1, "thresholds: {min_delivery: 0.2}", 0.3, None),
    "max_gaps": (11, "thresholds: {max_gaps: 22}", None, None),
    "max_errors": (11, "thresholds: {max_errors: 22}", None, None),
}
_SCENARIO_VALUE = {
    "clients": 22,
    "ramp": 22.0,
    "duration": 22.0,
    "pairs": ("SOL/USD",),
    "update_rate": 22.0,
    "max_p99_ms": 22.0,
    "min_delivery": 0.2,
    "max_gaps": 22,
    "max_errors": 22,
}
_IN_CONFIG = [k for k, (_, _, cfg, _) in _LAYERS.items() if cfg is not None]
_IN_SCENARIO = [k for k, (_, sc, _, _) in _LAYERS.items() if sc is not None]


def _every_config_knob() -> LoadtestSettings:
    return LoadtestSettings(**{k: _LAYERS[k][2] for k in _IN_CONFIG})


def _scenario(tmp_path: Path, knobs: list[str]) -> str:
    path = tmp_path / "layer.yaml"
    path.write_text("".join(f"{_LAYERS[k][1]}\n" for k in knobs))
    return str(path)


def test_built_in_when_no_layer_sets_a_knob() -> None:
    """With no flag, no scenario and no config, every knob takes its built-in value."""
    o, scenario = resolve(Options(url=_URL))
    assert scenario is None
    assert {k: getattr(o, k) for k in _LAYERS} == {k: v[3] for k, v in _LAYERS.items()}


@pytest.mark.parametrize("knob", _IN_CONFIG)
def test_config_beats_built_in(knob: str) -> None:
    """A knob set in the loadtest section of the config wins over the built-in."""
    o, _ = resolve(Options(url=_URL), LoadtestSettings(**{knob: _LAYERS[knob][2]}))
    assert getattr(o, knob) == _LAYERS[knob][2]


def test_a_configured_threshold_of_zero_is_not_checked() -> None:
    """loadtest.max_p99_ms / min_delivery: 0 in the config mean "not checked", as documented."""
    o, _ = resolve(Options(url=_URL), LoadtestSettings(max_p99_ms=0.0, min_delivery=0.0))
    assert o.max_p99_ms is None and o.min_delivery is None


@pytest.mark.parametrize("knob", _IN_SCENARIO)
def test_scenario_beats_config(tmp_path: Path, knob: str) -> None:
    """A knob the scenario sets wins over the config (min_delivery and max_p99_ms included)."""
    options = Options(url=_URL, scenario=_scenario(tmp_path, [knob]))
    o, _ = resolve(options, _every_config_knob())
    assert getattr(o, knob) == _SCENARIO_VALUE[knob]


@pytest.mark.parametrize("knob", list(_LAYERS))
def test_flag_beats_scenario_and_config(tmp_path: Path, knob: str) -> None:
    """A knob given on the command line wins over the scenario and the config."""
    options = Options(
        url=_URL, scenario=_scenario(tmp_path, _IN_SCENARIO), **{knob: _LAYERS[knob][0]}
    )
    o, _ = resolve(options, _every_config_knob())
    assert getattr(o, knob) == _LAYERS[knob][0]


@pytest.mark.timeout(60 * UNIT)
def test_the_command_puts_the_scenario_threshold_above_the_config(
    tmp_path: Path, run_loadtest: Run
) -> None:
    """`pricectl --config F loadtest --scenario S`: S's max_p99_ms, not F's, decides the exit."""
    config = tmp_path / "pricectl.yaml"
    config.write_text("loadtest:\n  max_p99_ms: 100000\n")
    scenario = tmp_path / "tight.yaml"
    scenario.write_text("clients: 20\nduration: 2s\nthresholds: {max_p99_ms: 0.001}\n")
    proc = run_loadtest(["--spawn", "--scenario", str(scenario)], timeout=50, config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--max-p99-ms 0.001" in proc.stderr


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
    args = [a.replace("{closed}", str(free_port())) for a in args]
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
    # the gap browsers saw: a standby noticing the dead leader's presence gone and taking
    # over at once (not after the lease ran out), then its REST snapshot
    silence = report["longest_silence_ms"]
    assert 0 < silence["p50"] <= silence["max"] < 3000, silence
