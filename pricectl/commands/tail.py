"""``pricectl tail PAIR...``: live prices in the terminal from serve, Redis or Binance."""

from __future__ import annotations

import sys

import click

from pricectl.cli import DURATION, settings

__all__ = ["command"]


@click.command(name="tail")
@click.argument("pairs", nargs=-1, required=True, metavar="PAIR...")
@click.option(
    "--from",
    "source",
    type=click.Choice(["serve", "redis", "binance"]),
    default="serve",
    show_default=True,
    help="Which hop to read: serve's SSE stream, the Redis bus, or the exchange directly.",
)
@click.option("--url", help="serve address (default: http://server.host:server.port).")
@click.option("--redis", "redis_url", help="Redis URL for --from redis (default: bus.url).")
@click.option("--plain", is_flag=True, help="One line per update (the default when piped).")
@click.option("--json", "as_json", is_flag=True, help="One update per line (docs/protocol.md).")
@click.option("--once", is_flag=True, help="Print the current snapshot and exit.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after N updates.")
@click.option("--duration", type=DURATION, help="Exit after this long (30s, 2m).")
@click.pass_context
def command(
    ctx: click.Context,
    pairs: tuple[str, ...],
    source: str,
    url: str | None,
    redis_url: str | None,
    plain: bool,
    as_json: bool,
    once: bool,
    count: int | None,
    duration: float | None,
) -> int:
    """Live prices in the terminal from serve, Redis or Binance.

    PAIR is any spot pair the exchange lists, in any usual spelling (BTC/USD,
    btcusdt, ETH-BTC); a pair no config pins is turned on for as long as tail runs.

    A live table on a terminal, one line per update when piped (or --plain), JSON lines
    with --json. Exit 0 when done, 1 on a runtime failure (server unreachable), 2 on a
    usage error (unknown pair, wrong URL), 130 on Ctrl-C, 143 on SIGTERM.
    """
    import asyncio

    from pricectl.client.sse import local_url
    from pricectl.client.tail import TableView, TailOptions, TailResult, run_tail
    from pricectl.core.pairs import bundled_symbols, parse_pair
    from pricectl.core.universe import Universe, UnknownPair
    from pricectl.errors import UsageError

    cfg = settings(ctx)
    # The bundled symbol list gives each pair its canonical name offline (btcusdt, BTC-USDT
    # -> BTC/USD); serve judges a pair it does not know itself, from the live exchangeInfo.
    universe = Universe.from_symbols(bundled_symbols(), cfg.quote_aliases)
    wanted: list[str] = []
    for arg in pairs:
        for text in arg.split(","):
            if not text.strip():
                continue
            try:
                pair = universe.resolve(text)
            except UnknownPair as exc:
                try:
                    base, quote = parse_pair(text)
                except ValueError as bad:
                    raise UsageError(f"{bad}; pinned pairs: {', '.join(cfg.pairs)}") from None
                pair = f"{base}/{quote}"
                if source != "serve":
                    raise UsageError(str(exc)) from None
            if pair not in wanted:
                wanted.append(pair)
    if plain and as_json:
        raise UsageError("choose one of --plain and --json")
    mode = "json" if as_json else "plain" if plain or not sys.stdout.isatty() else "table"
    opts = TailOptions(
        pairs=tuple(wanted),
        source=source,
        url=url or local_url(cfg.server.host, cfg.server.port),
        redis_url=redis_url or cfg.bus.url,
        prefix=cfg.bus.prefix,
        mode=mode,
        once=once,
        count=count,
        duration=duration,
        stale_after=cfg.resilience.heartbeat.stale_after,
        idle_timeout=max(2.5 * cfg.server.ping_interval, 5.0),
        backoff=cfg.resilience.backoff,
    )
    if source == "redis" and opts.redis_url.startswith("memory://"):
        raise UsageError(
            "--from redis needs a Redis URL: pass --redis redis://HOST:6379/0 or set bus.url"
        )
    if source == "redis" and redis_url:
        from pricectl.config import check_redis_url

        problem = check_redis_url(redis_url)
        if problem is not None:
            raise UsageError(f"--redis: {problem}")
    table = None
    if mode == "table":
        from pricectl.console import LiveBoard, print_board

        table = TableView(live=LiveBoard, once=print_board)
    result = TailResult()

    async def main() -> int:
        # SIGTERM (systemd, kill, a timeout wrapper) ends tail as cleanly as Ctrl-C.
        import signal

        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        terminated = []

        def on_term() -> None:
            terminated.append(True)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            await run_tail(opts, cfg, result=result, table=table)
        except asyncio.CancelledError:
            if not terminated:
                raise  # Ctrl-C: asyncio.run turns this into KeyboardInterrupt
            return 143
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
        return result.exit_code

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 130
    if not once:
        click.echo(result.summary(), err=True)
    return code
