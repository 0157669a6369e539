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
