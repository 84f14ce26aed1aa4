"""Constants: tensors of one value (``full``, ``zeros_like``, ...) and ranges (``arange``, ``iota``).

None of them reads a tensor (except ``fill`` with a 0-d tensor), so they make no statement: a
constant is a literal and ``arange`` an iterator, recomputed where they are used. A mask built
from ``arange``s and comparisons thus reaches its consumer as a condition on iterators.
"""

from __future__ import annotations

import math

import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import literal
from flashlight.frontend.rules.base import RuleContext, Rules, aten, overload_packet, prims
from flashlight.frontend.rules.pointwise import operand, pointwise
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value

RULES = Rules()


@RULES.handles(aten.full, aten.scalar_tensor)
def _full(c: RuleContext) -> Value:
    fill = c.arg(1) if overload_packet(c.node.target) is aten.full else c.arg(0)
    dt = c.out_dtype
    return pointwise(c, [], lambda xs: literal(as_python(fill, dt), dt), compute=None)


@RULES.handles(aten.arange)
def _arange(c: RuleContext) -> Value:
    args = [c.arg(k) for k in range(len(c.node.args))]
    if len(args) == 1:
        start, end, step = 0, args[0], 1
    else:
        start, end, step = args[0], args[1], (args[2] if len(args) > 2 else 1)
    dt = c.out_dtype
    if isinstance(end, str):
        end = 0  # a varying length: the values do not depend on it, the shape says how many
    if not all(isinstance(x, int) for x in (start, end, step)):
        if not dtypes.is_float(dt):
            raise Unsupported("non-integer arange bounds")

        def real(xs: list[Iter]) -> Expr:
            pos = E.call("add", E.call("mul", E.call("f64", xs[0]), E.const(step, "f64")), E.const(start, "f64"))
            return E.call(dt, pos) if dt != "f64" else pos
        return pointwise(c, [lambda its: its[0]], real, compute=None)

    def integer(xs: list[Iter]) -> Expr:
        pos = E.add(E.mul(E.index(step), xs[0]), E.index(start))  # type: ignore[arg-type]
        return pos if dt == "i64" else E.call(dt, pos)
    return pointwise(c, [lambda its: its[0]], integer, compute=None)


def as_python(x: object, dtype: str) -> float | int | bool:
    """A fill value as the Python number of a literal of ``dtype``, converted as eager converts it."""
    if isinstance(x, (bool, int, float)):
        if dtypes.is_float(dtype):
            return float(x)
        if dtype == dtypes.BOOL:
            return bool(x)
        if isinstance(x, float) and not math.isfinite(x):
            raise Unsupported(f"fill value {x} for an integer tensor")
        return int(x)  # a real truncates, as eager's cast does
    raise Unsupported(f"fill value {x!r} is not a Python number")


# constants shaped like other tensors: the argument that holds the value, or the value
_FILLS = {aten.full_like: 1, aten.new_full: 2, aten.fill: 1}
_ZEROS = {aten.zeros_like, aten.new_zeros, aten.zeros, aten.empty_like, aten.empty, aten.empty_strided,
          aten.empty_permuted, aten.new_empty, aten.new_empty_strided}
_ONES = {aten.ones_like, aten.new_ones, aten.ones}


@RULES.handles(*_FILLS, *_ZEROS, *_ONES)
def _fill(c: RuleContext) -> Value:
    """A tensor of one value, shaped by the node. ``empty`` tensors are zeros (their contents are
    unspecified, so any value is what eager gives)."""
    packet, dt = overload_packet(c.node.target), c.out_dtype
    value = 0 if packet in _ZEROS else 1 if packet in _ONES else c.arg(_FILLS[packet])
    if isinstance(value, fx.Node):  # fill with a 0-d tensor
        return pointwise(c, [operand(c, value, dt, c.out_shape)], lambda xs: xs[0], None)
    return pointwise(c, [], lambda xs: literal(as_python(value, dt), dt), compute=None)


@RULES.handles(prims.iota)
def _iota(c: RuleContext) -> Value:
    start, step, dt = c.kwarg("start", 0), c.kwarg("step", 1), c.out_dtype
    if dt not in dtypes.SIGNED:
        raise Unsupported(f"iota of {dt}")

    def integer(its: list[Iter]) -> Expr:
        pos = E.add(E.mul(E.index(step), its[0]), E.index(start))  # type: ignore[arg-type]
        return pos if dt == "i64" else E.call(dt, pos)
    return pointwise(c, [integer], lambda xs: xs[0], None)
