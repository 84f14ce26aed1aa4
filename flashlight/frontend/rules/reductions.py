"""Reductions: one reducing statement each (``+=``, ``*=``, ``max=``, ``min=``).

The reduced dimensions become the innermost loops of the nest, of kind ``reduce``; reals
accumulate in their opmath type and integer sums in ``i64``, rounded to the result's dtype by a
pointwise statement after. ``mean`` divides by the count, ``any``/``all`` count, ``cumsum`` is a
masked sum (quadratic, and tiled by the passes), ``prims.var`` a shifted two-pass.
"""

from __future__ import annotations

from collections.abc import Callable

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import literal
from flashlight.frontend.rules.base import RuleContext, Rules, aten, overload_packet, prims
from flashlight.frontend.rules.elementwise import elementwise
from flashlight.frontend.rules.pointwise import pointwise
from flashlight.frontend.torch_dtypes import opmath
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value

RULES = Rules()


_REDUCE_OPS = {aten.sum: "+=", aten.amax: "max=", aten.amin: "min=", aten.mean: "+=", aten.prod: "*=",
               prims.sum: "+=", prims.amax: "max=", prims.amin: "min="}


@RULES.handles(*_REDUCE_OPS)
def _reduce(c: RuleContext) -> Value:
    packet = overload_packet(c.node.target)
    v = c.value(c.arg(0))
    dims = c.arg(1, c.kwarg("dim"))
    if packet is aten.prod:
        dims = None if len(c.node.args) < 2 else [dims]
    keepdim = bool(c.arg(2, c.kwarg("keepdim", False)))
    return _reduction(c, _REDUCE_OPS[packet], v, _reduced_dims(v, dims), keepdim, mean=packet is aten.mean)


def _reduced_dims(v: Value, dims: object) -> list[int]:
    """The reduced dimensions of ``v``, sorted; ``None`` or ``[]`` reduce all of them."""
    if dims is None or dims == []:
        return list(range(v.rank))
    listed = dims if isinstance(dims, (list, tuple)) else [dims]
    return sorted({d % max(v.rank, 1) for d in listed})  # type: ignore[operator]


def _reduction(c: RuleContext, op: str, v: Value, dims: list[int], keepdim: bool, mean: bool = False) -> Value:
    """``op``-reduce ``v`` over ``dims`` into the node's dtype: reals accumulate in their opmath
    type, integer sums and products in i64; ``mean`` divides by the count."""
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else ("i64" if op in ("+=", "*=") else out)
    if out == dtypes.BOOL:
        raise Unsupported("reductions producing booleans")
    if mean and not dtypes.is_float(out):
        raise Unsupported("mean of integers")
    order, kinds, make = _reduction_nest(v, dims, acc)
    hint = c.hint() if acc == out and not mean else c.hint() + "_acc"
    r = c.b.emit(hint, acc, [v.shape[d] for d in order], kinds, list(range(len(order) - len(dims))), op, make)
    if keepdim:
        for d in dims:
            r = r.unsqueeze(d)
    if mean:
        count = _count(v, dims, acc)
        return pointwise(c, [r], lambda xs: E.call("div", xs[0], count), acc)
    if acc != out:
        return pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)
    return r


def _count(v: Value, dims: list[int], acc: str) -> Expr:
    """The number of elements reduced over ``dims``, as a literal of ``acc``; with size parameters
    among them, their product converted to ``acc`` (a mean over a varying length divides by it)."""
    known, varying = 1, []
    for d in dims:
        if isinstance(v.shape[d], str):
            varying.append(Iter(v.shape[d]))  # type: ignore[arg-type]
        else:
            known *= v.shape[d]  # type: ignore[operator]
    if not varying:
        return literal(known, acc)
    n: Expr = E.index(known)
    for x in varying:
        n = E.mul(n, x)
    return E.call(acc, n)


def _reduction_nest(v: Value, dims: list[int], acc: str) -> tuple[list[int], list[str], Callable[[list], Expr]]:
    """The nest that reduces ``v`` over ``dims``: dim order (kept dims outermost), loop kinds, and
    ``v`` at the nest's iterators, in the accumulator's dtype."""
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims
    kinds = ["parallel"] * len(kept) + ["reduce"] * len(dims)

    def at(its: list) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        return x if v.dtype == acc else E.call(acc, x)
    return order, kinds, at


@RULES.handles(aten.max, aten.min)
def _max_min(c: RuleContext) -> Value:
    """``max(x)`` is ``amax`` over every dimension, ``max(x, y)`` is ``maximum``; ``max(x, dim)``
    (values and indices) is not lifted."""
    is_max = overload_packet(c.node.target) is aten.max
    overload = getattr(c.node.target, "_overloadname", "")
    if overload == "other":
        return elementwise("max" if is_max else "min", 2)(c)
    if overload == "default":
        v = c.value(c.arg(0))
        return _reduction(c, "max=" if is_max else "min=", v, list(range(v.rank)), False)
    raise Unsupported(f"{overload} overload")


@RULES.handles(aten.cumsum)
def _cumsum(c: RuleContext) -> Value:
    """``cumsum`` along ``dim``: ``out[.., i, ..] = sum_j where(j <= i, x[.., j, ..], 0)``, a reduction
    of a masked term (which masks-to-domains turns into the domain ``j <= i``, and tile ranges into
    skipped tiles). Quadratic in the length where a scan is linear: cumsums in attention programs
    run along the sequence of a mask or of positions (ALiBi, model libraries' position ids)."""
    v = c.value(c.arg(0))
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else "i64"
    if out == dtypes.BOOL or not v.rank:
        raise Unsupported("cumsum to booleans or of a 0-d tensor")
    dim = int(c.arg(1, c.kwarg("dim"))) % v.rank  # type: ignore[arg-type]
    n = v.shape[dim]

    def make(its: list[Iter]) -> Expr:
        idx = list(its[:v.rank])
        idx[dim] = its[v.rank]  # the summed position j
        x = v.at(idx)
        x = x if v.dtype == acc else E.call(acc, x)
        return E.call("where", E.call("le", its[v.rank], its[dim]), x, literal(0, acc))

    kinds = ["parallel"] * v.rank + ["reduce"]
    r = c.b.emit(c.hint() if acc == out else c.hint() + "_acc", acc, list(v.shape) + [n], kinds,
                 list(range(v.rank)), "+=", make)
    return r if acc == out else pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)


@RULES.handles(aten.any, aten.all)
def _any_all(c: RuleContext) -> Value:
    """``any``: the count of true elements is positive; ``all``: the count of false ones is zero
    (counts, so that an empty reduction gives eager's False and True)."""
    is_any = overload_packet(c.node.target) is aten.any
    v = c.value(c.arg(0))
    dims = _reduced_dims(v, c.arg(1, c.kwarg("dim")))
    keepdim = bool(c.arg(2, c.kwarg("keepdim", False)))
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims

    def make(its: list[Iter]) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        truth = x if v.dtype == dtypes.BOOL else E.call(dtypes.BOOL, x)
        return E.call("i64", truth if is_any else E.call("not", truth))
    count = c.b.emit(c.hint() + "_count", "i64", [v.shape[d] for d in order],
                     ["parallel"] * len(kept) + ["reduce"] * len(dims), list(range(len(kept))), "+=", make)
    if keepdim:
        for d in dims:
            count = count.unsqueeze(d)
    test = "gt" if is_any else "eq"
    return pointwise(c, [count], lambda xs: E.call(test, xs[0], E.index(0)), dtypes.BOOL)


@RULES.handles(prims.var)
def _prims_var(c: RuleContext) -> Value:
    """``sum((d - mean(d))^2) / (n - correction)`` of ``d = x - x0``, with ``x0`` the first value
    along the reduced dims: the variance is shift-invariant, and with a shift by one of the values,
    values that are all equal give exactly 0 (as eager's Welford does; the plain two-pass gives
    the rounding error of the sum: 4096 for thirteen values of -1e9)."""
    v = c.value(c.arg(0))
    dims = sorted(d % v.rank for d in c.arg(1))  # type: ignore[union-attr]
    correction = c.kwarg("correction", c.arg(2, 1))
    acc = opmath(c.out_dtype)
    if any(isinstance(v.shape[d], str) for d in dims):
        raise Unsupported("a variance over a varying length (its correction may exceed the length)")
    n = 1
    for d in dims:
        n *= v.shape[d]  # type: ignore[operator]
    order, kinds, at = _reduction_nest(v, dims, acc)
    kept = len(order) - len(dims)

    def shifted(its: list[Iter]) -> Expr:
        return E.call("sub", at(its), at(its[:kept] + [E.index(0)] * len(dims)))
    total = c.b.emit(c.hint() + "_sum", acc, [v.shape[d] for d in order], kinds, list(range(kept)), "+=", shifted)

    def sq(its: list[Iter]) -> Expr:
        mean = E.call("div", total.at(its[:kept]), literal(n, acc))
        dev = E.call("sub", shifted(its), mean)
        return E.call("mul", dev, dev)
    ss = c.b.emit(c.hint() + "_ss", acc, [v.shape[d] for d in order], kinds, list(range(kept)), "+=", sq)
    return pointwise(c, [ss], lambda xs: E.call("div", xs[0], literal(max(n - correction, 0), acc)), acc)
