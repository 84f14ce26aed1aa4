"""Reduction combiners: every fact about ``+=``, ``*=``, ``max=`` and ``min=`` in one table.

A reduction statement ``t[...] op= e`` folds ``e`` into ``t`` with the combiner's binary
operation, starting from its identity. The online rewrite needs a *partner*: an operation that
distributes over the combiner (``(a + b) * c = a*c + b*c``; ``max(a, b) + c = max(a+c, b+c)``),
with which an accumulator is rescaled. Every layer reads this table: the verifier and parser
(which operators exist), the interpreter (how to fold), the passes (identities, partners, the
fold as an IR expression) and the code generator (which tile reduction folds it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flashlight.ir import dtypes


@dataclass(frozen=True)
class Combiner:
    """A reduction combiner.

    ``combine`` is the pointwise IR operation that folds two values (``add``, ``max``);
    ``partner`` the pointwise operation that distributes over it, if any (the online rewrite
    rescales an accumulator with it); ``reduce`` names the fold of a whole axis (``sum``,
    ``max``, ``min``, ``prod``), which a backend maps to its own reduction; ``propagates_nan``
    says that a NaN operand gives NaN (torch's amax/amin do, so a backend's fold must too).
    """

    op: str
    combine: str
    reduce: str
    partner: str | None
    propagates_nan: bool

    def identity(self, dtype: str) -> float | int | bool:
        """The neutral element in ``dtype``: the value a reduction target starts at."""
        if self.combine == "add":
            return False if dtype == dtypes.BOOL else (0.0 if dtypes.is_float(dtype) else 0)
        if self.combine == "mul":
            return True if dtype == dtypes.BOOL else (1.0 if dtypes.is_float(dtype) else 1)
        lo, hi = dtypes.INT_RANGE.get(dtype, (-math.inf, math.inf))
        if self.combine == "max":
            return -math.inf if dtypes.is_float(dtype) else lo
        return math.inf if dtypes.is_float(dtype) else hi


COMBINERS: dict[str, Combiner] = {c.op: c for c in (
    Combiner("+=", combine="add", reduce="sum", partner="mul", propagates_nan=True),
    Combiner("*=", combine="mul", reduce="prod", partner=None, propagates_nan=True),
    Combiner("max=", combine="max", reduce="max", partner="add", propagates_nan=True),
    Combiner("min=", combine="min", reduce="min", partner=None, propagates_nan=True),
)}


ASSIGN_OPS = ("=",) + tuple(COMBINERS)  # every operator a statement may have


def combiner(op: str) -> Combiner:
    """The combiner of a reduction operator; ``ValueError`` for anything else (``=`` included)."""
    try:
        return COMBINERS[op]
    except KeyError:
        raise ValueError(f"{op!r} is not a reduction combiner; expected one of {', '.join(COMBINERS)}") from None
