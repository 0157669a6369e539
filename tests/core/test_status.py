"""to_json: status dataclasses, nested in each other and in mappings and lists, as JSON data."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pricectl.core.status import to_json


@dataclass(frozen=True)
class _Inner:
    age: float | None
    skips: dict[str, int]


@dataclass(frozen=True)
class _Outer:
    epoch: int
    inner: _Inner
    pairs: dict[str, _Inner]
    history: tuple[_Inner, ...]


def test_nested_dataclasses_become_dicts_in_field_order():
    inner = _Inner(age=None, skips={"invalid_json": 3})
    doc = to_json(_Outer(7, inner, {"BTC/USD": inner}, (inner,)))
    assert doc == {
        "epoch": 7,
        "inner": {"age": None, "skips": {"invalid_json": 3}},
        "pairs": {"BTC/USD": {"age": None, "skips": {"invalid_json": 3}}},
        "history": [{"age": None, "skips": {"invalid_json": 3}}],
    }
    assert list(doc) == ["epoch", "inner", "pairs", "history"]
    assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize("value", [None, 1, 2.5, "ws", True, {"a": [1, 2]}])
def test_plain_values_pass_through(value):
    assert to_json(value) == value


def test_a_dataclass_type_is_not_a_value():
    assert to_json(_Inner) is _Inner
