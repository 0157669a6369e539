"""The independent C loader, ``sseload.c``: find it, build it, spell its command.

``sseload.c`` is a small SSE load generator written outside this project (one epoll
loop, no dependencies), so that our own loader can be checked against one we did not
write. It is not part of this repository: point ``--sseload`` or the environment
variable :data:`ENV` at its source. Three benchmark drivers run it (serve_bench,
crosscheck, bench); this is the one place that knows how it is found, compiled and
what its options mean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ENV", "build", "command", "find_source"]

#: The environment variable naming sseload.c (used when no ``--sseload`` is given).
ENV = "SSELOAD_C"


def find_source(explicit: str | None = None) -> Path | None:
    """``explicit`` if given, else ``$SSELOAD_C``, else None (the drivers then say how to
    point at it). A path that does not exist is an error, not a silent None."""
    named = explicit or os.environ.get(ENV)
    if not named:
        return None
    path = Path(named)
    if not path.is_file():
        raise SystemExit(f"sseload.c not found at {path} (from {'--sseload' if explicit else ENV})")
    return path


def build(source: Path | None, name: str = "pricectl-sseload") -> str | None:
    """Compile ``source`` (gcc -O2) into the temp directory; the binary's path, or None
    when there is no source or no gcc."""
    if source is None or not shutil.which("gcc"):
        return None
    binary = str(Path(tempfile.gettempdir(), name))
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, str(source)], check=True)
    return binary


def command(
    binary: str,
    port: int,
    path: str,
    clients: int,
    *,
    ramp: float,
    duration: float,
    json_out: Path,
    ready: Path | None = None,
    ready_timeout: float | None = None,
    sources: int | None = None,
    cpus: str | None = None,
) -> list[str]:
    """sseload's argv: ``clients`` streams of ``path`` on 127.0.0.1:``port`` opened at
    ``ramp``/s, a ``duration`` s window, latency from ``ingest_ns``, the report as JSON in
    ``json_out``; ``ready`` is a file it writes when the window starts, ``sources`` spreads
    client addresses over 127.0.0.1..N, ``cpus`` pins it (taskset list)."""
    cmd = [binary, "-p", str(port), "-u", path, "-n", str(clients)]
    cmd += ["-r", f"{ramp:g}", "-d", f"{duration:g}"]
    if ready_timeout is not None:
        cmd += ["-T", f"{ready_timeout:g}"]
    if sources:
        cmd += ["-S", str(sources)]
    cmd += ["-k", "ingest_ns"]
    if ready is not None:
        cmd += ["-R", str(ready)]
    cmd += ["-J", str(json_out), "-q"]
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd
