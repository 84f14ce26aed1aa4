"""The pointwise statement, which every rule that computes ends in, and its operands.

A rule states its node's result as a function of the output iterators; :func:`pointwise` makes
that one statement over the node's shape, or no statement at all where the expression reads no
tensor (then it is an index expression, recomputed where it is used, like a view).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import broadcast_index, literal
from flashlight.frontend.rules.base import RuleContext
from flashlight.frontend.symbolic import is_size
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value, index_ranges, placeholder


def operand(c: RuleContext, a: object, compute: str, out_shape: Sequence[int]) -> Callable[[list[Iter]], Expr]:
    """An operand as a function of the output iterators, cast to the compute dtype."""
    if isinstance(a, fx.Node) and is_size(a):
        n = c.scalar_size(a)  # a varying integer argument: a number where the lift binds it
        return (lambda its: literal(n, compute)) if isinstance(n, int) else (lambda its: E.call(compute, n))
    if isinstance(a, fx.Node):
        v = c.env[a]

        def load(its: list[Iter]) -> Expr:
            x = v.at(broadcast_index(its, out_shape, v.shape))
            return x if v.dtype == compute else E.call(compute, x)
        return load
    if isinstance(a, (bool, int, float)):
        if isinstance(a, float) and not dtypes.is_float(compute):
            raise Unsupported("a real scalar in an integer computation")
        return lambda its: literal(a, compute)  # type: ignore[arg-type]
    raise Unsupported(f"argument {a!r} is neither a tensor nor a Python number")


def pointwise(c: RuleContext, operands: Sequence[Callable[[list[Iter]], Expr] | Value],
              fn: Callable[[list[Expr]], Expr], compute: str | None) -> Value:
    """The statement ``out[its] = cast(fn(operands(its)))`` over the node's output shape.

    An expression that reads no tensor (a constant, ``arange``, a mask computed from iterators,
    index arithmetic on those) creates no statement: like a view, it is a value over placeholder
    iterators, recomputed where it is used. So ``table[i - j + n]`` stays an affine access and a
    mask like ``j > i`` reaches its consumer as an affine condition."""
    shape, out = c.out_shape, c.out_dtype
    getters = []
    for o in operands:
        if isinstance(o, Value):
            getters.append(lambda its, v=o: v.at(broadcast_index(its, shape, v.shape)))
        else:
            getters.append(o)

    def make(its: list[Iter]) -> Expr:
        r = fn([g(its) for g in getters])
        return r if compute is None or compute == out else E.call(out, r)
    ps = [placeholder(k) for k in range(len(shape))]
    pure = make(ps)
    if not E.loads(pure):
        ranges = index_ranges([p.name for p in ps], shape)
        return Value(E.simplify_index(pure, ranges), shape, out)
    return c.b.emit(c.hint(), out, shape, ["parallel"] * len(shape), list(range(len(shape))), "=", make)
