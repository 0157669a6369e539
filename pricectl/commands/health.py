"""``pricectl health``: is the system serving fresh prices? Exit 0 ok, 1 degraded, 2 down."""

from __future__ import annotations

import sys
from typing import Any

import click

from pricectl.cli import DURATION, settings

__all__ = ["command"]


@click.command(name="health")
@click.option("--url", help="serve address to ask (default: http://server.host:server.port).")
@click.option("--redis", "redis_url", help="Ask Redis directly instead: leader, epoch, snapshot.")
@click.option("--json", "as_json", is_flag=True, help="Print the health document as JSON.")
@click.option(
    "--through",
    "through",
    metavar="URL",
    help="Also check that the proxy at URL passes the stream through unbuffered.",
)
@click.option(
    "--window", type=DURATION, default="5s", show_default=True, help="How long --through listens."
)
@click.option(
    "--timeout",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How long to wait for answers.",
)
@click.pass_context
def command(
    ctx: click.Context,
    url: str | None,
    redis_url: str | None,
    as_json: bool,
    through: str | None,
    window: float,
    timeout: float,
) -> int:
    """Ask a running serve (or Redis) how the system is: exit 0 ok, 1 degraded, 2 down.

    Unreachable counts as down (2), so it drops into Kubernetes probes, systemd and
    shell scripts. --through compares the stream through a proxy with the direct one.
    """
    import asyncio
    import json

    from pricectl.client.health import (
        exit_code_for_status,
        probe_through,
        redis_health,
        serve_health,
    )
    from pricectl.errors import PricectlError, UsageError

    cfg = settings(ctx)
    if redis_url and url:
        raise UsageError("choose one of --url (ask serve) and --redis (ask Redis)")
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    serve_url = url or f"http://{host}:{cfg.server.port}"

    async def gather() -> dict[str, Any]:
        if redis_url:
            return await redis_health(
                redis_url,
                cfg.pairs,
                prefix=cfg.bus.prefix,
                stale_after=cfg.resilience.heartbeat.stale_after,
            )
        try:
            return await serve_health(serve_url, timeout=timeout)
        except PricectlError as exc:
            return {
                "status": "down",
                "origin": serve_url,
                "reasons": [f"{exc}; is `pricectl serve` running? start it or check --url"],
            }

    doc = asyncio.run(gather())
    code = exit_code_for_status(str(doc.get("status")))
    if through:
        if redis_url:
            raise UsageError("--through compares with a serve stream: use it with --url")
        report = asyncio.run(probe_through(serve_url, through, list(cfg.pairs), window))
        doc["through"] = report
        if report.get("buffers") is None or report.get("buffers"):
            code = max(code, 1)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
        return code
    if doc.get("status") == "down" and "pairs" not in doc:
        for reason in doc.get("reasons", []):
            click.echo(f"down: {reason}", err=True)
        return code
    from pricectl.console import print_health, print_through

    print_health(doc)
    if "through" in doc:
        print_through(doc["through"])
    sys.stdout.flush()
    return code
