"""How a policy refuses impossible values: once, naming each field and the rule it breaks.

Every policy of the core (``BackoffPolicy``, ``BreakerPolicy``, ``HeartbeatPolicy``,
``FallbackPolicy``, ``LeasePolicy``) is a frozen dataclass whose ``__post_init__`` is the
only validation of its values, wherever they come from. It collects its rules in
:class:`Rules` and raises one :class:`PolicyError` listing a :class:`Problem` per refused
field, so that both readers get a good message from the same rule:

- code that builds a policy gets a ``ValueError`` that reads on its own::

      LeasePolicy(ttl=10.0, renew_deadline=10.0)
      # PolicyError: lease renew_deadline must be shorter than ttl (10s), got 10s

- the config turns each problem into ``file:line: section.field: message``, naming the
  other field by its dotted key::

      config/pricectl.yaml:14: leader.renew_deadline: must be shorter than leader.ttl (10s), got 10s

Durations (fields declared with :func:`pricectl.core.duration.duration`) are shown as
written in the config (``500ms``); other values as Python prints them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pricectl.core.duration import format_duration, is_duration

__all__ = ["PolicyError", "Problem", "Rules"]


@dataclass(frozen=True)
class Problem:
    """One refused field: the rule it breaks, the field it is compared with, its value.

    ``than`` names another field of the same policy (``"ttl"``) whose value ``than_value``
    the rule compares with; ``got`` is the refused value as shown, or ``None`` when the
    rule says it all (``must be at least 1``).
    """

    field: str
    rule: str
    than: str | None = None
    than_value: str = ""
    got: str | None = None

    def message(self, section: str = "") -> str:
        """The rule as a phrase; ``section`` (``"leader."``) prefixes the other field's name.

        ``must be shorter than leader.ttl (15s), got 20s``
        """
        text = self.rule
        if self.than is not None:
            text += f" {section}{self.than} ({self.than_value})"
        if self.got is not None:
            text += f", got {self.got}"
        return text


class PolicyError(ValueError):
    """A policy refused its values: ``problems`` holds one entry per refused field."""

    def __init__(self, policy: str, problems: Sequence[Problem]) -> None:
        self.policy = policy
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{policy} {p.field} {p.message()}" for p in self.problems))


class Rules:
    """The rules of one policy instance, checked in order; :meth:`check` raises if any broke.

    A field is reported once, for the first rule it breaks, so a later rule about the
    same field (``must be finite`` after ``must be greater than 0``) can assume the
    earlier ones held. Write each rule so that NaN breaks it (``x > 0``, not
    ``not x <= 0``)::

        rules = Rules(self)
        rules.require(self.retry < self.renew_deadline, "retry", "must be shorter than",
                      than="renew_deadline")
        rules.require(self.retry > 0, "retry", "must be greater than 0", got=False)
        rules.check()
    """

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self._name = type(policy).__name__.removesuffix("Policy").lower()
        self._durations = {f.name for f in dataclasses.fields(policy) if is_duration(f)}
        self._problems: dict[str, Problem] = {}

    def require(
        self, ok: bool, field: str, rule: str, *, than: str | None = None, got: bool = True
    ) -> None:
        """Record that ``field`` breaks ``rule`` unless ``ok`` (or it already broke one)."""
        if ok or field in self._problems:
            return
        self._problems[field] = Problem(
            field,
            rule,
            than,
            self._show(than) if than is not None else "",
            self._show(field) if got else None,
        )

    def finite(self, *fields: str) -> None:
        """Each of ``fields`` must be a finite number (not infinite, not NaN)."""
        for name in fields:
            self.require(math.isfinite(getattr(self._policy, name)), name, "must be finite")

    def check(self) -> None:
        """Raise :class:`PolicyError` listing every refused field, in rule order."""
        if self._problems:
            raise PolicyError(self._name, list(self._problems.values()))

    def _show(self, field: str) -> str:
        value = getattr(self._policy, field)
        if field in self._durations and math.isfinite(value):
            return format_duration(value)
        return str(value)
