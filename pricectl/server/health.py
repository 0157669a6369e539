"""``GET /api/market-data/health`` (docs/protocol.md, "Health"): is the data people see
fresh, and why not.

``status`` is decided from what serve itself holds, not from what ingest claims
(the rule is :func:`pricectl.core.health.judge`):

* ``down``: the bus is unreachable or did not answer a PING within 1 s, or is a
  replica (no writable master reachable: every Sentinel failover passes through it), or no pair
  has fresh data (every pair is missing, marked stale by ingest, older than
  ``stale_after``, or quiet at serve for ``stale_after``);
* ``degraded``: some pair is stale or missing, or served from REST or the cache, or no
  ingest leader holds the lease, or neither a bus message nor the leader's heartbeat
  came for a few seconds;
* ``ok``: every pair is fresh and live from the WebSocket, and a leader is alive.

The HTTP status is 200 for ``ok`` and ``degraded`` and 503 for ``down``, so a load
balancer's plain health check takes a server without data out of rotation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pricectl import __version__
from pricectl.config import redact_url
from pricectl.core.health import judge, pair_state
from pricectl.core.status import to_json
from pricectl.server.hub import Hub

if TYPE_CHECKING:  # the relay (and its WebSocket library) loads only where it runs
    from pricectl.ingest.relay import RelayStatus

__all__ = ["Upstream", "UpstreamStatus", "health_report", "pair_states", "upstream_json"]


@dataclass(frozen=True)
class Upstream:
    """What serve knows of the relay running in its own process (serve with memory://)."""

    #: The relay's status; None while it has not started.
    relay: RelayStatus | None
    #: Who the relay publishes as: ``embedded``, since an embedded relay holds no lease.
    identity: str = "embedded"
    #: ``simulator`` when the prices come from the local exchange (serve --simulate).
    exchange: str | None = None


class UpstreamStatus(Protocol):
    """What serve asks of the relay beside it: ``status()`` -> :class:`Upstream`."""

    def status(self) -> Upstream: ...


def upstream_json(up: Upstream) -> dict[str, Any]:
    """The report's ``upstream`` object: the relay's status, then ``exchange`` when
    simulated, then the connection ``state``, ``breaker`` and ``last_frame_age_s`` (the
    WebSocket's, at the top for dashboards and alerts); only ``state: starting`` before
    the relay runs."""
    if up.relay is None:
        doc: dict[str, Any] = {"state": "starting"}
        if up.exchange is not None:
            doc["exchange"] = up.exchange
        return doc
    doc = to_json(up.relay)
    if up.exchange is not None:
        doc["exchange"] = up.exchange
    doc["state"] = up.relay.state
    doc["breaker"] = up.relay.ws.breaker
    doc["last_frame_age_s"] = up.relay.ws.last_frame_age
    return doc


def pair_states(hub: Hub, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per pair: age in seconds, source, stale (ingest's flag or older than stale_after)."""
    now = time.time() if now is None else now
    stale_after = hub.settings.resilience.heartbeat.stale_after
    return {
        pair: pair_state(
            hub.latest.get(pair),
            stale_after,
            now,
            hub.received_at.get(pair, now),
            quiet=pair in hub.quiet,
        )
        for pair in hub.pairs
    }


def _topology(bus: object) -> dict[str, Any]:
    """The Redis bus's mode, role and master (Sentinel: the service and its sentinels)."""
    topology = getattr(bus, "topology", None)
    if topology is None:
        return {"mode": "memory"}
    out: dict[str, Any] = topology()
    return out


def health_report(
    hub: Hub, upstream: UpstreamStatus | None = None, now: float | None = None
) -> dict[str, Any]:
    """The health document; see the module docstring for how ``status`` is chosen."""
    pairs = pair_states(hub, now)
    bus = hub.bus
    fanout = hub.fanout
    lead = bus.leadership()
    mono = time.monotonic()
    message_age = None if hub.last_message_at is None else mono - hub.last_message_at
    # The pinned pairs decide the status: a pair a client just asked for has no price
    # yet, and one nobody watches any more is stale on purpose.
    status, reasons = judge(
        {p: pairs[p] for p in hub.pinned if p in pairs},
        bus_connected=bus.connected,
        bus_responsive=bus.responsive,
        bus_role=getattr(bus, "role", None),
        bus_problem=getattr(bus, "problem", None),
        leader=lead is None or lead.holder is not None,
        message_age=message_age if lead is not None else None,
        heartbeat_age=lead.heartbeat_age if lead is not None else None,
        universe_missing=hub.universe_missing(),
    )
    up: dict[str, Any] | None = None
    leader: dict[str, Any] = {"identity": None, "epoch": hub.epoch or None, "since": None}
    if upstream is not None:
        try:
            seen = upstream.status()
        except Exception as exc:  # health must answer even if the relay is confused
            up = {"state": "unknown", "error": type(exc).__name__}
        else:
            up = upstream_json(seen)
            if seen.relay is not None:
                leader = {"identity": seen.identity, "epoch": seen.relay.epoch, "since": None}
    if lead is not None:
        leader["holder"] = lead.holder
        leader["heartbeat_age_s"] = (
            None if lead.heartbeat_age is None else round(lead.heartbeat_age, 3)
        )
    first = hub.first_price_ms
    demand = {
        "pinned": list(hub.pinned),
        "active": list(hub.pairs),
        "wanted": sorted(hub.demand.wanted),
        "max_pairs": hub.settings.exchange.max_pairs,
        "universe": None if (u := hub.universe()) is None else len(u),
        "activated": hub.activated,
        "deactivated": hub.deactivated,
        "waiting_first_price": sorted(hub.waiting_since),
        "first_price_ms": {
            "count": first.count,
            "p50": first.quantile(0.5) if first.count else None,
            "p99": first.quantile(0.99) if first.count else None,
            "max": first.max if first.count else None,
        },
        "refused": dict(sorted(hub.activations.refused.items())),
    }
    return {
        "status": status,
        "reasons": reasons,
        "pairs": pairs,
        "demand": demand,
        "leader": leader,
        "upstream": up,
        "bus": {
            "url": redact_url(bus.url),
            "connected": bool(bus.connected),
            "responsive": bool(bus.responsive),
            "ping_ms": (
                None
                if getattr(bus, "ping_latency", None) is None
                else round(1000 * bus.ping_latency, 1)  # type: ignore[attr-defined]
            ),
            "last_message_age_s": None if message_age is None else round(message_age, 3),
            "resubscribes": getattr(bus, "reconnects", 0),
            "resyncs": hub.resyncs,
            "epoch_drops": bus.epoch_drops,
            **_topology(bus),
        },
        "clients": {
            "connected": fanout.clients,
            "peak": fanout.peak_clients,
            "total": fanout.connections_total,
            "dropped_slow": fanout.slow_dropped,
            "conflating": fanout.conflating,
        },
        "stale_after_s": hub.settings.resilience.heartbeat.stale_after,
        "stale_marked": hub.stale_marked,
        "version": __version__,
    }
