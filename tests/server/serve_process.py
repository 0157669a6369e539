"""``pricectl serve`` as a real process for the edge tests: its port, its log in a file
(so a test can measure how much it wrote), optional open-file limits, any environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import UNIT

__all__ = ["ServeProcess", "serve_env", "serve_process"]


@dataclass
class ServeProcess:
    """A running serve: the process, its port and the file its log (stderr) goes to."""

    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def serve_env(**env: str) -> dict[str, str]:
    """This process's environment for a serve under test: short drain and retry windows
    (so a SIGTERM test takes a second), then ``env``."""
    full_env = dict(os.environ)
    full_env.update(
        PRICECTL_SERVER__DRAIN_WINDOW="1s",
        PRICECTL_SERVER__RETRY="1s",
        PRICECTL_SERVER__RETRY_JITTER="1s",
    )
    full_env.update(env)
    return full_env


def _limit_files(nofile: int | tuple[int, int]) -> Callable[[], None]:
    soft, hard = (nofile, nofile) if isinstance(nofile, int) else nofile

    def apply() -> None:  # runs in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@contextlib.asynccontextmanager
async def serve_process(
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    nofile: int | tuple[int, int] | None = None,
    global_args: tuple[str, ...] = (),
) -> AsyncIterator[ServeProcess]:
    """``pricectl [global_args] serve --port 0 ARGS``; ``nofile`` sets its open-file limit
    (one number: soft and hard, so it cannot raise it; or ``(soft, hard)``). Killed on
    the way out if still running."""
    full_env = serve_env(**(env or {}))
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pricectl.cli",
            *global_args,
            "serve",
            "--port",
            "0",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=full_env,
            preexec_fn=_limit_files(nofile) if nofile else None,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30 * UNIT)
        if not line.startswith(b"serving on port "):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5 * UNIT)  # its last words reach the log
            pytest.fail(f"serve did not start: {line!r} {log_path.read_text()[-3000:]}")
        yield ServeProcess(proc, int(line.split()[-1]), log_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
