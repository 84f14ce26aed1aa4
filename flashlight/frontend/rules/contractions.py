"""Contractions: a matrix product is one reducing statement, ``out[i, j] += a[i, r] * b[r, j]``.

The reduced dimension is the innermost loop; the passes fuse the product with what reads it
(a softmax, a scaled sum). ``addmm`` is a product and a pointwise statement that adds the bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import broadcast_index, literal
from flashlight.frontend.rules.base import RuleContext, Rules, aten
from flashlight.frontend.rules.pointwise import pointwise
from flashlight.frontend.torch_dtypes import opmath
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value

RULES = Rules()


@RULES.handles(aten.bmm, aten.mm)
def _matmul(c: RuleContext) -> Value:
    a, b = c.value(c.arg(0)), c.value(c.arg(1))
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else "i64"
    batch = a.shape[:-2]
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    nb = len(batch)
    extents = list(batch) + [m, n, k]
    kinds = ["parallel"] * (nb + 2) + ["reduce"]

    def make(its: list[Iter]) -> Expr:
        bi, (i, j, r) = its[:nb], its[nb:]
        x, y = a.at(bi + [i, r]), b.at(bi + [r, j])
        if a.dtype != acc:
            x = E.call(acc, x)
        if b.dtype != acc:
            y = E.call(acc, y)
        return E.call("mul", x, y)
    r = c.b.emit(c.hint() if acc == out else c.hint() + "_acc", acc, extents, kinds, list(range(nb + 2)), "+=", make)
    if acc != out:
        return pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)
    return r


@RULES.handles(aten.addmm)
def _addmm(c: RuleContext) -> Value:
    """``beta * bias + alpha * (a @ b)``; with ``beta == 0`` the bias is not read (eager ignores
    even its NaNs)."""
    beta, alpha = c.kwarg("beta", 1), c.kwarg("alpha", 1)
    if not all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in (beta, alpha)):
        raise Unsupported("addmm with non-numeric beta or alpha")
    bias = c.value(c.arg(0))
    prod = _matmul(RuleContext(c.b, c.env, _with_args(c.node, c.node.args[1:3])))
    compute = opmath(c.out_dtype)
    if not dtypes.is_float(compute) and any(isinstance(k, float) for k in (beta, alpha)):
        raise Unsupported("real beta or alpha for an integer addmm")
    ops = [_cast_getter(prod, compute, c.out_shape), _cast_getter(bias, compute, c.out_shape)]

    def fn(xs: list[Expr]) -> Expr:
        p = xs[0] if alpha == 1 else E.call("mul", literal(alpha, compute), xs[0])  # type: ignore[arg-type]
        if beta == 0:
            return p
        b = xs[1] if beta == 1 else E.call("mul", literal(beta, compute), xs[1])  # type: ignore[arg-type]
        return E.call("add", p, b)
    return pointwise(c, ops, fn, compute)


def _cast_getter(v: Value, dtype: str, out_shape: Sequence[int]) -> Callable[[list[Iter]], Expr]:
    """``v`` broadcast to ``out_shape`` and cast to ``dtype``, as a function of the output iterators."""
    def get(its: list[Iter]) -> Expr:
        x = v.at(broadcast_index(its, out_shape, v.shape))
        return x if v.dtype == dtype else E.call(dtype, x)
    return get


class _NodeView:
    """A node with replaced arguments (for lifting one aten op as a combination of others)."""

    def __init__(self, node: fx.Node, args: tuple) -> None:
        self.args, self.kwargs, self.meta, self.name, self.target = args, {}, node.meta, node.name, node.target


def _with_args(node: fx.Node, args: tuple) -> fx.Node:
    return _NodeView(node, tuple(args))  # type: ignore[return-value]
