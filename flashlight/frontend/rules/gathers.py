"""Gathers: indirect accesses, where an index is itself an element of a tensor.

``x[idx]``, ``gather``, ``index_select`` and ``embedding`` read ``x`` at ``idx[p]``: an
*indirect* load in the IR, which the passes treat as an access they cannot see through.
Negative indices count from the end where eager's advanced indexing does, unless provably
non-negative; boolean masks (a data-dependent shape) are not lifted.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Const, Expr, Iter, Load
from flashlight.frontend.builder import broadcast_index
from flashlight.frontend.rules.base import RuleContext, Rules, aten
from flashlight.frontend.rules.indices import as_index, iterator_ranges
from flashlight.frontend.rules.pointwise import pointwise
from flashlight.frontend.torch_dtypes import opmath
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Size, Value, placeholders

RULES = Rules()


def _broadcast(shapes: list[tuple[Size, ...]]) -> tuple[Size, ...]:
    """The shape index tensors broadcast to, numbers and size parameters alike (dimensions aligned
    right; a 1 takes the other size; two different sizes, of which one may vary, are refused)."""
    rank = max(len(s) for s in shapes)
    out: list[Size] = []
    for d in range(rank):
        sizes = {s[d - rank + len(s)] for s in shapes if d - rank + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise Unsupported(f"index shapes {shapes} do not broadcast to one known shape")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


@RULES.handles(aten.index, aten._unsafe_index)
def _index(c: RuleContext) -> Value:
    """Advanced indexing ``x[..., idx, ...]`` with integer index tensors: ``x[.., idx[b], ..]``.

    The index tensors broadcast to one shape B, which replaces the indexed dimensions where they
    are adjacent and comes first otherwise (numpy's rule). Boolean masks (a data-dependent shape)
    are not lifted."""
    x = c.value(c.arg(0))
    given = list(c.arg(1))  # type: ignore[arg-type]
    if len(given) > x.rank:
        raise Unsupported("more indices than dimensions")
    given += [None] * (x.rank - len(given))
    vals: dict[int, Value] = {}
    for d, a in enumerate(given):
        if a is None:
            continue
        if not isinstance(a, fx.Node) or a.meta["val"].dtype in (torch.bool, torch.uint8):
            raise Unsupported("boolean mask indexing (a data-dependent shape)")
        vals[d] = c.value(a)
    if not vals:
        raise Unsupported("indexing without index tensors")
    bshape = _broadcast([v.shape for v in vals.values()])
    dims = sorted(vals)
    rest = [d for d in range(x.rank) if d not in vals]
    batch = [("b", k) for k in range(len(bshape))]
    if dims == list(range(dims[0], dims[-1] + 1)):
        layout = [("x", d) for d in rest if d < dims[0]] + batch + [("x", d) for d in rest if d > dims[-1]]
    else:
        layout = batch + [("x", d) for d in rest]
    shape, out = c.out_shape, c.out_dtype
    if len(layout) != len(shape):
        raise Unsupported(f"unexpected result shape {list(shape)}")

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = [E.index(0)] * x.rank
        b_its: list[Expr] = [E.index(0)] * len(bshape)
        for it, (kind, k) in zip(its, layout):
            if kind == "x":
                src[k] = it
            else:
                b_its[k] = it
        for d, v in vals.items():
            e = v.at(broadcast_index(b_its, bshape, v.shape))
            src[d] = as_index(e, v.dtype, x.shape[d], iterator_ranges(its, shape))
        r = x.at(src)
        return r if x.dtype == out else E.call(out, r)
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.gather)
def _gather(c: RuleContext) -> Value:
    """``gather(x, dim, idx)``: ``x[.., idx[p], ..]`` with ``idx[p]`` in dimension ``dim``
    (negative indices are an error in eager, so they are not wrapped)."""
    x, index = c.value(c.arg(0)), c.value(c.arg(2))
    if x.rank == 0 or index.rank != x.rank:
        raise Unsupported("gather of a 0-d tensor")
    dim = c.arg(1) % x.rank  # type: ignore[operator]

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = list(its)
        src[dim] = as_index(index.at(its), index.dtype)
        return x.at(src)
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.index_select)
def _index_select(c: RuleContext) -> Value:
    """``index_select(x, dim, idx)``: ``x[.., idx[p], ..]`` for a 1-d ``idx``."""
    x, index = c.value(c.arg(0)), c.value(c.arg(2))
    if index.rank > 1 or x.rank == 0:
        raise Unsupported("index_select with a multi-dimensional index or a 0-d source")
    dim = c.arg(1) % x.rank  # type: ignore[operator]

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = list(its)
        src[dim] = as_index(index.at([its[dim]] if index.rank else []), index.dtype)
        return x.at(src)
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.embedding)
def _embedding(c: RuleContext) -> Value:
    """``embedding(weight, idx)``: row ``idx[p]`` of ``weight``."""
    w, index = c.value(c.arg(0)), c.value(c.arg(1))
    if w.rank != 2:
        raise Unsupported("embedding with a weight that is not a matrix")

    def make(its: list[Iter]) -> Expr:
        return w.at([as_index(index.at(its[:-1]), index.dtype), its[-1]])
    return pointwise(c, [make], lambda xs: xs[0], None)


@RULES.handles(aten.index_put, aten._unsafe_index_put)
def _index_put(c: RuleContext) -> Value:
    """``index_put(x, [.., idx.., ..], v, accumulate=True)``, the gradient of a gather (an
    embedding's, a bias table's): ``x`` copied, then ``v`` folded into it at the indices the index
    tensors hold, a *scatter* statement (its target reads memory; the code generator adds with
    atomics), in the accumulator dtype; a point whose index is out of range (eager raises) adds 0
    to element 0 instead of writing outside the tensor. Without ``accumulate`` (which of several writes to one
    element wins is undefined), with boolean masks or index tensors that are not adjacent, it is
    not lifted."""
    x, values = c.value(c.arg(0)), c.value(c.arg(2))
    if not bool(c.arg(3, c.kwarg("accumulate", False))):
        raise Unsupported("index_put without accumulate")
    given = [(d, n) for d, n in enumerate(c.arg(1)) if n is not None]  # type: ignore[arg-type]
    dims = [d for d, _ in given]
    if not given or dims != list(range(dims[0], dims[0] + len(dims))):
        raise Unsupported("index_put with index tensors that are not adjacent")
    index = [c.value(n) for _, n in given]
    if any(iv.dtype == "b1" for iv in index):
        raise Unsupported("index_put with a boolean mask (a data-dependent shape)")
    if any(not isinstance(d, int) for iv in index for d in iv.shape) or any(not isinstance(d, int) for d in x.shape):
        raise Unsupported("index_put over sizes that vary")
    shape_b = tuple(torch.broadcast_shapes(*[tuple(iv.shape) for iv in index]))
    p, k = dims[0], len(dims)
    pre, post = list(x.shape[:p]), list(x.shape[p + k:])
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else out
    hint = c.hint() + "_acc" if acc != out else c.hint()
    if isinstance(x.expr, Const) and x.expr.value == 0:  # zeros (autograd's): the sum's own start
        tensor = c.b.add_tensor(hint, acc, x.shape, "temp")
        base = Value(Load(tensor, placeholders(x.rank)), tuple(x.shape), acc)
    else:
        base = c.b.emit(hint, acc, x.shape, ["parallel"] * x.rank, list(range(x.rank)), "=",
                        lambda its: _as(x.at(its), x.dtype, acc))
        assert isinstance(base.expr, Load)
        tensor = base.expr.tensor
    extents = pre + list(shape_b) + post
    vshape = tuple(extents)

    def raw(its: list[Iter]) -> list[Expr]:
        q = its[p:p + len(shape_b)]
        return [as_index(iv.at(broadcast_index(q, shape_b, iv.shape)), iv.dtype, wrap_size=x.shape[p + t])  # type: ignore[arg-type]
                for t, iv in enumerate(index)]

    def inside(its: list[Iter]) -> Expr:
        # eager raises on an index out of range; a write there would land in another tensor's
        # memory, so such a point adds 0 to element 0 instead
        conds = [E.call("and", E.call("ge", a, E.index(0)), E.call("lt", a, E.index(x.shape[p + t])))  # type: ignore[arg-type]
                 for t, a in enumerate(raw(its))]
        out_cond = conds[0]
        for cond in conds[1:]:
            out_cond = E.call("and", out_cond, cond)
        return out_cond

    def target(its: list[Iter]) -> list[Expr]:
        ok = inside(its)
        at = [E.call("where", ok, a, E.index(0)) for a in raw(its)]
        return list(its[:p]) + at + list(its[p + len(shape_b):])

    def make(its: list[Iter]) -> Expr:
        v = _as(values.at(broadcast_index(its, vshape, values.shape)), values.dtype, acc)
        return E.call("where", inside(its), v, E.const(0, acc) if not dtypes.is_float(acc) else E.const(0.0, acc))

    kinds = ["parallel"] * p + ["reduce"] * len(shape_b) + ["parallel"] * len(post)
    c.b.emit_scatter(tensor, extents, kinds, target, "+=", make)
    if acc != out:
        return pointwise(c, [base], lambda xs: E.call(out, xs[0]), None)
    return base


def _as(e: Expr, dtype: str, want: str) -> Expr:
    return e if dtype == want else E.call(want, e)
