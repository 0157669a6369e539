"""Load-test scenarios as YAML files: the shipped five, or your own (``--scenario FILE``).

A scenario names the load (clients, pairs, ramp, window, the simulator's update rate
for ``--spawn``), the client-side actions (``slow_share``/``slow_at``, ``drop_at``), the
server-side ones (``kill_leader_at``, which needs ``--spawn --redis``) and default
thresholds. Command-line options override any of them, and they override the
``loadtest`` section of the configuration (:func:`pricectl.loadtest.session.resolve`).
Example (``steady.yaml``)::

    description: steady load, 10 updates/s to every client
    clients: 1000
    pairs: [BTC/USD]
    ramp: 2000
    duration: 30s
    update_rate: 10
    thresholds: {min_delivery: 0.999, max_gaps: 0}

A scenario file is read by the configuration's own rules
(:func:`pricectl.config.load_document`), so a mistake is reported as in
``pricectl.yaml``: file and line, the dotted key, what was expected, the closest known
key for a typo, every problem at once::

    mine.yaml:2: clientz: unknown key (did you mean clients?); expected one of ...
    mine.yaml:3: duration: expected a duration such as 250ms, 15s, 2m, got 'ten'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pricectl.config import load_document
from pricectl.core.pairs import parse_pair
from pricectl.errors import UsageError

__all__ = ["SCENARIO_DIR", "Scenario", "load_scenario", "shipped_scenarios"]

#: Where the shipped scenario files live (package data).
SCENARIO_DIR = Path(__file__).with_name("scenarios")


@dataclass(frozen=True)
class Scenario:
    """One scenario file, validated; ``None`` (or absent from a dict) means "not given"."""

    name: str
    description: str = ""
    clients: int | None = None
    pairs: tuple[str, ...] | None = None
    ramp: float | None = None
    duration: float | None = None
    update_rate: float | None = None
    slow_share: float = 0.0
    slow_at: float = 0.0
    drop_at: float | None = None
    kill_leader_at: float | None = None
    requires_redis: bool = False
    #: The spawned ingest processes' lease (``ttl``, ``renew_deadline``, ``retry`` in
    #: seconds) when not the configured one: a shorter lease, a shorter failover gap.
    lease: dict[str, float] = field(default_factory=dict)
    #: ``max_p99_ms``, ``min_delivery``, ``max_gaps``, ``max_errors``: those given.
    thresholds: dict[str, float] = field(default_factory=dict)


# --- the file, as the configuration's reader sees it ---------------------------------------

#: "Not given" in the file's schema: the configuration's types refuse a negative
#: number, so no file can write it, and zero stays a value (``max_gaps: 0``, ``drop_at: 0s``).
_UNSET = -1


def _dur(default: float) -> Any:
    return field(default=default, metadata={"duration": True})


@dataclass(frozen=True)
class _ThresholdsFile:
    max_p99_ms: float = _UNSET
    min_delivery: float = _UNSET
    max_gaps: int = _UNSET
    max_errors: int = _UNSET


@dataclass(frozen=True)
class _LeaseFile:
    ttl: float = _dur(_UNSET)
    renew_deadline: float = _dur(_UNSET)
    retry: float = _dur(_UNSET)


@dataclass(frozen=True)
class _ScenarioFile:
    name: str = ""
    description: str = ""
    clients: int = _UNSET
    pairs: tuple[str, ...] = ()
    ramp: float = _UNSET
    duration: float = _dur(_UNSET)
    update_rate: float = _UNSET
    slow_share: float = 0.0
    slow_at: float = _dur(0.0)
    drop_at: float = _dur(_UNSET)
    kill_leader_at: float = _dur(_UNSET)
    requires_redis: bool = False
    lease: _LeaseFile = field(default_factory=_LeaseFile)
    thresholds: _ThresholdsFile = field(default_factory=_ThresholdsFile)


def _check(f: _ScenarioFile, problem: Callable[[str, str], None]) -> None:
    """What the types alone do not say: a load must be a load, pairs must be pairs."""
    if f.clients == 0:
        problem("clients", "must be at least 1")
    for key in ("ramp", "duration", "update_rate"):
        if getattr(f, key) == 0:
            problem(key, "must be greater than 0")
    if f.slow_share >= 1:
        problem("slow_share", f"expected a share below 1, got {f.slow_share:g}")
    if f.thresholds.min_delivery > 1:
        problem(
            "thresholds.min_delivery", f"must be between 0 and 1, got {f.thresholds.min_delivery:g}"
        )
    for i, text in enumerate(f.pairs):
        try:
            parse_pair(text)
        except ValueError as exc:
            problem(f"pairs[{i}]", str(exc))


def _given(value: float) -> float | None:
    return None if value == _UNSET else value


def _pairs(texts: tuple[str, ...]) -> tuple[str, ...] | None:
    """Normalised (``btc/usd`` -> ``BTC/USD``) without duplicates, as ``--pairs`` does."""
    out: list[str] = []
    for text in texts:
        pair = "/".join(parse_pair(text))
        if pair not in out:
            out.append(pair)
    return tuple(out) or None


def shipped_scenarios() -> list[str]:
    """The names of the scenarios shipped with pricectl."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a YAML file by path.

    An unknown name or an unreadable file is a :class:`~pricectl.errors.UsageError`;
    what is wrong inside the file is a :class:`~pricectl.errors.ConfigError` listing
    every problem with its line.
    """
    path = Path(name_or_path)
    if not (name_or_path.endswith((".yaml", ".yml")) or path.is_file()):
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(
                f"unknown scenario {name_or_path!r}; expected one of "
                f"{', '.join(shipped_scenarios())} or a YAML file"
            )
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read scenario {where}: {exc.strerror}") from None
    f = load_document(_ScenarioFile, text, where, _check)
    clients = _given(f.clients)
    lease = dataclasses.asdict(f.lease)
    thresholds = dataclasses.asdict(f.thresholds)
    return Scenario(
        name=f.name or path.stem,
        description=f.description,
        clients=int(clients) if clients is not None else None,
        pairs=_pairs(f.pairs),
        ramp=_given(f.ramp),
        duration=_given(f.duration),
        update_rate=_given(f.update_rate),
        slow_share=f.slow_share,
        slow_at=f.slow_at,
        drop_at=_given(f.drop_at),
        kill_leader_at=_given(f.kill_leader_at),
        requires_redis=f.requires_redis,
        lease={k: v for k, v in lease.items() if v != _UNSET},
        thresholds={k: v for k, v in thresholds.items() if v != _UNSET},
    )
