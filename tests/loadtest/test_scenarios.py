"""Scenario files: the shipped five, and errors reported as the config file's are."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pricectl.errors import ConfigError, UsageError
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


def test_a_typo_and_a_bad_duration_are_both_reported_with_line_and_suggestion(
    tmp_path: Path,
) -> None:
    """Every problem in a scenario file at once: file:line, the dotted key, "did you mean"."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("clients: 10\nduration: ten\nthresholds:\n  max_gap: 0\nclientz: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_scenario(str(bad))
    problems = caught.value.problems
    assert len(problems) == 3, problems
    where = str(bad)
    assert f"{where}:2: duration: expected a duration such as 250ms, 15s, 2m, got 'ten'" in problems
    assert any(
        p.startswith(f"{where}:4: thresholds.max_gap: unknown key (did you mean max_gaps?)")
        for p in problems
    ), problems
    assert any(
        p.startswith(f"{where}:5: clientz: unknown key (did you mean clients?); expected one of")
        for p in problems
    ), problems


def test_bad_scenario_file_names_the_key(tmp_path: Path, run_loadtest: Run) -> None:
    """`loadtest --scenario FILE` with a typo and a bad duration: both lines on stderr, exit 2."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("clients: 10\nclientz: 5\nduration: soon\n")
    proc = run_loadtest(["--spawn", "--scenario", str(bad)], timeout=30)
    assert proc.returncode == 2
    assert "mine.yaml:2: clientz: unknown key (did you mean clients?)" in proc.stderr
    assert "mine.yaml:3: duration: expected a duration" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scenario_lease_is_read_and_checked(tmp_path: Path) -> None:
    """A scenario's lease is read as durations; an unknown lease key is refused by name."""
    good = tmp_path / "good.yaml"
    good.write_text("lease: {ttl: 2s, renew_deadline: 1500ms, retry: 0.3s}\n")
    assert load_scenario(str(good)).lease == {"ttl": 2.0, "renew_deadline": 1.5, "retry": 0.3}
    assert load_scenario("failover").lease == {}  # the shipped one: the default lease
    bad = tmp_path / "bad.yaml"
    bad.write_text("lease: {tll: 2s}\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml:1: lease\.tll: unknown key \(did you mean ttl"
    ):
        load_scenario(str(bad))


def test_zero_is_a_value_and_absent_is_not_given(tmp_path: Path) -> None:
    """max_gaps: 0 and drop_at: 0s are kept; keys left out come back as not given (None)."""
    zero = tmp_path / "zero.yaml"
    zero.write_text("drop_at: 0s\nthresholds: {max_gaps: 0}\n")
    sc = load_scenario(str(zero))
    assert sc.drop_at == 0.0 and sc.thresholds == {"max_gaps": 0}
    assert sc.kill_leader_at is None and sc.clients is None and sc.pairs is None
    assert sc.ramp is None and sc.duration is None and sc.update_rate is None
    assert sc.lease == {} and sc.name == "zero"


def test_pairs_are_normalised_and_a_malformed_one_is_named(tmp_path: Path) -> None:
    """Scenario pairs read as --pairs does (BTC/USD, no repeats); a bad one gets its line."""
    good = tmp_path / "good.yaml"
    good.write_text("pairs: [btc/usd, ETH/USD, BTC/USD]\n")
    assert load_scenario(str(good)).pairs == ("BTC/USD", "ETH/USD")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs:\n  - BTC/USD\n  - BTCUSD\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: pairs\[1\]: malformed pair 'BTCUSD'"):
        load_scenario(str(bad))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("clients: 0\n", "clients: must be at least 1"),
        ("ramp: 0\n", "ramp: must be greater than 0"),
        ("slow_share: 1\n", "slow_share: expected a share below 1, got 1"),
        ("thresholds: {min_delivery: 2}\n", "thresholds.min_delivery: must be between 0 and 1"),
        ("- just\n- a list\n", "(top level): expected a mapping of settings"),
    ],
)
def test_impossible_values_are_refused_naming_the_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A load that is no load, a share that is everyone, a delivery above 1: named, with line."""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_scenario(str(path))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_unknown_scenario_name_is_a_usage_error() -> None:
    """A name that is neither shipped nor a file lists the shipped ones."""
    with pytest.raises(UsageError, match="unknown scenario 'nope'; expected one of burst"):
        load_scenario("nope")
