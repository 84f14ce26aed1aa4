"""Integer index expressions: an element of an index tensor read as an index, and proofs that an
index is non-negative (so that no wrap-around or sign fixup is needed)."""

from __future__ import annotations

from collections.abc import Sequence

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Size, index_ranges


def as_index(e: Expr, dtype: str, wrap_size: int | str | None = None,
             ranges: dict[str, tuple[int, int]] | None = None) -> Expr:
    """An element of an index tensor as an i64 index. With ``wrap_size``, a negative index counts
    from the end (``i + n`` where ``i < 0``), as advanced indexing does in eager, unless it is
    provably non-negative."""
    if not dtypes.is_int(dtype):
        raise Unsupported(f"indices of dtype {dtype}")
    i = e if dtype == "i64" else E.call("i64", e)
    if wrap_size is None or dtype == "u8" or nonnegative(i, ranges or {}):
        return i
    size = E.index(wrap_size) if isinstance(wrap_size, int) else E.Iter(wrap_size)  # a number, or a size parameter
    return E.call("where", E.call("lt", i, E.index(0)), E.add(i, size), i)


def iterator_ranges(its: Sequence[Iter], shape: Sequence[Size]) -> dict[str, tuple[int, int]]:
    """The range of each iterator over ``shape`` (for :func:`nonnegative`)."""
    return index_ranges([it.name for it in its], shape)


def nonnegative(e: Expr, ranges: dict[str, tuple[int, int]]) -> bool:
    """Whether an integer index expression is provably >= 0 on iterator ``ranges``."""
    if isinstance(e, Call) and e.op == "mod" and isinstance(e.args[1], E.Const) and e.args[1].value > 0:
        return True
    if isinstance(e, Call) and e.op == "floordiv" and isinstance(e.args[1], E.Const) and e.args[1].value > 0:
        return nonnegative(e.args[0], ranges)
    if isinstance(e, Call) and e.op in ("i64", "i32"):
        return nonnegative(e.args[0], ranges)
    form = E.affine_form(e)
    if form is None:
        return False
    lo = form[1]
    for name, k in form[0].items():
        if name not in ranges:
            return False
        a, b = ranges[name]
        lo += min(k * a, k * b)
    return lo >= 0
