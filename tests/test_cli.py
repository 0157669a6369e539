"""The root command: plugin discovery, --help for every command, exit codes, lazy imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pricectl.cli import Duration, _entry_points, cli, main
from tests.conftest import RunPricectl

ROOT = Path(__file__).resolve().parents[1]


def test_root_help_lists_registered_commands() -> None:
    """`pricectl --help` lists every command registered in the entry-point group."""
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in _entry_points():
        assert name in result.output


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_every_command_help(name: str) -> None:
    """`pricectl <cmd> --help` works for every registered command (import errors show here)."""
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _options(command: click.Command) -> Iterator[tuple[str, click.Option]]:
    """Every option of ``command`` and of its subcommands, with the command's path."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            for path, option in _options(sub):
                yield f"{name} {path}".strip(), option
        return
    for param in command.params:
        if isinstance(param, click.Option):
            yield "", param


#: Option names that say "a span of time".
_TIME_SPAN = re.compile(r"(duration|timeout|window|interval|age)$")


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_every_time_span_option_is_a_duration(name: str) -> None:
    """Every --duration/--timeout/--window-like option of every command reads a DURATION."""
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    spans = [(path, o) for path, o in _options(command) if _TIME_SPAN.search(o.name or "")]
    for path, option in spans:
        assert isinstance(option.type, Duration), f"{name} {path} {option.opts[0]}: {option.type}"


def test_a_bad_duration_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad duration is a usage error (exit 2) naming the option and what it expects."""
    assert main(["health", "--timeout", "abc"]) == 2
    err = capsys.readouterr().err
    assert "'--timeout'" in err and "expected a duration such as 250ms, 15s, 2m, got 'abc'" in err
    assert main(["tail", "BTC/USD", "--duration", "soon"]) == 2
    assert "'--duration'" in capsys.readouterr().err


def test_help_imports_no_network_library() -> None:
    """`pricectl --help` loads none of aiohttp, redis, websockets or rich."""
    code = textwrap.dedent(
        """
        import sys, contextlib, io, json
        from pricectl.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
        heavy = sorted(m for m in ("aiohttp", "redis", "websockets", "rich") if m in sys.modules)
        print(json.dumps(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version() -> None:
    """`pricectl --version` prints the package version."""
    from pricectl import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command exits 2 with one line naming it."""
    assert main(["no-such-command"]) == 2
    assert "no-such-command" in capsys.readouterr().err


def test_config_error_exit_code_and_one_line(tmp_path: Path, run_pricectl: RunPricectl) -> None:
    """A bad config file: exit 2, one line per problem, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("leader:\n  ttl: 5s\n")
    result = run_pricectl("--config", str(bad), "config", "show")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:2: leader.renew_deadline" not in result.stderr  # renew_deadline is a default
    assert "leader.renew_deadline: must be shorter than leader.ttl (5s), got 10s" in result.stderr


def test_debug_log_level_shows_traceback(tmp_path: Path, run_pricectl: RunPricectl) -> None:
    """With --log-level debug an error keeps its traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_section: 1\n")
    result = run_pricectl("--log-level", "debug", "--config", str(bad), "config", "show")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def _fake_distribution(site: Path, dist: str, module: str, name: str, body: str) -> None:
    """Write a minimal installed distribution that registers one pricectl command."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pricectl.commands]\n{name} = {module}:command\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


HELLO = """
    import click

    @click.command()
    @click.argument("who", default="world")
    def command(who):
        \"\"\"Say hello (a third-party plugin).\"\"\"
        click.echo(f"hello {who}")
"""


def test_third_party_plugin_command(tmp_path: Path, run_pricectl: RunPricectl) -> None:
    """A separately installed distribution adds a command through the entry-point group."""
    _fake_distribution(tmp_path, "pricectl_hello", "pricectl_hello", "hello", HELLO)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    listing = run_pricectl("--help", env=env)
    assert "hello" in listing.stdout
    result = run_pricectl("hello", "team", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello team"


def test_duplicate_command_names_both_distributions(
    tmp_path: Path, run_pricectl: RunPricectl
) -> None:
    """Two distributions registering the same command name is an error naming both."""
    _fake_distribution(tmp_path, "pricectl_one", "pricectl_one", "hello", HELLO)
    _fake_distribution(tmp_path, "pricectl_two", "pricectl_two", "hello", HELLO)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = run_pricectl("hello", env=env)
    assert result.returncode == 2
    assert "pricectl_one" in result.stderr and "pricectl_two" in result.stderr


def test_pricectl_commands_limits_loading(run_pricectl: RunPricectl) -> None:
    """PRICECTL_COMMANDS limits which commands are offered."""
    result = run_pricectl("--help", env={"PRICECTL_COMMANDS": "config"})
    assert result.returncode == 0
    listed = result.stdout.split("Commands:")[1].split()
    assert listed[0] == "config"
    assert all(name not in listed for name in ("serve", "simulate", "ingest"))
