"""``GET /metrics``: Prometheus text exposition, written by hand (no client library needed).

Counters come straight from the hub's plain integers, so the per-event path pays
nothing for metrics: a scrape reads them.
"""

from __future__ import annotations

import time
from typing import Any

from pricectl import __version__
from pricectl.server.health import UpstreamStatus, health_report
from pricectl.server.hub import Hub

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{inner}}} {value:g}")
            else:
                self.lines.append(f"{name} {value:g}")


def render_metrics(hub: Hub, upstream: UpstreamStatus | None = None) -> str:
    """The exposition text (ends with a newline)."""
    now = time.time()
    report = health_report(hub, upstream, now)
    fanout = hub.fanout
    o = _Out()
    o.metric("pricectl_info", "gauge", "Build information.", [({"version": __version__}, 1)])
    o.metric(
        "pricectl_health_status",
        "gauge",
        "1 for the current health status.",
        [({"status": s}, 1 if report["status"] == s else 0) for s in ("ok", "degraded", "down")],
    )
    o.metric("pricectl_clients", "gauge", "Open SSE streams.", [({}, fanout.clients)])
    o.metric(
        "pricectl_pairs",
        "gauge",
        "Pairs by kind: pinned (always on), active (heard by this serve), wanted (by the "
        "cluster, as last read from the bus).",
        [
            ({"kind": "pinned"}, len(hub.pinned)),
            ({"kind": "active"}, len(hub.pairs)),
            ({"kind": "wanted"}, len(hub.demand.wanted)),
        ],
    )
    o.metric(
        "pricectl_pair_activations_total",
        "counter",
        "Pairs this serve started hearing on demand, and stopped hearing again.",
        [({"kind": "on"}, hub.activated), ({"kind": "off"}, hub.deactivated)],
    )
    first = hub.first_price_ms
    o.metric(
        "pricectl_first_price_ms",
        "gauge",
        "Milliseconds from a pair's activation here to its first fresh price, by quantile.",
        [
            ({"quantile": q}, float(first.quantile(float(q))) if first.count else 0.0)
            for q in ("0.5", "0.99")
        ]
        + [({"quantile": "1"}, float(first.max))],
    )
    o.metric(
        "pricectl_first_price_count",
        "counter",
        "Pairs whose first price after activation arrived.",
        [({}, first.count)],
    )
    o.metric(
        "pricectl_clients_peak", "gauge", "Most streams open at once.", [({}, fanout.peak_clients)]
    )
    o.metric(
        "pricectl_connections_total",
        "counter",
        "SSE streams accepted.",
        [({}, fanout.connections_total)],
    )
    o.metric(
        "pricectl_rejected_total",
        "counter",
        "SSE streams turned away, by limit.",
        [({"reason": r}, n) for r, n in sorted(hub.rejected.items())] or [({"reason": "none"}, 0)],
    )
    o.metric(
        "pricectl_events_sent_total",
        "counter",
        "Events written to clients.",
        [({}, fanout.events_sent)],
    )
    o.metric(
        "pricectl_events_merged_total",
        "counter",
        "Events written together with a later one because the fan-out was behind.",
        [({}, fanout.merged_events)],
    )
    o.metric(
        "pricectl_bytes_sent_total",
        "counter",
        "Event bytes written to clients.",
        [({}, fanout.bytes_sent)],
    )
    o.metric(
        "pricectl_updates_received_total",
        "counter",
        "Price updates read from the bus.",
        [({}, hub.updates_received)],
    )
    o.metric(
        "pricectl_slow_clients",
        "gauge",
        "Clients being conflated right now.",
        [({}, fanout.conflating)],
    )
    o.metric(
        "pricectl_slow_conflated_total",
        "counter",
        "Times a client fell behind and started conflating.",
        [({}, fanout.slow_conflated)],
    )
    o.metric(
        "pricectl_slow_dropped_total",
        "counter",
        "Clients closed after being unwritable past write_timeout.",
        [({}, fanout.slow_dropped)],
    )
    o.metric(
        "pricectl_epoch_drops_total",
        "counter",
        "Updates dropped for an older epoch.",
        [({}, report["bus"]["epoch_drops"])],
    )
    o.metric(
        "pricectl_bus_connected",
        "gauge",
        "1 while the bus is reachable.",
        [({}, 1 if hub.bus.connected else 0)],
    )
    o.metric(
        "pricectl_bus_responsive",
        "gauge",
        "1 while the bus answers a PING within 1 s.",
        [({}, 1 if hub.bus.responsive else 0)],
    )
    lead = hub.bus.leadership()
    o.metric(
        "pricectl_leader_present",
        "gauge",
        "1 while an ingest leader holds the lease (as the bus last saw it).",
        [({}, 1 if lead is None or lead.holder is not None else 0)],
    )
    o.metric(
        "pricectl_stale_marked_total",
        "counter",
        "Times serve sent a pair to its clients as stale (nothing for stale_after).",
        [({}, hub.stale_marked)],
    )
    o.metric(
        "pricectl_bus_reconnects_total",
        "counter",
        "Bus resubscriptions.",
        [({}, report["bus"]["resubscribes"])],
    )
    o.metric(
        "pricectl_resyncs_total",
        "counter",
        "Snapshot resyncs sent after a bus gap.",
        [({}, hub.resyncs)],
    )
    pairs = report["pairs"]
    o.metric(
        "pricectl_pair_age_seconds",
        "gauge",
        "Age of the latest update per pair.",
        [({"pair": p}, st["age_s"]) for p, st in pairs.items() if st["age_s"] is not None],
    )
    o.metric(
        "pricectl_pair_stale",
        "gauge",
        "1 when the pair is stale.",
        [({"pair": p}, 1 if st["stale"] else 0) for p, st in pairs.items()],
    )
    up = report["upstream"]
    if up is not None:
        state = str(up.get("state", "unknown"))
        o.metric(
            "pricectl_upstream_state",
            "gauge",
            "1 for the upstream connection state.",
            [({"state": state}, 1)],
        )
        if up.get("breaker") is not None:
            o.metric(
                "pricectl_upstream_breaker",
                "gauge",
                "1 for the breaker state.",
                [({"state": str(up["breaker"])}, 1)],
            )
        age = up.get("last_frame_age_s")
        if isinstance(age, (int, float)):
            o.metric(
                "pricectl_upstream_last_frame_age_seconds",
                "gauge",
                "Seconds since the last exchange frame.",
                [({}, float(age))],
            )
        _exchange_metrics(o, up)
    return "\n".join(o.lines) + "\n"


def _exchange_metrics(o: _Out, up: dict[str, Any]) -> None:
    """The embedded relay's exchange connections (memory://): streams per connection,
    control messages, and the time from a new pair to its first and first live update."""
    ws = up.get("ws")
    if not isinstance(ws, dict) or "connections" not in ws:
        return
    conns = [c for c in ws.get("connections") or () if isinstance(c, dict)]
    o.metric(
        "pricectl_exchange_connections",
        "gauge",
        "Exchange WebSocket connections open.",
        [({}, float(len(conns)))],
    )
    o.metric(
        "pricectl_exchange_streams",
        "gauge",
        "Streams the exchange confirmed, per connection.",
        [
            (
                {"connection": str(c.get("id")), "role": str(c.get("role"))},
                float(c.get("streams", 0)),
            )
            for c in conns
        ]
        or [({"connection": "none", "role": "none"}, 0.0)],
    )
    o.metric(
        "pricectl_exchange_control_messages_per_second",
        "gauge",
        "SUBSCRIBE/UNSUBSCRIBE messages sent per second (over the last 10 s).",
        [({}, float(ws.get("control_messages_per_s") or 0.0))],
    )
    o.metric(
        "pricectl_exchange_control_messages_total",
        "counter",
        "Control messages sent, and those that failed.",
        [
            ({"result": "sent"}, float(ws.get("control_messages") or 0)),
            ({"result": "error"}, float(ws.get("control_errors") or 0)),
        ],
    )
    for key, name, what in (
        ("time_to_first_update_ms", "pricectl_relay_first_update_ms", "first update"),
        ("time_to_live_ms", "pricectl_relay_first_live_ms", "first live WebSocket update"),
    ):
        lat = up.get(key)
        if isinstance(lat, dict):
            o.metric(
                name,
                "gauge",
                f"Milliseconds from the relay taking a new pair to its {what}, by quantile.",
                [
                    ({"quantile": q}, float(lat.get(k) or 0))
                    for q, k in (("0.5", "p50"), ("0.99", "p99"), ("1", "max"))
                ],
            )
