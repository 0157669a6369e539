"""The parent of a run: workers started, the window sent, each worker's fate in the result."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from pricectl.loadtest.plan import Plan
from pricectl.loadtest.report import build_report
from pricectl.loadtest.runner import run
from pricectl.loadtest.spawn import spawned_system
from tests.waiting import UNIT


@pytest.mark.timeout(90 * UNIT)
def test_a_stalled_loader_process_is_named_and_the_run_still_reports() -> None:
    """A worker stalled past the window reports when asked (late); a silent one is named."""
    with spawned_system(["BTC/USD"], 10.0) as system:
        plan = Plan(
            host="127.0.0.1",
            port=system.serve_port,
            pairs=("BTC/USD",),
            clients=30,
            ramp=1000.0,
            duration=1.0,
            processes=3,
            drain_timeout=1.0,
            report_grace=1.0 * UNIT,
        )

        def on_window(phase: str, _into: float) -> None:
            workers = {p.name: p.pid for p in multiprocessing.active_children()}
            if phase == "start":  # 1 and 2 stall before they even learn of the window
                for name in ("pricectl-loadtest-1", "pricectl-loadtest-2"):
                    os.kill(workers[name], signal.SIGSTOP)
            elif phase == "overdue":  # the parent is about to ask for what they have
                os.kill(workers["pricectl-loadtest-1"], signal.SIGCONT)

        result = run(plan, on_window=on_window)
    fates = {w.index: w for w in result.workers}
    assert [fates[i].status for i in range(3)] == ["on time", "late", "lost"]
    assert "did not stop" in fates[2].detail
    report = build_report(result)
    text = "\n".join(report.lines())
    assert f"loader process 1 (pid {fates[1].pid}) was late" in text
    assert f"loader process 2 (pid {fates[2].pid}) sent no report" in text
    assert report.established == 20  # the late worker's figures count; the lost one's cannot
    assert report.events_window > 0 and report.lost_workers == 1


@pytest.mark.timeout(90 * UNIT)
def test_per_client_pair_sets_are_streamed_and_counted_per_pair() -> None:
    """Clients with different pair sets each stream their own pairs; the expected count
    is each pair's published updates times the clients that stream it, and every
    client's window count matches what was published for its own pairs."""
    pairs = ["BTC/USD", "ETH/USD", "SOL/USD"]
    sets = (("BTC/USD",), ("ETH/USD", "SOL/USD"), ("BTC/USD", "ETH/USD", "SOL/USD"))
    with spawned_system(pairs, 10.0) as system:
        plan = Plan(
            host="127.0.0.1",
            port=system.serve_port,
            pairs=tuple(pairs),
            clients=9,
            ramp=1000.0,
            duration=1.5,
            processes=2,
            pair_sets=sets,
        )
        assert plan.target_of(1).endswith("?pairs=ETH/USD,SOL/USD")
        result = run(plan)
    report = build_report(result)
    assert report.established == 9 and report.gaps == 0 and report.duplicates == 0
    clients = {p: 0 for p in pairs}
    for f in result.finals:
        for pair, n in f["pair_clients"].items():
            clients[pair] += n
    assert clients == {"BTC/USD": 6, "ETH/USD": 6, "SOL/USD": 6}
    spans: dict[str, int] = {}
    for f in result.finals:
        for pair, _epoch, lo, hi in f["ranges"]:
            spans[pair] = max(spans.get(pair, 0), hi - lo + 1)
    assert all(spans[p] > 0 for p in pairs)
    assert report.events_expected == sum(spans[p] * clients[p] for p in pairs)
    counts = {i: n for f in result.finals for i, n in f["client_events"]}
    assert sorted(counts) == list(range(9))
    for index, got in counts.items():
        assert got == sum(spans[p] for p in plan.pairs_of(index)), index
