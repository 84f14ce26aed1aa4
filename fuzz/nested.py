"""What a program returns, taken apart: a tensor, or nested tuples and lists of tensors (and
other values). The comparison walks the leaves in order, and requires the same nesting."""

from __future__ import annotations

from typing import Any


def flat(x: Any) -> list:
    """The leaves of ``x``, depth first (``x`` itself if it is no tuple or list)."""
    if isinstance(x, (tuple, list)):
        return [y for e in x for y in flat(e)]
    return [x]


def structure(x: Any) -> Any:
    """The nesting of ``x`` with the type name of each leaf: equal for results of the same shape."""
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(structure(e) for e in x))
    return type(x).__name__
