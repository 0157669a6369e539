"""The health rule of DESIGN 3.6, shared by serve's endpoint and ``pricectl health --redis``.

``down``: the bus is unreachable or no pair has fresh data. ``degraded``: some pair is
stale or served from REST or cache (or, seen from Redis, no ingest leader holds the
lease). ``ok`` otherwise. Pure: wall-clock ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pricectl.core.ticks import PriceUpdate

__all__ = ["judge", "pair_state"]


def pair_state(
    update: PriceUpdate | None, stale_after: float, now: float, received_at: float | None = None
) -> dict[str, Any]:
    """One pair's health entry: age (from ``ingest_ns``, else ``received_at``, else the
    exchange's ``event_ms``), source, stale (ingest's flag or older than ``stale_after``)."""
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
        "stale": bool(update.stale or age > stale_after),
        "price": update.price,
        "epoch": update.epoch,
        "seq": update.seq,
    }


def judge(
    pairs: Mapping[str, Mapping[str, Any]], *, bus_connected: bool, leader: bool = True
) -> tuple[str, list[str]]:
    """``(status, reasons)`` for the per-pair states of :func:`pair_state`."""
    fresh = [p for p, st in pairs.items() if not st["stale"]]
    reasons: list[str] = []
    if not bus_connected:
        reasons.append("bus unreachable")
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
    return ("degraded" if reasons else "ok"), reasons
