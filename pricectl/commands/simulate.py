"""``pricectl simulate``: a local Binance exchange for offline demos, tests and CI.

Thin glue over :class:`pricectl.simulator.Simulator`: parse options, start it,
print the two URLs to point pricectl at, run until Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path

import click

from pricectl.cli import DURATION, settings
from pricectl.simulator.control import MAX_URL_LENGTH

__all__ = ["command"]

_FAULTS = "drop|stall|garbage:RATE|refuse|rest429|rest500"


def _faults(values: tuple[str, ...]) -> dict[str, object]:
    """``("stall", "garbage:5")`` -> ``{"stall": True, "garbage": 5.0}``; UsageError if bad."""
    from pricectl.errors import UsageError

    out: dict[str, object] = {}
    for value in values:
        name, _, arg = value.partition(":")
        if name == "garbage":
            try:
                rate = float(arg)
            except ValueError:
                raise UsageError(f"--fault garbage:RATE needs a number, got {value!r}") from None
            if rate <= 0:
                raise UsageError(f"--fault garbage:RATE must be above 0, got {value!r}")
            out["garbage"] = rate
        elif name in ("drop", "stall", "refuse", "rest429", "rest500") and not arg:
            out[name] = True
        else:
            raise UsageError(f"unknown --fault {value!r}; expected one of {_FAULTS}")
    return out


@click.command(name="simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9443, show_default=True, type=int, help="Port (0: any free).")
@click.option(
    "--pairs",
    default=None,
    help="Pairs whose prices always move, e.g. BTC/USD,ETH/USD (default: the configured pairs).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random-walk seed.")
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Play a recording (.jsonl, timed by its .recv_ts.txt) instead of the random walk.",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=float,
    help="Replay speed factor (0: as fast as possible).",
)
@click.option("--fault", "faults", multiple=True, metavar="FAULT", help=f"Start with {_FAULTS}.")
@click.option(
    "--max-connection-age",
    default="24h",
    show_default=True,
    type=DURATION,
    help="Cut each WebSocket after this long, with serverShutdown first (e.g. 30s, 24h).",
)
@click.option(
    "--ping-interval", default="20s", show_default=True, type=DURATION, help="Server ping period."
)
@click.option(
    "--pong-timeout", default="60s", show_default=True, type=DURATION, help="Cut without a pong."
)
@click.option(
    "--trade-rate",
    default=10.0,
    show_default=True,
    type=float,
    help="trade/aggTrade/bookTicker events per symbol per second.",
)
@click.option(
    "--weight-limit",
    default=6000,
    show_default=True,
    type=int,
    help="REST request weight per minute before 429.",
)
@click.option(
    "--max-streams",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Streams per WebSocket connection (Binance: 1024).",
)
@click.option(
    "--max-url-length",
    default=MAX_URL_LENGTH,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest handshake path and query; longer gets HTTP 414.",
)
@click.option(
    "--max-control-bytes",
    default=None,
    type=click.IntRange(min=1),
    help="Drop bigger control frames unanswered (Spot was seen to, past 4096). Default: no bound.",
)
@click.option(
    "--refuse-unlisted",
    is_flag=True,
    help="Refuse streams of symbols not in the list (Binance accepts them and sends nothing).",
)
@click.option(
    "--all-trading",
    is_flag=True,
    help="List every symbol as TRADING (the bundled list has some in BREAK).",
)
@click.pass_context
def command(
    ctx: click.Context,
    host: str,
    port: int,
    pairs: str | None,
    seed: int,
    replay: Path | None,
    speed: float,
    faults: tuple[str, ...],
    max_connection_age: float,
    ping_interval: float,
    pong_timeout: float,
    trade_rate: float,
    weight_limit: int,
    max_streams: int,
    max_url_length: int,
    max_control_bytes: int | None,
    refuse_unlisted: bool,
    all_trading: bool,
) -> None:
    """Run a local exchange speaking Binance's public market-data protocol.

    WebSocket streams (/ws/<stream>, /stream?streams=...) and REST (/api/v3/...) on one
    port. Point pricectl at it with the two URLs it prints. Every symbol of the bundled
    list can be subscribed; only subscribed ones (and --pairs) move. Faults can be
    switched at run time: POST /admin/fault {"stall": true}; GET /admin/state shows
    connections, their streams and the messages each sent.
    """
    import asyncio

    from pricectl.core.pairs import parse_pair_list
    from pricectl.errors import UsageError
    from pricectl.simulator import Simulator, SimulatorConfig, symbols_for_pairs

    try:
        if pairs is not None:
            pair_list = parse_pair_list(pairs)
            aliases = {"USD": "USDT"}
        else:
            cfg = settings(ctx)
            pair_list, aliases = list(cfg.pairs), dict(cfg.quote_aliases)
        symbols = symbols_for_pairs(pair_list, aliases)
        config = SimulatorConfig(
            symbols=symbols,
            seed=seed,
            trade_rate=trade_rate,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            max_connection_age=max_connection_age,
            weight_limit=weight_limit,
            max_streams=max_streams,
            max_url_length=max_url_length,
            max_control_bytes=max_control_bytes,
            refuse_unlisted=refuse_unlisted,
            all_trading=all_trading,
            replay=str(replay) if replay else None,
            speed=speed,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    start_faults = _faults(faults)

    async def run() -> None:
        sim = Simulator(config)
        await sim.start(host, port)
        if start_faults:
            sim.set_fault(**start_faults)  # type: ignore[arg-type]
        click.echo(f"BINANCE_WS_URL={sim.ws_url}")
        click.echo(f"BINANCE_REST_URL={sim.rest_url}")
        what = f"replaying {replay}" if replay else f"random walk of {', '.join(symbols)}"
        click.echo(f"simulating Binance on {host}:{sim.port}: {what}; Ctrl-C to stop", err=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
