"""The import rule of the package, read from the source: every import of every module,
at the top, inside functions and under ``TYPE_CHECKING`` alike.

Imports flow one way (docs/architecture.md, "The import rule")::

    commands -> (ingest, server, client, loadtest) -> (exchange, simulator, bus)
             -> config -> core -> errors

A module may import its own package, anything on a lower tier, and nothing above it.
Where the rule leaves the top-level modules:

- ``cli`` (the root command) sits with ``commands``: commands import it for
  ``settings(ctx)`` and ``DURATION``, and it reaches them only through entry points,
  never by import (that is what keeps ``--help`` from loading every library).
- ``console`` (rich output) sits with ``commands`` too, and only commands import it.
- ``logs`` (logging set-up and the rate-limited logger) sits with ``config``: any
  component may log through it, and it builds only on core.
- ``errors`` and the package itself (``pricectl.__version__``) are the floor.

Within a tier, packages do not import each other, except the edges in ``_PEERS``,
each there on purpose. ``_TO_FOLD`` lists the imports that break the rule today and
are still to be folded away; it should only shrink. Nothing imports ``benchmarks``,
here or in the tests. That core imports only the standard library at run time is
``tests/core/test_core_imports.py``'s to check.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE = _ROOT / "pricectl"

#: The tier of each part of the package, lowest first.
_TIER = {
    "pricectl": 0,
    "errors": 0,
    "core": 1,
    "config": 2,
    "logs": 2,
    "exchange": 3,
    "simulator": 3,
    "bus": 3,
    "ingest": 4,
    "server": 4,
    "client": 4,
    "loadtest": 4,
    "commands": 5,
    "cli": 5,
    "console": 5,
}

#: Imports between parts of one tier, allowed on purpose.
_PEERS = {
    ("commands", "cli"): "settings(ctx) and DURATION, what every command shares",
    ("commands", "console"): "the commands draw; nothing else does",
    ("server", "ingest"): "serve with memory:// runs the relay in its own process",
}

#: Imports that break the rule today, (importing module, imported module): to fold.
_TO_FOLD: set[tuple[str, str]] = set()


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(_PACKAGE.rglob("*.py")):
        parts = path.relative_to(_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (relative imports resolved), wherever it does it."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module
            # ``from pricectl import bus``: the names may be modules or packages themselves.
            for alias in node.names:
                target = _ROOT.joinpath(*module.split("."), alias.name)
                if target.with_suffix(".py").exists() or (target / "__init__.py").exists():
                    yield f"{module}.{alias.name}"


def _part(module: str) -> str | None:
    """``pricectl.bus.redis`` -> ``bus``; ``pricectl`` -> ``pricectl``; None outside."""
    parts = module.split(".")
    if parts[0] != "pricectl":
        return None
    return parts[1] if len(parts) > 1 else "pricectl"


def _edges() -> Iterator[tuple[str, str]]:
    for name, path in _modules():
        for imported in _imports(name, path):
            yield name, imported


def test_every_part_of_the_package_has_a_tier() -> None:
    """Each module and package under pricectl/ is placed in the rule (a new one must be)."""
    parts = {_part(name) for name, _ in _modules()}
    assert parts - set(_TIER) == set()


def test_imports_flow_down_the_tiers() -> None:
    """No module imports a part on a higher tier, or a peer on its own tier unless allowed."""
    wrong = []
    for name, imported in _edges():
        src, dst = _part(name), _part(imported)
        if src is None or dst is None or src == dst or (name, imported) in _TO_FOLD:
            continue
        if _TIER[dst] > _TIER[src] or (_TIER[dst] == _TIER[src] and (src, dst) not in _PEERS):
            wrong.append(f"{name} -> {imported} ({src} tier {_TIER[src]}, {dst} {_TIER[dst]})")
    assert wrong == []


def test_only_commands_import_the_console() -> None:
    """pricectl.console (rich) is imported by command modules and by nothing else."""
    users = {name for name, imported in _edges() if _part(imported) == "console"}
    assert {_part(name) for name in users} <= {"commands"}, sorted(users)


def test_nothing_imports_the_benchmarks() -> None:
    """No module of pricectl/ or tests/ imports benchmarks/ (tests run them as programs)."""
    found = []
    for folder in (_PACKAGE, _ROOT / "tests"):
        for path in sorted(folder.rglob("*.py")):
            for module in _imports(path.stem, path):
                if module.split(".")[0] == "benchmarks":
                    found.append(f"{path.relative_to(_ROOT)} -> {module}")
    assert found == []


def test_the_allowances_are_still_needed() -> None:
    """Every peer edge and every import still to fold exists: a folded one leaves the lists."""
    edges = set(_edges())
    parts = {(_part(a), _part(b)) for a, b in edges}
    assert not set(_PEERS) - parts, sorted(set(_PEERS) - parts)
    assert not _TO_FOLD - edges, sorted(_TO_FOLD - edges)
