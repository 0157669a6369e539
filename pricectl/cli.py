"""The ``pricectl`` root command: global options, lazily loaded plugin commands, exit codes.

Every subcommand, built-ins included, is a ``click.Command`` registered in the
``pricectl.commands`` entry-point group::

    [project.entry-points."pricectl.commands"]
    serve = "pricectl.commands.serve:command"

A command's module is imported only when that command runs (or when ``--help``
lists it), so command modules import nothing heavy at the top. Two distributions
registering the same name is an error naming both. ``PRICECTL_COMMANDS=serve,tail``
limits which commands load.

This is the one place errors become exit codes: 0 success, 1 runtime failure,
2 usage or configuration error, each as one clear line (a traceback only with
``--log-level debug``, and then with every URL's password redacted, like every log
line). A command raises :class:`~pricectl.errors.PricectlError` when
something went wrong and never exits by itself; it may return an ``int`` for an outcome
it has already reported (``health``'s 0/1/2, ``tail``'s 130 on Ctrl-C), which becomes
the exit code as it is.

What every command shares, built-ins and plugins alike: :func:`settings` for the
validated settings of this run, and :data:`DURATION` for any option that takes a
duration (``--timeout 5s``, ``--window 250ms``), so a bad value is refused the same way
everywhere, naming the option (exit 2).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pricectl import __version__
from pricectl.core.duration import parse_duration
from pricectl.errors import ConfigError, PricectlError, exit_code_for

if TYPE_CHECKING:
    from pricectl.config import Settings

__all__ = [
    "DURATION",
    "ENTRY_POINT_GROUP",
    "Context",
    "Duration",
    "PluginGroup",
    "cli",
    "main",
    "settings",
]

ENTRY_POINT_GROUP = "pricectl.commands"


@functools.cache
def _registered() -> dict[str, list[EntryPoint]]:
    """Every registered command by name, scanned once per process (the scan reads
    every installed distribution's metadata: a third of ``--help``'s time)."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _entry_points() -> dict[str, list[EntryPoint]]:
    """Registered commands by name (a name may be claimed by several distributions)."""
    found = _registered()
    only = os.environ.get("PRICECTL_COMMANDS")
    if only:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        found = {name: eps for name, eps in found.items() if name in wanted}
    return found


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.value


class PluginGroup(click.Group):
    """A click group whose commands come from entry points and load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        if builtin is not None:
            return builtin
        eps = _entry_points().get(cmd_name)
        if not eps:
            return None
        dists = sorted({_dist_name(ep) for ep in eps})
        if len(eps) > 1:
            raise click.UsageError(
                f"command {cmd_name!r} is registered by more than one distribution: "
                + " and ".join(f"{d} ({ep.value})" for d, ep in zip(dists, eps, strict=False))
            )
        command = eps[0].load()
        if not isinstance(command, click.Command):
            raise click.UsageError(
                f"plugin command {cmd_name!r} from {dists[0]} is not a click command"
            )
        return command


@dataclass
class Context:
    """What the root command hands its subcommands (``ctx.obj``)."""

    config_path: Path | None = None
    log_level: str | None = None
    log_format: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """The validated settings, loaded on first use (``--help`` never reads config)."""
        if self._settings is None:
            from pricectl.config import load_settings

            overrides = dict(os.environ)
            if self.log_level:
                overrides["LOG_LEVEL"] = self.log_level
            if self.log_format:
                overrides["PRICECTL_LOGGING__FORMAT"] = self.log_format
            self._settings = load_settings(self.config_path, overrides)
        return self._settings


def settings(ctx: click.Context) -> Settings:
    """The validated settings of this run, for a command's callback.

    Under the root command they are its (``--config``, ``--log-level``, the environment),
    read once; a command invoked on its own (a plugin's test calling it with click's
    runner) gets the built-in defaults and the environment.
    """
    # ctx.obj rather than ctx.find_object(Context): under `python -m pricectl.cli` the
    # root's Context is an instance of __main__'s copy of that class, not of this one.
    obj = ctx.obj
    if obj is not None:
        found: Settings = obj.settings
        return found
    from pricectl.config import load_settings

    return load_settings()


class Duration(click.ParamType):  # type: ignore[type-arg]  # not generic in click 8.1
    """A duration option (``250ms``, ``15s``, ``2m``, ``23h``) read as seconds, a float.

    The configuration's own reading (:func:`pricectl.core.duration.parse_duration`, which
    ``pricectl.config`` uses; imported from core so that ``--help`` does not load YAML).
    A bad value is a usage error naming the option: ``Invalid value for '--timeout':
    expected a duration such as 250ms, 15s, 2m, got 'abc'``.
    """

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(f"expected {exc}, got {value!r}", param, ctx)


#: The one parameter type of every duration option.
DURATION = Duration()


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="PRICECTL_CONFIG",
    help="YAML configuration file (default: built-in defaults; env PRICECTL_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level (overrides logging.level and LOG_LEVEL).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log format: text for people, json for log pipelines.",
)
@click.version_option(__version__, prog_name="pricectl")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """Live crypto prices from one Binance WebSocket to thousands of browsers over SSE.

    Run `pricectl COMMAND --help` for a command's options.
    """
    obj = Context(config_path, log_level.lower() if log_level else None, log_format)
    ctx.obj = obj
    if ctx.invoked_subcommand is not None and not ctx.resilient_parsing:
        from pricectl.logs import setup_logging

        level: str
        fmt: str
        try:
            level, fmt = obj.settings.logging.level, obj.settings.logging.format
        except ConfigError:  # reported by the command that needs the settings
            level, fmt = obj.log_level or "info", obj.log_format or "text"
        setup_logging(level, fmt)


def _debug_requested(argv: list[str]) -> bool:
    if "--log-level" in argv:
        i = argv.index("--log-level")
        return i + 1 < len(argv) and argv[i + 1].lower() == "debug"
    return "--log-level=debug" in argv or os.environ.get("LOG_LEVEL", "").lower() == "debug"


def _fail(message: str, code: int) -> int:
    from pricectl.core.redaction import redact

    click.echo(f"error: {redact(message)}", err=True)
    return code


def _show_traceback() -> None:
    """The traceback of the error being handled, on stderr, passwords redacted."""
    import traceback

    from pricectl.core.redaction import redact

    click.echo(redact(traceback.format_exc()).rstrip("\n"), err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn whatever happens into an exit code (the one place that does)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        result: Any = cli.main(args=args, prog_name="pricectl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            _show_traceback()
        exc.show()
        return exc.exit_code
    except ConfigError as exc:
        if debug:
            _show_traceback()
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        return exc.exit_code
    except PricectlError as exc:
        if debug:
            _show_traceback()
        return _fail(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if debug:
            _show_traceback()
            return _fail(f"{type(exc).__name__}: {exc}", 1)
        return _fail(f"{type(exc).__name__}: {exc} (run with --log-level debug for details)", 1)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
