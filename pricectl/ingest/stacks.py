"""Every asyncio task's await chain, for an operator asking a live process what it waits on.

``kill -USR1 <pid>`` on ``pricectl ingest`` logs one block per task: its name, whether it
is being cancelled (and how many cancel requests are pending), and the chain of
coroutines it is suspended in, innermost last. That is the tool for a process that looks
stuck: a task that shows ``cancelling 1`` for more than a moment has swallowed its
cancellation somewhere in the frames listed.

:meth:`asyncio.Task.get_stack` shows only the outermost coroutine's frame of a suspended
task; the chain here follows ``cr_await`` down to the frame that is really waiting.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType
from typing import Any

__all__ = ["await_chain", "describe_tasks", "log_tasks"]


def await_chain(coro: Any) -> list[FrameType]:
    """The frames of ``coro`` and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    while coro is not None and id(coro) not in seen:
        seen.add(id(coro))
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is not None:
            frames.append(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    return frames


def describe_tasks() -> str:
    """One block per task of the running loop (call from inside it)."""
    blocks: list[str] = []
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    for task in tasks:
        state = "done" if task.done() else "pending"
        cancelling = task.cancelling()
        head = f"task {task.get_name()!r} {state}" + (
            f", cancelling {cancelling}" if cancelling else ""
        )
        lines = [head]
        for frame in await_chain(task.get_coro()):
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        blocks.append("\n".join(lines))
    return f"{len(tasks)} tasks:\n" + "\n".join(blocks)


def log_tasks(log: logging.Logger) -> None:
    """Log :func:`describe_tasks` at WARNING (a signal handler's body)."""
    log.warning("task dump (SIGUSR1): %s", describe_tasks())
