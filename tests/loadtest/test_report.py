"""The report: worker finals added up into delivery and latency, and thresholds as breaches."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

from pricectl.loadtest.client import Client
from pricectl.loadtest.plan import Plan
from pricectl.loadtest.report import Thresholds, build_report
from pricectl.loadtest.runner import RunResult, WorkerFate
from pricectl.loadtest.worker import _Worker
from tests.loadtest.responses import HEAD, frame

_PLAN = Plan(
    host="127.0.0.1", port=1, pairs=("BTC/USD",), clients=4, ramp=100, duration=2, processes=2
)


async def _final(first: int, events: dict[int, list[int]]) -> dict[str, Any]:
    """A worker's real final report after its clients read ``{client: [seq, ...]}``."""
    parent, child = multiprocessing.Pipe()
    try:
        worker = _Worker(_PLAN, first, len(events), child)
        worker.window.t0, worker.window.t1 = 0, 1 << 62
        now = time.time_ns()
        for index, seqs in events.items():
            c = Client(index, worker)
            worker.clients.append(c)
            c.data_received(HEAD + frame(1, now, "snapshot"))
            for seq in seqs:
                c.data_received(frame(seq, now))
        worker.epoll.close()
        out = worker.final()
        out["worker"] = first // 2
        return out
    finally:
        parent.close()
        child.close()


def _result() -> RunResult:
    """Two workers of two clients; client 3 missed seq 4 of the 2..5 everyone else saw."""

    async def both() -> list[dict[str, Any]]:
        return [
            await _final(0, {0: [2, 3, 4, 5], 1: [2, 3, 4, 5]}),
            await _final(2, {2: [2, 3, 4, 5], 3: [2, 3, 5]}),
        ]

    finals = asyncio.run(both())
    fates = [WorkerFate(0, 100, "on time"), WorkerFate(1, 101, "on time")]
    return RunResult(_PLAN, finals, t0_ns=1, t1_ns=2, ready_after_s=0.5, workers=fates)


def test_delivery_is_events_seen_over_seqs_times_clients() -> None:
    """4 seqs in the window x 4 clients expected, 15 delivered; the one gap is counted."""
    report = build_report(_result(), scenario="steady")
    assert report.events_expected == 16 and report.events_delivered == 15
    assert report.delivery == 15 / 16
    assert report.gaps == 1 and report.missing == 1
    assert report.established == 4 and report.lost_workers == 0
    assert report.latency_ms["n"] == 15
    assert report.events_per_s == 15 / 2
    assert "scenario=steady" in report.lines()[0]
    assert report.to_dict()["ok"] is True


def test_each_threshold_breached_is_named_with_its_value() -> None:
    """Every limit broken is one line naming the flag and the figure; none broken: none."""
    report = build_report(_result())
    assert Thresholds(min_delivery=0.9, max_gaps=1, max_errors=0).breaches(report) == []
    lines = Thresholds(min_delivery=0.99, max_gaps=0, max_p99_ms=-1.0).breaches(report)
    assert len(lines) == 3
    assert lines[0].startswith("p99 latency ") and "> --max-p99-ms -1" in lines[0]
    assert lines[1] == "delivery 0.93750 < --min-delivery 0.99 (15 of 16 events)"
    assert lines[2] == "gaps 1 (1 events missing) > --max-gaps 0"
