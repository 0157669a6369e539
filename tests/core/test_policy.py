"""How a policy refuses values: one problem per field, in rule order, readable two ways."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pricectl.core.duration import duration
from pricectl.core.policy import PolicyError, Problem, Rules


@dataclass(frozen=True)
class ExamplePolicy:
    """A policy written the way the core's are: one duration, one count, one ratio."""

    limit: float = duration(10.0)
    floor: float = duration(1.0)
    count: int = 1
    ratio: float = 2.0

    def __post_init__(self) -> None:
        rules = Rules(self)
        rules.require(self.floor > 0, "floor", "must be greater than 0", got=False)
        rules.require(self.floor < self.limit, "floor", "must be shorter than", than="limit")
        rules.require(self.count >= 1, "count", "must be at least 1", got=False)
        rules.require(self.ratio >= 1, "ratio", "must be >= 1")
        rules.finite("limit", "ratio")
        rules.check()


def test_valid_values_build_the_policy() -> None:
    """Values that break no rule build the frozen policy as usual."""
    assert ExamplePolicy(limit=5.0, floor=0.25).floor == 0.25


def test_each_field_is_reported_once_for_the_first_rule_it_breaks() -> None:
    """A field that breaks two rules is reported for the first only."""
    with pytest.raises(PolicyError) as err:
        ExamplePolicy(floor=0.0, limit=0.0)
    assert [p.field for p in err.value.problems] == ["floor"]
    assert err.value.problems[0].message() == "must be greater than 0"


def test_problems_come_in_rule_order_with_values_as_written() -> None:
    """Durations show as 250ms/15s, other values as Python prints them."""
    with pytest.raises(PolicyError) as err:
        ExamplePolicy(limit=0.25, floor=0.5, count=0, ratio=0.5)
    assert err.value.policy == "example"
    assert err.value.problems == (
        Problem("floor", "must be shorter than", "limit", "250ms", "500ms"),
        Problem("count", "must be at least 1"),
        Problem("ratio", "must be >= 1", got="0.5"),
    )
    assert str(err.value) == (
        "example floor must be shorter than limit (250ms), got 500ms; "
        "example count must be at least 1; example ratio must be >= 1, got 0.5"
    )


def test_the_section_prefixes_the_other_field_only() -> None:
    """message(section) names the compared field by its dotted key, the refused one not."""
    p = Problem("floor", "must be shorter than", "limit", "10s", "20s")
    assert p.message("example.") == "must be shorter than example.limit (10s), got 20s"
    assert Problem("count", "must be at least 1").message("example.") == "must be at least 1"


def test_values_that_are_not_finite_are_shown_as_floats() -> None:
    """An infinite duration has no unit: ``inf``; NaN breaks every comparison."""
    with pytest.raises(PolicyError) as err:
        ExamplePolicy(limit=float("inf"), ratio=float("nan"))
    assert [(p.field, p.message()) for p in err.value.problems] == [
        ("ratio", "must be >= 1, got nan"),
        ("limit", "must be finite, got inf"),
    ]


def test_a_policy_error_is_a_value_error() -> None:
    """Callers that catch ValueError (bad arguments) catch a refused policy too."""
    assert issubclass(PolicyError, ValueError)
