"""Shared by the loadtest tests: ``pricectl loadtest`` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.waiting import UNIT

PRICECTL = [sys.executable, "-m", "pricectl.cli"]


@pytest.fixture
def run_loadtest() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``pricectl [--config FILE] loadtest ARGS`` with no PRICECTL_* from the shell."""

    def run(
        args: list[str], timeout: float, config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICECTL_")}
        root = ["--config", str(config)] if config is not None else []
        return subprocess.run(
            [*PRICECTL, *root, "loadtest", *args],
            capture_output=True,
            text=True,
            timeout=timeout * UNIT,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    return run
