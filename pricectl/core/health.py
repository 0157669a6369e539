"""The health rule (docs/protocol.md, "Health"), shared by serve's endpoint and
``pricectl health --redis``.

``down``: the bus is unreachable, or it did not answer a PING within
:data:`PING_LIMIT` seconds, or it is a replica (no writable master reachable), or no
pair has fresh data. ``degraded``: some pair is stale
or served from REST or cache, or no ingest leader holds the lease, or neither a bus
message nor a leader heartbeat arrived for :data:`QUIET_LIMIT` seconds (a leader that
holds the lease but publishes nothing, a frozen one). ``ok`` otherwise. Pure: wall-clock
``now`` and the ages are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pricectl.core.ticks import PriceUpdate

__all__ = ["PING_LIMIT", "QUIET_LIMIT", "judge", "pair_state"]

#: Seconds a bus may take to answer a PING before it counts as down.
PING_LIMIT = 1.0

#: Seconds with no bus message and no leader heartbeat before serve is degraded. The
#: leader's heartbeat comes every second, so this is three missed in a row.
QUIET_LIMIT = 3.0


def pair_state(
    update: PriceUpdate | None,
    stale_after: float,
    now: float,
    received_at: float | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """One pair's health entry: age (from ``ingest_ns``, else ``received_at``, else the
    exchange's ``event_ms``), source, stale (ingest's flag, older than ``stale_after``, or
    ``quiet``: serve itself has had nothing for the pair for ``stale_after``)."""
    if update is None:
        return {"age_s": None, "source": None, "stale": True, "price": None}
    if update.ingest_ns:
        stamp = update.ingest_ns / 1e9
    elif received_at is not None:
        stamp = received_at
    else:
        stamp = update.event_ms / 1000.0
    age = max(0.0, now - stamp)
    return {
        "age_s": round(age, 3),
        "source": update.source,
        "stale": bool(update.stale or quiet or age > stale_after),
        "price": update.price,
        "epoch": update.epoch,
        "seq": update.seq,
    }


def judge(
    pairs: Mapping[str, Mapping[str, Any]],
    *,
    bus_connected: bool,
    leader: bool = True,
    bus_responsive: bool = True,
    bus_role: str | None = None,
    bus_problem: str | None = None,
    message_age: float | None = None,
    heartbeat_age: float | None = None,
    quiet_limit: float = QUIET_LIMIT,
    universe_missing: str | None = None,
) -> tuple[str, list[str]]:
    """``(status, reasons)`` for the per-pair states of :func:`pair_state`.

    ``universe_missing`` says why the exchange's list of pairs is not known yet (only the
    pinned pairs can be served meanwhile): degraded, with that reason.

    ``message_age`` (seconds since the last bus message) and ``heartbeat_age`` (since
    the leader's heartbeat last moved) are checked together when either is given:
    ``None`` for one of them means never. ``bus_role`` is what the bus's node says it is
    (``master``, ``replica``; None: not known): anything but a master is ``down``, for no
    update can be published through it. ``bus_problem`` says why the bus is not
    connected (``authentication failed (...)``); plain "unreachable" when not given or
    when that is the problem.
    """
    fresh = [p for p, st in pairs.items() if not st["stale"]]
    reasons: list[str] = []
    if not bus_connected:
        named = bus_problem is not None and not bus_problem.startswith("unreachable")
        reasons.append(f"bus {bus_problem}" if named else "bus unreachable")
    elif not bus_responsive:
        reasons.append(f"bus did not answer a PING within {PING_LIMIT:g}s")
    elif bus_role is not None and bus_role != "master":
        reasons.append(f"bus is a {bus_role}, not a writable master: no writable master reachable")
    if not fresh:
        reasons.append("no fresh data")
    if reasons:
        return "down", reasons
    stale = [p for p, st in pairs.items() if st["stale"]]
    fallback = [p for p in fresh if pairs[p]["source"] != "ws"]
    if stale:
        reasons.append("stale: " + ", ".join(stale))
    if fallback:
        reasons.append("not live: " + ", ".join(fallback))
    if not leader:
        reasons.append("no ingest leader holds the lease")
    elif message_age is not None or heartbeat_age is not None:
        quiet = [a for a in (message_age, heartbeat_age) if a is None or a > quiet_limit]
        if len(quiet) == 2:
            reasons.append(f"no bus message and no leader heartbeat for {quiet_limit:g}s")
    if universe_missing is not None:
        reasons.append(universe_missing)
    return ("degraded" if reasons else "ok"), reasons
