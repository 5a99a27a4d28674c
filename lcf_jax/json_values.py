"""Parsed JSON values in the readers' error messages: a short excerpt of a value, and the type
checks JSON needs (a bool is an int to Python, not a number to a reader of these files)."""

from __future__ import annotations

import json
from typing import Any


def excerpt(value: Any) -> str:
    """`value` as JSON, cut to 40 characters for a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
