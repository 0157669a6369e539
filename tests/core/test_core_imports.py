"""The pure core stays pure: importing it loads nothing outside the standard library."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter so modules other tests imported (aiohttp, redis, ...) do not
# hide a stray import. Every module found under pricectl.core is imported, including ones
# added after this test was written.
_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    before = set(sys.modules)  # start-up only: site, an editable-install finder, ...
    import pricectl.core
    found = [m.name for m in pkgutil.walk_packages(pricectl.core.__path__, "pricectl.core.")]
    for name in found:
        importlib.import_module(name)
    print(json.dumps({"found": found, "loaded": sorted(set(sys.modules) - before)}))
    """
)

_REPO = Path(__file__).resolve().parents[2]
_OWN = ("pricectl", "pricectl.errors", "pricectl.core")


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or name in sys.builtin_module_names:
        return True
    return name in _OWN or name.startswith("pricectl.core.")


def test_importing_every_core_module_loads_only_the_standard_library() -> None:
    """Importing every pricectl.core module loads only stdlib, pricectl, pricectl.errors."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=_REPO,
    )
    report = json.loads(out.stdout)
    expected = {"backoff", "breaker", "fallback", "heartbeat", "lease", "pairs", "ticks"}
    assert expected <= {name.rsplit(".", 1)[1] for name in report["found"]}
    outsiders = [name for name in report["loaded"] if not _allowed(name)]
    assert outsiders == [], f"pricectl.core pulled in non-stdlib modules: {outsiders}"
