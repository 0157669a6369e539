"""Shared fixtures: a real redis-server per test, ``pricectl`` as a real process, and a
clean environment for config."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port; ``.kill()``, ``.stop()``, ``.start()`` keep the port."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


#: ``run_pricectl(*args, env=None)``: the finished ``pricectl ARGS`` process.
RunPricectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_pricectl() -> RunPricectl:
    """Run ``python -m pricectl.cli ARGS`` to completion (``env`` adds to the environment)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pricectl.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=60,
        )

    return run


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no pricectl settings from the developer's shell."""
    import os

    from pricectl.config import ENV_ALIASES

    for name in list(os.environ):
        if name.startswith("PRICECTL_") or name in ENV_ALIASES:
            monkeypatch.delenv(name, raising=False)
