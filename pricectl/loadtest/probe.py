"""The server side of a load test: CPU and memory of its process tree, and its ``/metrics``.

Resources come from ``/proc/<pid>`` (``--server-pid``, or the spawned serve: the
process and its children, read directly, no psutil) and from the server's Prometheus
``/metrics``. :class:`ServerProbe` takes a sample before any client connects (the
memory that is not per connection), when the measurement window opens and when it
closes; the report turns the differences into CPU per event and memory per connection.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass, field

__all__ = ["ProcessSample", "ServerProbe", "read_metrics", "sample_process_tree"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds (user + system) and resident memory of a process tree at one moment."""

    at: float
    cpu_s: float
    rss_bytes: int
    pids: int


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _stat(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return cpu, rss


def sample_process_tree(pid: int) -> ProcessSample | None:
    """CPU and RSS of ``pid`` plus its descendants (``serve --workers N`` forks), or None."""
    seen = 0
    cpu = 0.0
    rss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        got = _stat(p)
        if got is None:
            if p == pid:
                return None
            continue
        seen += 1
        cpu += got[0]
        rss += got[1]
        todo.extend(_children(p))
    return ProcessSample(time.monotonic(), cpu, rss, seen)


def read_metrics(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Prometheus text from ``url`` as ``{metric name: sum over its label sets}``."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


@dataclass
class ServerProbe:
    """Samples the server at the start of the ramp, the window's start and its end."""

    pid: int | None = None
    metrics_url: str | None = None
    baseline: ProcessSample | None = None
    start: ProcessSample | None = None
    end: ProcessSample | None = None
    metrics_start: dict[str, float] = field(default_factory=dict)
    metrics_end: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def _sample(self) -> ProcessSample | None:
        if self.pid is None:
            return None
        got = sample_process_tree(self.pid)
        if got is None and not self.problems:
            self.problems.append(f"server pid {self.pid} not readable in /proc")
        return got

    def _metrics(self) -> dict[str, float]:
        if self.metrics_url is None:
            return {}
        try:
            return read_metrics(self.metrics_url)
        except OSError as exc:
            self.problems.append(f"{self.metrics_url}: {exc}")
            return {}

    def at_baseline(self) -> None:
        """Before any client connects: the memory that is not per connection."""
        self.baseline = self._sample()

    def at_start(self) -> None:
        """When the measurement window opens."""
        self.start = self._sample()
        self.metrics_start = self._metrics()

    def at_end(self) -> None:
        """When the measurement window closes."""
        self.end = self._sample()
        self.metrics_end = self._metrics()
