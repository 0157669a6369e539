"""Status snapshots as data, and the one way they become JSON.

Each component's ``status()`` returns a frozen dataclass defined beside the component
(``WSStatus`` in the WebSocket adapter, ``RelayStatus`` in the relay, and so on), so a
reader gets named, typed fields instead of a dict whose keys it has to know.
:func:`to_json` turns any of them, nested in each other or in mappings and lists, into
the plain dicts, lists and scalars that ``json.dumps`` takes, field order kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["to_json"]


def to_json(value: object) -> Any:
    """``value`` with every dataclass made a dict of its fields (recursively, in order)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value
