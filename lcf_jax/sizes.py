"""Rounding sizes up to a multiple: padded widths, cache capacities and span counts are rounded so
that calls of similar sizes share one compiled program."""

from __future__ import annotations


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple
