"""Shared fixtures: a real redis-server per test, and a clean environment for config."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no pricectl settings from the developer's shell."""
    import os

    from pricectl.config import ENV_ALIASES

    for name in list(os.environ):
        if name.startswith("PRICECTL_") or name in ENV_ALIASES:
            monkeypatch.delenv(name, raising=False)
