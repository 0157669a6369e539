"""Pin a process tree to chosen CPUs, so the server and the loader never share a core."""

from __future__ import annotations

import contextlib
import os

__all__ = ["pin_tree"]


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpus``."""
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)
        with contextlib.suppress(OSError), open(f"/proc/{p}/task/{p}/children") as f:
            todo.extend(int(c) for c in f.read().split())
