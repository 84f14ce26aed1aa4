"""Index maps: copies whose elements are elements of their inputs, at computed indices.

``repeat`` reads ``x[p % n]``, ``flip`` ``x[n - 1 - p]``; ``cat``, padding and the scatters of
an in-place slice update are ``where`` over index ranges, each operand read at an index
(``(p - offset) mod size``) that stays in bounds where its branch is not taken, so that every
access remains quasi-affine.
"""

from __future__ import annotations

import math

import torch.fx as fx

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import broadcast_index, literal
from flashlight.frontend.rules.base import RuleContext, Rules, aten
from flashlight.frontend.rules.constants import as_python
from flashlight.frontend.rules.indices import as_index
from flashlight.frontend.rules.pointwise import pointwise
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value, placeholder

RULES = Rules()


@RULES.handles(aten.repeat)
def _repeat(c: RuleContext) -> Value:
    """``x.repeat(r0, ...)``: element ``p`` is ``x[p % n]`` along every repeated dimension."""
    v = c.value(c.arg(0))
    reps = list(c.arg(1))  # type: ignore[arg-type]
    off = len(reps) - v.rank
    idx: list[Expr] = []
    for a, n in enumerate(v.shape):
        p = placeholder(a + off)
        idx.append(E.index(0) if n <= 1 else (p if reps[a + off] == 1 else E.mod(p, n)))
    return v.reindex(c.out_shape, idx)


@RULES.handles(aten.repeat_interleave)
def _repeat_interleave(c: RuleContext) -> Value:
    """``repeat_interleave(x, r, dim)`` with an integer ``r``: element ``p`` is ``x[p // r]``."""
    if getattr(c.node.target, "_overloadname", "") != "self_int":
        raise Unsupported("repeat counts given as a tensor (a data-dependent shape)")
    v = c.value(c.arg(0))
    r, dim = int(c.arg(1)), c.arg(2, c.kwarg("dim"))  # type: ignore[arg-type]
    if dim is None:
        v, dim = v.reshape([math.prod(v.shape)]), 0
    dim = dim % v.rank  # type: ignore[operator]
    idx: list[Expr] = [placeholder(k) for k in range(v.rank)]
    idx[dim] = E.floordiv(placeholder(dim), r)
    return v.reindex(c.out_shape, idx)


@RULES.handles(aten.flip)
def _flip(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    dims = {d % max(v.rank, 1) for d in c.arg(1)}  # type: ignore[union-attr]
    idx = [E.sub(E.index(n - 1), placeholder(k)) if k in dims else placeholder(k) for k, n in enumerate(v.shape)]
    return v.reindex(v.shape, idx)


@RULES.handles(aten.cat, reads_empty=True)
def _cat(c: RuleContext) -> Value:
    """Concatenation along ``dim``: a ``where`` over the index ranges of the operands. Each operand
    is read at ``(p - offset) mod size``, a quasi-affine index that stays in bounds where its
    branch is not taken."""
    shape, out = c.out_shape, c.out_dtype
    rank = len(shape)
    dim = c.arg(1, c.kwarg("dim", 0)) % rank  # type: ignore[operator]
    parts: list[tuple[int, int, Value]] = []
    off = 0
    for a in c.arg(0):  # type: ignore[union-attr]
        v = c.value(a)
        if v.rank != rank or v.shape[dim] == 0:  # empty operands (legacy 1-d empties included) add nothing
            continue
        parts.append((off, v.shape[dim], v))
        off += v.shape[dim]
    if not parts:
        raise Unsupported("concatenation of empty tensors")

    def make(its: list[Iter]) -> Expr:
        p, e = its[dim], None
        for start, n, v in reversed(parts):
            idx: list[Expr] = list(its)
            local = E.sub(p, E.index(start))
            idx[dim] = local if len(parts) == 1 else E.mod(local, n)
            x = v.at(broadcast_index(idx, shape, v.shape))
            x = x if v.dtype == out else E.call(out, x)
            e = x if e is None else E.call("where", E.call("lt", p, E.index(start + n)), x, e)
        return e  # type: ignore[return-value]
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.constant_pad_nd)
def _constant_pad(c: RuleContext) -> Value:
    """``F.pad`` with a constant: ``x[p - low]`` inside, the value outside (negative pads crop)."""
    v = c.value(c.arg(0))
    pad = list(c.arg(1))  # type: ignore[arg-type]
    out = c.out_dtype
    fill = literal(as_python(c.arg(2, 0), out), out)
    lows, highs = [0] * v.rank, [0] * v.rank
    for k in range(len(pad) // 2):
        lows[v.rank - 1 - k], highs[v.rank - 1 - k] = pad[2 * k], pad[2 * k + 1]

    def make(its: list[Iter]) -> Expr:
        idx: list[Expr] = []
        conds: list[Expr] = []
        for d, n in enumerate(v.shape):
            local = E.sub(its[d], E.index(lows[d]))
            if lows[d] > 0:
                conds.append(E.call("ge", its[d], E.index(lows[d])))
            if highs[d] > 0:
                conds.append(E.call("lt", its[d], E.index(n + lows[d])))
            if (lows[d] > 0 or highs[d] > 0) and n == 0:
                raise Unsupported("padding an empty dimension")
            idx.append(E.mod(local, n) if lows[d] > 0 or highs[d] > 0 else local)
        x = v.at(idx)
        x = x if v.dtype == out else E.call(out, x)
        if not conds:
            return x
        cond = conds[0]
        for k in conds[1:]:
            cond = E.call("and", cond, k)
        return E.call("where", cond, x, fill)
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.slice_scatter)
def _slice_scatter(c: RuleContext) -> Value:
    """``base`` with ``src`` in ``base[start:end:step]`` along ``dim`` (an in-place slice update):
    a ``where`` over the slice's indices; ``src`` is read at an in-bounds index everywhere."""
    base, src = c.value(c.arg(0)), c.value(c.arg(1))
    dim = c.arg(2, c.kwarg("dim", 0)) % base.rank  # type: ignore[operator]
    start, step = c.arg(3, c.kwarg("start")), c.arg(5, c.kwarg("step", 1))
    n, size = base.shape[dim], src.shape[dim]
    start = 0 if start is None else (start + n if start < 0 else start)  # type: ignore[operator]
    start = min(max(start, 0), n)
    out = c.out_dtype

    def make(its: list[Iter]) -> Expr:
        y = base.at(its)
        y = y if base.dtype == out else E.call(out, y)
        if size == 0:
            return y
        p = its[dim]
        local = E.sub(p, E.index(start))
        idx: list[Expr] = list(its)
        idx[dim] = E.mod(local if step == 1 else E.floordiv(local, step), size)  # type: ignore[arg-type]
        x = src.at(idx)
        x = x if src.dtype == out else E.call(out, x)
        cond = E.call("and", E.call("ge", p, E.index(start)),
                      E.call("lt", p, E.index(start + (size - 1) * step + 1)))  # type: ignore[operator]
        if step != 1:
            cond = E.call("and", cond, E.call("eq", E.mod(local, step), E.index(0)))  # type: ignore[arg-type]
        return E.call("where", cond, x, y)
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.select_scatter)
def _select_scatter(c: RuleContext) -> Value:
    """``base`` with ``src`` in ``base.select(dim, index)`` (an in-place update of one slice)."""
    base, src = c.value(c.arg(0)), c.value(c.arg(1))
    dim = c.arg(2) % base.rank  # type: ignore[operator]
    i = c.arg(3)
    i = i + base.shape[dim] if i < 0 else i  # type: ignore[operator]
    out = c.out_dtype

    def make(its: list[Iter]) -> Expr:
        y, x = base.at(its), src.at(its[:dim] + its[dim + 1:])
        y = y if base.dtype == out else E.call(out, y)
        x = x if src.dtype == out else E.call(out, x)
        return E.call("where", E.call("eq", its[dim], E.index(i)), x, y)  # type: ignore[arg-type]
    return pointwise(c, [make], lambda xs: xs[0], None)


SCATTER_WIDTH = 8  # the most index entries per position along ``dim`` a scatter is unrolled over


@RULES.handles(aten.scatter)
def _scatter(c: RuleContext) -> Value:
    """``x.scatter(dim, idx, v)``, ``v`` a scalar or a tensor: position ``p`` takes the value of
    the ``e``-th entry of ``idx`` along ``dim`` where ``idx[.., e, ..] == p[dim]``, else ``x[p]``;
    a ``where`` per entry (a one-hot, the gradient of a gather, has one). Eager leaves which of
    several entries naming one position wins undefined; the last one wins here. An index smaller
    than ``x`` along another dimension, or with more than ``SCATTER_WIDTH`` entries per
    position, is not lifted."""
    if c.node.kwargs.get("reduce") is not None or len(c.node.args) > 4:
        raise Unsupported("scatter with a reduction")
    x, index = c.value(c.arg(0)), c.value(c.arg(2))
    if x.rank == 0 or index.rank != x.rank:
        raise Unsupported("scatter of a 0-d tensor")
    dim = c.arg(1) % x.rank  # type: ignore[operator]
    if any(a != b for d, (a, b) in enumerate(zip(index.shape, x.shape)) if d != dim):
        raise Unsupported("scatter with an index smaller than the tensor along another dimension")
    width = index.shape[dim]
    if not isinstance(width, int) or width > SCATTER_WIDTH:
        raise Unsupported(f"scatter of {width} entries per position (at most {SCATTER_WIDTH} are unrolled)")
    src = c.arg(3)
    src_v = c.value(src) if isinstance(src, fx.Node) else None
    out = c.out_dtype

    def make(its: list[Iter]) -> Expr:
        y = x.at(its)
        y = y if x.dtype == out else E.call(out, y)
        for e in range(width):
            at: list[Expr] = list(its)
            at[dim] = E.index(e)
            if src_v is None:
                v: Expr = literal(as_python(src, out), out)
            else:
                v = src_v.at(at)
                v = v if src_v.dtype == out else E.call(out, v)
            hit = E.call("eq", its[dim], as_index(index.at(at), index.dtype))
            y = E.call("where", hit, v, y)
        return y
    return pointwise(c, [make], lambda xs: xs[0], None)
