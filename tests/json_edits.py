"""Field edits on parsed JSON, shared by the fuzz tests of the on-disk formats."""

from __future__ import annotations

from typing import Any

DELETE = object()  # an edit that removes the field


def set_field(data: Any, keys: tuple, value: Any) -> Any:
    """`data` with the field at `keys` set to `value` (DELETE: removed), changed in place."""
    parent = data
    for key in keys[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    return data
