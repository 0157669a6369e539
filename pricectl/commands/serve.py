"""``pricectl serve``: the SSE server (and, with ``memory://``, the relay in-process)."""

from __future__ import annotations

import click

__all__ = ["command"]


@click.command(name="serve")
@click.option("--host", default=None, help="Bind address (default: server.host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port, 0 to 65535; 0 picks a free one (default: server.port, 8000).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes sharing the port with SO_REUSEPORT (default: server.workers). "
    "More than one needs a shared bus (redis://).",
)
@click.option(
    "--simulate",
    is_flag=True,
    help="Run a local exchange in this process and serve its (simulated) prices: "
    "works with no network. The dashboard and health say the prices are simulated.",
)
@click.pass_context
def command(
    ctx: click.Context, host: str | None, port: int | None, workers: int | None, simulate: bool
) -> int:
    """Serve live prices over SSE, with health, metrics and the dashboard.

    With bus.url memory:// (the default) the relay runs in this process, so this one
    command gives a working system. With redis:// it only reads the bus: run
    `pricectl ingest` for the exchange side and as many serve processes as you like.
    --simulate runs the local exchange in-process instead of connecting to Binance (a
    first run, a demo, a machine with no network). SIGTERM drains: clients are told when
    to reconnect and streams close over server.drain_window.

    Clients may ask for any spot pair the exchange lists (exchangeInfo, read at start):
    the config's pairs are pinned, any other is turned on for the cluster while someone
    watches it, within exchange.max_pairs and the server.activations* rates.
    """
    import asyncio

    from pricectl.cli import settings
    from pricectl.errors import UsageError

    cfg = settings(ctx)
    s = cfg.server
    host = host or s.host
    port = s.port if port is None else port
    workers = workers or s.workers
    if simulate and not cfg.bus.url.startswith("memory://"):
        raise UsageError(
            "--simulate runs the exchange inside this serve, with the embedded relay: it needs "
            "bus.url memory:// (with redis://, run `pricectl simulate` and point "
            "`pricectl ingest` at it with BINANCE_WS_URL and BINANCE_REST_URL)"
        )
    if simulate and workers > 1:
        raise UsageError("--simulate runs in one process: leave --workers at 1")
    if workers > 1:
        if cfg.bus.url.startswith("memory://"):
            raise UsageError(
                "--workers > 1 needs a shared bus: with memory:// every worker would open its "
                "own exchange connection and number events on its own, so a browser that "
                "reconnects to another worker could not resume. Set bus.url (or REDIS_URL) to "
                "redis://... and run `pricectl ingest` beside the serve workers."
            )
        if port == 0:
            raise UsageError("--workers > 1 needs a fixed --port (the workers share it)")
        from pricectl.server.app import run_workers

        # The workers' status as it is: 0, or the first failing worker's.
        return run_workers(cfg, host, port, workers)
    from pricectl.server.app import serve_forever

    asyncio.run(serve_forever(cfg, host, port, simulate=simulate, on_ready=_announce))
    return 0


def _announce(port: int) -> None:
    # One machine-readable line on stdout so scripts (and tests) learn the port.
    click.echo(f"serving on port {port}", err=False)
