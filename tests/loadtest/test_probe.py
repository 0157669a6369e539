"""The server probe: CPU and memory of a real process tree from /proc, and /metrics read."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pricectl.loadtest.probe import ServerProbe, read_metrics, sample_process_tree
from pricectl.loadtest.spawn import free_port

_METRICS = b"""\
# HELP pricectl_events_sent_total Events written to clients.
# TYPE pricectl_events_sent_total counter
pricectl_events_sent_total{worker="0"} 120
pricectl_events_sent_total{worker="1"} 30.5
pricectl_clients 7
not_a_number{a="b"} NaN-ish
"""

_HOLD = "import sys; sys.stdin.read()"


@contextmanager
def _metrics_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(_METRICS)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_process_tree_is_summed_over_its_children() -> None:
    """A parent holding one child: two processes, the RSS of both, CPU that only grows."""
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {_HOLD!r}], stdin=subprocess.PIPE)\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        one = sample_process_tree(parent.pid)
        alone = sample_process_tree(child_pid)
        assert one is not None and alone is not None
        assert one.pids == 2 and alone.pids == 1
        assert one.rss_bytes > alone.rss_bytes > 0
        two = sample_process_tree(parent.pid)
        assert two is not None and two.cpu_s >= one.cpu_s and two.at >= one.at
    finally:
        assert parent.stdin is not None
        parent.stdin.close()  # the parent exits, closing its child's stdin: both end
        parent.wait(timeout=30)


def test_a_gone_process_is_none_and_the_probe_says_so() -> None:
    """No /proc entry: no sample, and the probe records one problem naming the pid."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert sample_process_tree(proc.pid) is None
    probe = ServerProbe(pid=proc.pid)
    probe.at_baseline()
    probe.at_start()
    assert probe.baseline is None and probe.start is None
    assert probe.problems == [f"server pid {proc.pid} not readable in /proc"]


def test_metrics_are_summed_over_their_label_sets() -> None:
    """Prometheus text: one figure per metric name, the sum of its series; junk skipped."""
    with _metrics_server() as url:
        assert read_metrics(url) == {"pricectl_events_sent_total": 150.5, "pricectl_clients": 7.0}
        probe = ServerProbe(metrics_url=url)
        probe.at_start()
        probe.at_end()
    assert probe.metrics_start["pricectl_clients"] == 7.0 == probe.metrics_end["pricectl_clients"]
    assert probe.start is None and probe.problems == []  # no pid: nothing sampled


def test_unreachable_metrics_are_a_problem_not_a_failure() -> None:
    """A /metrics that refuses the connection leaves the figures empty and names the URL."""
    url = f"http://127.0.0.1:{free_port()}/metrics"
    probe = ServerProbe(metrics_url=url)
    probe.at_start()
    assert probe.metrics_start == {}
    assert len(probe.problems) == 1 and probe.problems[0].startswith(f"{url}: ")
