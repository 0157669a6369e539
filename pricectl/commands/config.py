"""``pricectl config check`` and ``pricectl config show``."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["command"]


@click.group(name="config")
def command() -> None:
    """Validate a configuration file or print the effective configuration."""


@command.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def check(obj: object, file: Path | None) -> None:
    """Validate FILE (default: --config, else the built-in defaults).

    Exit 0 with a one-line summary when valid; exit 2 listing every problem when not.
    """
    import os

    from pricectl.config import load_settings

    path = file or getattr(obj, "config_path", None)
    s = load_settings(path, os.environ)
    click.echo(
        f"{s.source}: ok: {len(s.pairs)} pairs ({', '.join(s.pairs)}), "
        f"stream {s.exchange.stream}, bus {s.bus.url.split('://')[0]}://, "
        f"serve on {s.server.host}:{s.server.port}"
    )


@command.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the effective configuration (file + environment) as YAML, passwords redacted."""
    import yaml

    from pricectl.cli import settings
    from pricectl.config import settings_to_dict

    s = settings(ctx)
    click.echo(f"# effective configuration from {s.source} and the environment")
    click.echo(yaml.safe_dump(settings_to_dict(s), sort_keys=False), nl=False)
