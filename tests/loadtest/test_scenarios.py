"""Scenario files: the shipped five, and errors naming the file and the key."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pricectl.errors import UsageError
from pricectl.loadtest.scenarios import load_scenario, shipped_scenarios

Run = Callable[..., subprocess.CompletedProcess[str]]


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


def test_bad_scenario_file_names_the_key(tmp_path: Path, run_loadtest: Run) -> None:
    """A scenario file with an unknown key is refused naming the file and the key."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("clients: 10\nclientz: 5\n")
    proc = run_loadtest(["--spawn", "--scenario", str(bad)], timeout=30)
    assert proc.returncode == 2
    assert "mine.yaml: unknown key 'clientz'" in proc.stderr


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
