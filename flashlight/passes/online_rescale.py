"""The rescale factor of the online rewrite as an IR expression, made safe where a running maximum
is still -inf (before the first term of a row): the reference ``where(y == -inf, 0, y)``, the
guard of the first rescale, and the fold of that guard where the program already made the
reference finite (SDPA's decomposition). The lemma that licenses the rewrite is
:mod:`flashlight.passes.algebra`'s; these only keep its side condition (finite ``y``) true.
"""

from __future__ import annotations

import math

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr, Load
from flashlight.ir.nodes import Stmt
from flashlight.passes import algebra


def _safe(y: Load, op: str, dtype: str) -> Expr:
    """The reference value for a running ``max``: finite even before any element arrives."""
    if op != "max=" or not dtypes.is_float(dtype):
        return y
    return E.call("where", E.call("eq", y, E.const(-float("inf"), dtype)), E.const(0.0, dtype), y)


def _guard_first_rescale(stmt: Stmt, sources: list[Stmt], prev: list[Load], c: Expr,
                         dt: dict[str, str]) -> Expr | None:
    """``where(y_prev == -inf, 0, c)``: the rescale of the running state before its first term.

    With opaque functions ``h`` of the running maxima, ``c = exp(h(y_prev) - h(y))`` is finite
    only where ``h`` is: ``h(-inf)`` is a finite reference (``where(|m| == inf, 0, m)``), and
    ``exp(0 - h(y))`` overflows for a row maximum below -88 (0 * inf: NaN, fuzz seed 493). While a
    running maximum is still -inf every element it folded was -inf, so every term ``F`` folded so
    far was ``F(-inf, ·)``; where that is the identity (abstract evaluation), the accumulator is
    the identity and any factor, 0 included, leaves it so. None if that cannot be shown."""
    if any(src.op != "max=" for src in sources):
        return None
    minus_inf = E.const(-math.inf, "f32")
    args = {src.expr for src in sources}
    probe = E.rewrite(stmt.expr, lambda x: minus_inf if x in args else None)
    identity = COMBINERS[stmt.op].identity(dt[stmt.target.tensor])
    value = algebra.abstract_eval(probe)
    if value is algebra.UNKNOWN or not algebra.same_value(float(value), float(identity)):  # type: ignore[arg-type]
        return None
    first, finite = None, {}
    for y_prev, src in zip(prev, sources):
        cond = E.call("eq", y_prev, E.const(-math.inf, dt[src.target.tensor]))
        first = cond if first is None else E.call("or", first, cond)
        finite[cond] = y_prev
    # where the guard fails y_prev is not -inf: a select on that condition takes its else branch
    c = E.rewrite(c, lambda x: x.args[2] if isinstance(x, E.Call) and x.op == "where" and x.args[0] in finite
                  else None)
    return E.call("where", first, E.const(0.0, dt[stmt.target.tensor]), c)  # 0 * identity, or -inf + 0


def _finite_before_first(c: Expr, prev: list[Load], safe: list[Expr]) -> bool:
    """Whether the rescale ``c`` is finite while the previous running values are still -inf (and
    the references 0): ``exp(y_old - y_new)`` is 0 then, ``exp(y_new - y_old)`` is not."""
    minus_inf = {p: E.const(-math.inf, "f32") for p in prev}
    probe = E.rewrite(c, lambda x: minus_inf.get(x) if isinstance(x, Load) else
                      (E.const(0.0, "f32") if x in safe else None))
    value = algebra.abstract_eval(probe)
    return value is not algebra.UNKNOWN and math.isfinite(float(value))  # type: ignore[arg-type]


def _fold_safe(e: Expr, safe: list[Expr]) -> Expr:
    """``where(r == -inf, 0, r)`` is ``r`` where ``r`` is a reference value that is never -inf
    (the program guarded its maximum the way the rewrite does: SDPA's decomposition)."""
    def fold(x: Expr) -> Expr | None:
        if isinstance(x, E.Call) and x.op == "where" and x.args[2] in safe and isinstance(x.args[1], Const) and \
                x.args[1].value == 0 and isinstance(x.args[0], E.Call) and x.args[0].op == "eq" and \
                x.args[0].args[0] == x.args[2] and isinstance(x.args[0].args[1], Const) and \
                x.args[0].args[1].value == -float("inf"):
            return x.args[2]
        return None
    return E.rewrite(e, fold)
