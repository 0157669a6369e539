"""`pricectl config check` and `pricectl config show`."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import RunPricectl

ROOT = Path(__file__).resolve().parents[2]


def test_check_shipped_file_is_valid(run_pricectl: RunPricectl) -> None:
    """The shipped config/pricectl.yaml passes `config check` with a one-line summary."""
    result = run_pricectl("config", "check", str(ROOT / "config" / "pricectl.yaml"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert "ok: 5 pairs" in result.stdout


def test_check_runs_without_any_file(run_pricectl: RunPricectl) -> None:
    """With no file at all the built-in defaults are checked and valid."""
    result = run_pricectl("config", "check")
    assert result.returncode == 0
    assert result.stdout.startswith("defaults: ok")


def test_check_lists_every_problem_with_file_line_and_key(
    tmp_path: Path, run_pricectl: RunPricectl
) -> None:
    """A key typo, a bad duration and an unknown pair: all three, with file and line, exit 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "exchange:\n"
        "  strem: ticker\n"
        "resilience:\n"
        "  breaker:\n"
        "    cooldown: soon\n"
        "pairs:\n"
        "  - BTC/USD\n"
        "  - FOO/BAR\n"
    )
    result = run_pricectl("config", "check", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert f"{bad}:2: exchange.strem: unknown key (did you mean stream?)" in lines[0]
    assert f"{bad}:5: resilience.breaker.cooldown: expected a duration" in lines[1]
    assert "got 'soon'" in lines[1]
    assert f"{bad}:8: pairs[1]: unknown pair FOO/BAR" in lines[2]


def test_check_missing_file(tmp_path: Path, run_pricectl: RunPricectl) -> None:
    """A config file that does not exist: exit 2 naming it."""
    result = run_pricectl("config", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


def test_show_applies_environment_and_redacts(tmp_path: Path, run_pricectl: RunPricectl) -> None:
    """`config show` prints the effective settings after env overrides, password redacted."""
    result = run_pricectl(
        "config",
        "show",
        env={
            "REDIS_URL": "redis://app:s3cret@redis.internal:6379/0",
            "PRICECTL_LEADER__TTL": "20s",
            "PRICECTL_LEADER__RENEW_DEADLINE": "12s",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["bus"]["url"] == "redis://app:***@redis.internal:6379/0"
    assert shown["leader"]["ttl"] == "20s"
    assert shown["leader"]["renew_deadline"] == "12s"
