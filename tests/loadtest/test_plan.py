"""The plan: request target, and how many loader processes the open-files limit allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pricectl.loadtest.plan import FD_MARGIN, STREAM_PATH, Plan, plan_processes, stream_target


def test_stream_target_keeps_slashes_and_commas_readable() -> None:
    """Pairs go in one query parameter, BTC/USD,ETH/USD, without escaping / or ,."""
    assert stream_target(["BTC/USD", "ETH/USD"]) == f"{STREAM_PATH}?pairs=BTC/USD,ETH/USD"
    assert stream_target(["A B/USD"], "/s") == "/s?pairs=A%20B/USD"
    plan = Plan(host="h", port=1, pairs=("SOL/USD",), clients=1, ramp=1, duration=1, processes=1)
    assert plan.target == f"{STREAM_PATH}?pairs=SOL/USD"


def test_requested_processes_never_exceed_the_clients() -> None:
    """--processes N is kept, but no more processes than clients; 0 means one per core."""
    assert plan_processes(1000, 2)[0] == 2
    assert plan_processes(3, 8)[0] == 3
    assert plan_processes(1000, 0)[0] == min(1000, os.cpu_count() or 1)


def _in_child_with_nofile(limit: int, code: str) -> list[object]:
    """Run ``code`` (which prints JSON) in a Python whose open-files limit is ``limit``."""
    prelude = (
        "import json, resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
        "from pricectl.loadtest.plan import plan_processes, raise_nofile_limit\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_a_low_open_files_limit_raises_the_process_count_and_says_so() -> None:
    """With 200 fds per process, 1000 clients need ceil(1000 / (200 - margin)) processes."""
    procs, per_proc, note = _in_child_with_nofile(200, "print(json.dumps(plan_processes(1000, 1)))")
    assert per_proc == 200 - FD_MARGIN
    assert procs == -(-1000 // per_proc)
    assert (
        note == f"open-files limit is 200 per process: using {procs} loader processes instead of 1"
    )


def test_raise_nofile_limit_names_a_hard_limit_below_the_need() -> None:
    """The soft limit goes up to the hard one; a need above the hard limit is named."""
    soft, hard, problem = _in_child_with_nofile(300, "print(json.dumps(raise_nofile_limit(5000)))")
    assert (soft, hard) == (300, 300)
    assert problem == "open-files limit is 300 (hard 300), below the 5000 needed"
