"""Views: rules that make index expressions only, never a statement.

A view of a value changes how its elements are indexed (:class:`~flashlight.frontend.values.Value`
reindexes): ``transpose`` swaps index expressions, ``view`` splits or merges them with floor
division and modulo, ``diagonal``, ``unfold`` and ``as_strided`` make affine combinations of them.
Every rule here is marked ``view``: a run of views alone is not worth a program.
"""

from __future__ import annotations

import math

import torch.fx as fx

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr
from flashlight.frontend.rules.base import RuleContext, Rules, aten, prims
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value, placeholder

RULES = Rules()


@RULES.handles(aten.view, aten._unsafe_view, aten.reshape, view=True)
def _view(c: RuleContext) -> Value:
    return c.value(c.arg(0)).reshape(c.out_shape)


@RULES.handles(aten.permute, view=True)
def _permute(c: RuleContext) -> Value:
    return c.value(c.arg(0)).permute(c.arg(1))  # type: ignore[arg-type]


@RULES.handles(aten.transpose, view=True)
def _transpose(c: RuleContext) -> Value:
    return c.value(c.arg(0)).transpose(c.arg(1), c.arg(2))  # type: ignore[arg-type]


@RULES.handles(aten.t, view=True)
def _t(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    return v.transpose(0, 1) if v.rank == 2 else v


@RULES.handles(aten.expand, view=True)
def _expand(c: RuleContext) -> Value:
    return c.value(c.arg(0)).expand(c.out_shape)


@RULES.handles(aten.unsqueeze, view=True)
def _unsqueeze(c: RuleContext) -> Value:
    return c.value(c.arg(0)).unsqueeze(c.arg(1))  # type: ignore[arg-type]


@RULES.handles(aten.squeeze, view=True)
def _squeeze(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    dims = c.arg(1)
    if dims is None:
        return v.squeeze()
    return v.squeeze([dims] if isinstance(dims, int) else list(dims))  # type: ignore[arg-type]


@RULES.handles(aten.slice, view=True)
def _slice(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    dim, start, end, step = c.arg(1, 0), c.arg(2), c.arg(3), c.arg(4, 1)
    if end is not None and end > 2**62:  # type: ignore[operator]
        end = None
    return v.slice(dim, start, end, step)  # type: ignore[arg-type]


@RULES.handles(aten.select, view=True)
def _select(c: RuleContext) -> Value:
    return c.value(c.arg(0)).select(c.arg(1), c.arg(2))  # type: ignore[arg-type]


@RULES.handles(aten.alias, aten.clone, aten.detach, aten.lift_fresh_copy, view=True)
def _identity(c: RuleContext) -> Value:
    return c.value(c.arg(0))


@RULES.handles(prims.broadcast_in_dim, view=True)
def _broadcast_in_dim(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    shape, dims = list(c.arg(1)), list(c.arg(2))  # type: ignore[arg-type]
    idx: list[Expr] = []
    for a, d in enumerate(dims):
        idx.append(E.index(0) if v.shape[a] == 1 and shape[d] != 1 else placeholder(d))
    return v.reindex(shape, idx)


@RULES.handles(aten.diagonal, view=True)
def _diagonal(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    off = c.arg(1, c.kwarg("offset", 0))
    d1, d2 = c.arg(2, c.kwarg("dim1", 0)) % v.rank, c.arg(3, c.kwarg("dim2", 1)) % v.rank  # type: ignore[operator]
    rest = [d for d in range(v.rank) if d not in (d1, d2)]
    idx: list[Expr] = [E.index(0)] * v.rank
    for k, d in enumerate(rest):
        idx[d] = placeholder(k)
    p = placeholder(len(rest))
    idx[d1] = E.add(p, E.index(max(-off, 0)))  # type: ignore[operator]
    idx[d2] = E.add(p, E.index(max(off, 0)))  # type: ignore[call-overload]
    return v.reindex(c.out_shape, idx)


@RULES.handles(aten.unfold, view=True)
def _unfold(c: RuleContext) -> Value:
    """``x.unfold(dim, size, step)``: windows along ``dim`` in a new last dimension,
    element ``[.., w, .., k]`` is ``x[.., step * w + k, ..]``."""
    v = c.value(c.arg(0))
    dim, step = c.arg(1) % max(v.rank, 1), c.arg(3)  # type: ignore[operator]
    if v.rank == 0:
        raise Unsupported("unfold of a 0-d tensor")
    idx: list[Expr] = [placeholder(k) for k in range(v.rank)]
    idx[dim] = E.add(E.mul(E.index(step), placeholder(dim)), placeholder(v.rank))  # type: ignore[arg-type]
    return v.reindex(c.out_shape, idx)


@RULES.handles(aten.as_strided, view=True)
def _as_strided(c: RuleContext) -> Value:
    """A strided view of a contiguous tensor that starts its storage: element ``p`` is element
    ``offset + sum(p * stride)`` of the flattened tensor. Other sources are refused: their
    storage is not what the value's indices describe."""
    src = c.node.args[0]
    assert isinstance(src, fx.Node)
    val = src.meta["val"]
    size, stride = list(c.arg(1)), list(c.arg(2))  # type: ignore[arg-type]
    offset = c.arg(3, c.kwarg("storage_offset"))
    offset = val.storage_offset() if offset is None else offset
    if not val.is_contiguous() or val.storage_offset() != 0:
        raise Unsupported("as_strided of a tensor that does not start a contiguous storage")
    numel = val.numel()
    last = offset + sum((n - 1) * st for n, st in zip(size, stride) if n > 0)
    if any(st < 0 for st in stride) or (math.prod(size) > 0 and last >= numel):
        raise Unsupported("as_strided reaching beyond its source")
    flat = c.value(src).reshape([numel])
    linear: Expr = E.index(offset)
    for k, st in enumerate(stride):
        linear = E.add(linear, E.mul(E.index(st), placeholder(k)))
    return flat.reindex(size, [linear])
