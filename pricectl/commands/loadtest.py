"""``pricectl loadtest``: thousands of SSE clients, honest latency numbers, CI thresholds.

Thin glue over :func:`pricectl.loadtest.session.run_load_test`: parse options, show live
progress, print the report (and ``--json FILE``), exit 1 naming any breached threshold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from pricectl.cli import DURATION, settings

__all__ = ["command"]


def _ramp(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    text = value.removesuffix("/s")
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(
            f"expected connections per second such as 2000/s, got {value!r}"
        ) from None


@click.command(name="loadtest")
@click.option("--url", help="The serve to test, e.g. http://127.0.0.1:8000 (or use --spawn).")
@click.option("--clients", type=int, help="Concurrent SSE clients (default: scenario or 1000).")
@click.option("--pairs", help="Pairs every client subscribes to, e.g. BTC/USD,ETH/USD.")
@click.option("--ramp", callback=_ramp, help="New connections per second, e.g. 2000/s.")
@click.option("--duration", type=DURATION, help="Measurement window, e.g. 30s.")
@click.option("--processes", type=int, help="Loader processes (0: one per core).")
@click.option("--scenario", help="steady|burst|reconnect-storm|slow-readers|failover or a file.")
@click.option("--spawn", is_flag=True, help="Start a simulator and serve here, test, stop them.")
@click.option("--redis", "redis_url", help="With --spawn: use this Redis bus and ingest processes.")
@click.option("--serve-workers", type=int, default=1, help="With --spawn: serve --workers N.")
@click.option("--update-rate", type=float, help="With --spawn: updates per pair per second.")
@click.option("--server-pid", type=int, help="Sample this process's CPU and memory (/proc).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as JSON to FILE ('-' for stdout).")  # fmt: skip
@click.option("--max-p99-ms", type=float, help="Fail (exit 1) above this p99 latency.")
@click.option("--min-delivery", type=float, help="Fail below this share of events, e.g. 0.999.")
@click.option("--max-gaps", type=int, help="Fail above this many sequence gaps.")
@click.option("--max-errors", type=int, help="Fail above this many connection/stream errors.")
@click.pass_context
def command(ctx: click.Context, /, **kw: Any) -> None:
    """Open many SSE clients against serve and report delivery and latency.

    Latency is receive time minus the update's ingest_ns (same host); gaps and
    duplicates come from each pair's (epoch, seq). Thresholds make it exit 1.
    Linux only: the clients are read from one epoll per loader process.
    """
    import select

    from pricectl.errors import PricectlError, UsageError

    if not hasattr(select, "epoll"):
        raise UsageError(f"pricectl loadtest needs Linux (epoll); this is {sys.platform}")
    from pricectl.loadtest.session import Options, run_load_test

    loadtest = settings(ctx).loadtest
    pairs = None
    if kw["pairs"]:
        from pricectl.core.pairs import parse_pair_list

        try:
            pairs = tuple(parse_pair_list(kw["pairs"]))
        except ValueError as exc:
            raise UsageError(f"--pairs: {exc}") from None
    options = Options(
        url=kw["url"],
        clients=kw["clients"],
        pairs=pairs,
        ramp=kw["ramp"],
        duration=kw["duration"],
        processes=kw["processes"],
        scenario=kw["scenario"],
        spawn=kw["spawn"],
        redis=kw["redis_url"],
        serve_workers=kw["serve_workers"],
        update_rate=kw["update_rate"],
        server_pid=kw["server_pid"],
        max_p99_ms=kw["max_p99_ms"],
        min_delivery=kw["min_delivery"],
        max_gaps=kw["max_gaps"],
        max_errors=kw["max_errors"],
    )
    if options.clients is not None and options.clients <= 0:
        raise UsageError(f"--clients must be at least 1, got {options.clients}")

    def note(text: str) -> None:
        click.echo(f"note: {text}", err=True)

    if sys.stderr.isatty():
        from pricectl.console import LoadtestProgress

        with LoadtestProgress() as live:
            report = run_load_test(options, loadtest, on_progress=live.update, on_note=note)
    else:
        last = [0.0]

        def plain(p: Any) -> None:
            now = time.monotonic()
            if now - last[0] >= 5.0:
                last[0] = now
                click.echo(
                    f"{p.phase}: connected {p.connected}/{p.target} {p.events_per_s:,.0f} "
                    f"events/s p99 {p.p99_ms:.1f} ms errors {p.failed + p.errors}",
                    err=True,
                )

        report = run_load_test(options, loadtest, on_progress=plain, on_note=note)
    for line in report.lines():
        click.echo(line)
    if kw["json_path"] is not None:
        import json

        text = json.dumps(report.to_dict(), indent=2, sort_keys=True)
        if str(kw["json_path"]) == "-":
            click.echo(text)
        else:
            kw["json_path"].write_text(text + "\n")
    if report.breaches:
        raise PricectlError("; ".join(report.breaches))
