"""``pricectl health``: is the system serving fresh prices? Exit 0 ok, 1 degraded, 2 down.

Thin glue over :func:`pricectl.client.health.check_health`: parse options, run the
check, print the document (JSON, or the console's summary), return its exit code.
"""

from __future__ import annotations

import sys

import click

from pricectl.cli import DURATION, settings

__all__ = ["command"]


@click.command(name="health")
@click.option("--url", help="serve address to ask (default: http://server.host:server.port).")
@click.option(
    "--redis",
    "redis_url",
    help="Ask Redis directly instead (redis://, rediss://, unix://, redis+sentinel://, "
    "rediss+sentinel:// or redis+cluster://): leader, heartbeat, epoch, role, snapshot.",
)
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
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    help="With an https --through: also trust the CA certificate(s) in this PEM file "
    "(for a self-signed proxy, its certificate).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="With an https --through: do not check the proxy's certificate (a quick look only).",
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
    cacert: str | None,
    insecure: bool,
    timeout: float,
) -> int:
    """Ask a running serve (or Redis) how the system is: exit 0 ok, 1 degraded, 2 down.

    Unreachable counts as down (2), so it drops into Kubernetes probes, systemd and
    shell scripts. --through compares the stream through a proxy with the direct one.
    """
    import asyncio
    import json

    from pricectl.client.health import HealthCheck, check_health
    from pricectl.client.sse import local_url
    from pricectl.errors import UsageError

    if redis_url and url:
        raise UsageError("choose one of --url (ask serve) and --redis (ask Redis)")
    if redis_url and through:
        raise UsageError("--through compares with a serve stream: use it with --url")
    if (cacert or insecure) and not through:
        raise UsageError("--cacert and --insecure are for the proxy of --through")
    if cacert and insecure:
        raise UsageError("choose one of --cacert (check with this CA) and --insecure (no check)")
    if cacert:
        import ssl

        from pricectl.client.health import proxy_ssl

        try:
            proxy_ssl(cacert, False)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(
                f"--cacert {cacert}: not a PEM file of CA certificates ({exc})"
            ) from None
    if insecure:
        click.echo(
            "warning: --insecure: the proxy's TLS certificate is not checked; anyone between "
            "here and it could answer in its place",
            err=True,
        )
    if redis_url:
        from pricectl.config import check_redis_url

        problem = check_redis_url(redis_url)
        if problem is not None:
            raise UsageError(f"--redis: {problem}")
    cfg = settings(ctx)
    check = HealthCheck(
        serve_url=url or local_url(cfg.server.host, cfg.server.port),
        pairs=tuple(cfg.pairs),
        redis_url=redis_url,
        through=through,
        prefix=cfg.bus.prefix,
        stale_after=cfg.resilience.heartbeat.stale_after,
        window=window,
        timeout=timeout,
        cacert=cacert,
        insecure=insecure,
    )
    report = asyncio.run(check_health(check))
    if as_json:
        click.echo(json.dumps(report.doc, indent=2, sort_keys=False))
    elif report.unreachable:
        for reason in report.doc.get("reasons", []):
            click.echo(f"down: {reason}", err=True)
    else:
        from pricectl.console import print_health, print_through

        print_health(report.doc)
        if "through" in report.doc:
            print_through(report.doc["through"])
        sys.stdout.flush()
    return report.exit_code
