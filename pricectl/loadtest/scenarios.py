"""Load-test scenarios as YAML files: the shipped five, or your own (``--scenario FILE``).

A scenario names the load (clients, pairs, ramp, window, the simulator's update rate
for ``--spawn``), the client-side actions (``slow_share``/``slow_at``, ``drop_at``), the
server-side ones (``kill_leader_at``, which needs ``--spawn --redis``) and default
thresholds. Command-line options override any of them. Example (``steady.yaml``)::

    description: steady load, 10 updates/s to every client
    clients: 1000
    pairs: [BTC/USD]
    ramp: 2000
    duration: 30s
    update_rate: 10
    thresholds: {min_delivery: 0.999, max_gaps: 0}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pricectl.config import parse_duration
from pricectl.errors import UsageError

__all__ = ["SCENARIO_DIR", "Scenario", "load_scenario", "shipped_scenarios"]

#: Where the shipped scenario files live (package data).
SCENARIO_DIR = Path(__file__).with_name("scenarios")

_THRESHOLDS = ("max_p99_ms", "min_delivery", "max_gaps", "max_errors")
_LEASE = ("ttl", "renew_deadline", "retry")


@dataclass(frozen=True)
class Scenario:
    """One scenario file, validated."""

    name: str
    description: str = ""
    clients: int | None = None
    pairs: tuple[str, ...] | None = None
    ramp: float | None = None
    duration: float | None = None
    update_rate: float = 10.0
    slow_share: float = 0.0
    slow_at: float = 0.0
    drop_at: float | None = None
    kill_leader_at: float | None = None
    requires_redis: bool = False
    #: The spawned ingest processes' lease (``ttl``, ``renew_deadline``, ``retry`` in
    #: seconds) when not the configured one: a shorter lease, a shorter failover gap.
    lease: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


def shipped_scenarios() -> list[str]:
    """The names of the scenarios shipped with pricectl."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def _num(raw: dict[str, Any], key: str, where: str, *, duration: bool = False) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        if duration:
            return parse_duration(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("a number >= 0")
        return float(value)
    except ValueError as exc:
        raise UsageError(f"{where}: {key}: expected {exc}, got {value!r}") from None


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a YAML file by path; UsageError naming what is wrong."""
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
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read scenario {where}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of settings")
    known = {
        "name",
        "description",
        "clients",
        "pairs",
        "ramp",
        "duration",
        "update_rate",
        "slow_share",
        "slow_at",
        "drop_at",
        "kill_leader_at",
        "requires_redis",
        "lease",
        "thresholds",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(known))}"
        )
    pairs = raw.get("pairs")
    if isinstance(pairs, str):
        pairs = [p.strip() for p in pairs.split(",") if p.strip()]
    if pairs is not None and (
        not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs)
    ):
        raise UsageError(f"{where}: pairs: expected a list of pairs such as [BTC/USD]")
    thresholds = raw.get("thresholds") or {}
    if not isinstance(thresholds, dict) or set(thresholds) - set(_THRESHOLDS):
        raise UsageError(f"{where}: thresholds: expected keys among {', '.join(_THRESHOLDS)}")
    th = {k: _num(thresholds, k, f"{where}: thresholds") for k in thresholds}
    lease_raw = raw.get("lease") or {}
    if not isinstance(lease_raw, dict) or set(lease_raw) - set(_LEASE):
        raise UsageError(f"{where}: lease: expected keys among {', '.join(_LEASE)}")
    lease = {k: _num(lease_raw, k, f"{where}: lease", duration=True) for k in lease_raw}
    clients = _num(raw, "clients", where)
    slow_share = _num(raw, "slow_share", where) or 0.0
    if slow_share >= 1:
        raise UsageError(f"{where}: slow_share: expected a share below 1, got {slow_share}")
    return Scenario(
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        clients=int(clients) if clients is not None else None,
        pairs=tuple(pairs) if pairs else None,
        ramp=_num(raw, "ramp", where),
        duration=_num(raw, "duration", where, duration=True),
        update_rate=_num(raw, "update_rate", where) or 10.0,
        slow_share=slow_share,
        slow_at=_num(raw, "slow_at", where, duration=True) or 0.0,
        drop_at=_num(raw, "drop_at", where, duration=True),
        kill_leader_at=_num(raw, "kill_leader_at", where, duration=True),
        requires_redis=bool(raw.get("requires_redis", False)),
        lease={k: v for k, v in lease.items() if v is not None},
        thresholds={k: v for k, v in th.items() if v is not None},
    )
