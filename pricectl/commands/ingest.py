"""``pricectl ingest``: one candidate of the leader-elected exchange relay (needs Redis).

Thin glue over :func:`pricectl.ingest.candidate.run_ingest`.
"""

from __future__ import annotations

import click

__all__ = ["command"]


@click.command(name="ingest")
@click.pass_context
def command(ctx: click.Context) -> None:
    """Relay the exchange into Redis: leader-elected, run as many as you like.

    Every instance competes for the lease in Redis (bus.url / REDIS_URL, redis://...
    or redis+sentinel://h1:26379,h2:26379/SERVICE to follow Sentinel failovers, or
    redis+cluster://h1:7000,h2:7000 for a Redis Cluster);
    the leader holds the one exchange connection and publishes, the others wait warm
    and take over within a second if it dies or is stopped (within leader.ttl if it
    hangs while still connected). SIGTERM or Ctrl-C releases the lease and exits 0.

    The leader subscribes to the pinned pairs (pairs:) and every pair some serve's
    clients want (the wanted set in Redis), at most exchange.max_pairs; a pair nobody
    has wanted for exchange.idle_grace is unsubscribed.
    """
    import asyncio

    from pricectl.cli import settings
    from pricectl.ingest.candidate import check_bus, run_ingest

    s = settings(ctx)
    check_bus(s)
    asyncio.run(run_ingest(s))
