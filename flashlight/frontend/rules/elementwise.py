"""Elementwise operators: one pointwise statement each, computed as eager computes them.

An operator computes in eager's opmath type (``f32`` for 16-bit floats) and rounds to the
result's dtype; a comparison computes in its operands' promoted type. Arithmetic on booleans is
logic (``True + True`` is ``True``). Operators without a one-to-one IR operator are stated in IR
operators: ``gelu`` with ``erf`` or ``tanh``, truncating division with ``floordiv`` and a fixup,
``pow`` by a small literal as products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.frontend.builder import literal
from flashlight.frontend.rules.base import RuleContext, Rules, aten, overload_packet, prims
from flashlight.frontend.rules.indices import iterator_ranges, nonnegative
from flashlight.frontend.rules.pointwise import operand, pointwise
from flashlight.frontend.torch_dtypes import IR_TO_TORCH, ir_dtype, opmath
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value

RULES = Rules()

# IR operators without an integer form; the logical operator an arithmetic one is on booleans
_FLOAT_ONLY = {"div", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid",
               "erf", "sin", "cos", "reciprocal", "atan2", "pow"}
_BOOL_ARITH = {"mul": "and", "max": "or", "min": "and", "add": "or"}


def _promoted(c: RuleContext, args: Sequence[object]) -> str:
    """The common dtype of (at most two) operands, by torch's promotion rules."""
    vals = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
    if len(vals) == 1:
        v = vals[0]
        return ir_dtype(v.dtype if isinstance(v, torch.Tensor) else torch.tensor(v).dtype)
    return ir_dtype(torch.result_type(vals[0], vals[1]))


def _rounded(a: object, promoted: str) -> object:
    """A Python real compared with a tensor is first converted to the comparison's dtype, as
    eager's comparison kernels (CPU and CUDA) take it: ``fp16(x) != 1e-3`` compares with
    ``fp16(1e-3)``, not with 1e-3 (fuzz seed 7480580)."""
    if isinstance(a, float) and dtypes.is_float(promoted):
        return torch.tensor(a, dtype=IR_TO_TORCH[promoted]).item()
    return a


def elementwise(op: str, arity: int) -> Callable[[RuleContext], Value]:
    """The rule of an operator that is the IR operator ``op`` of its first ``arity`` arguments."""
    def handler(c: RuleContext) -> Value:
        args = list(c.node.args[:arity])
        if op in E.COMPARISONS:
            promoted = _promoted(c, args)
            compute = opmath(promoted)
            fn = lambda xs: E.call(op, *xs)  # noqa: E731
            rounded = [_rounded(a, promoted) for a in args]
            return pointwise(c, [operand(c, a, compute, c.out_shape) for a in rounded], fn, None)
        compute = opmath(c.out_dtype)
        name = op
        if compute == dtypes.BOOL:  # arithmetic on booleans is logic (True + True is True)
            name = _BOOL_ARITH.get(op, op)
            if name not in E.LOGICAL:
                raise Unsupported(f"{op} of booleans")
        if name in _FLOAT_ONLY and not dtypes.is_float(compute):
            raise Unsupported(f"{op} of integers")
        fn = lambda xs: E.call(name, *xs)  # noqa: E731
        return pointwise(c, [operand(c, a, compute, c.out_shape) for a in args], fn, compute)
    return handler


# aten operator, IR operator, arity
SIMPLE_OPS = [
    (aten.mul, "mul", 2), (aten.neg, "neg", 1), (aten.exp, "exp", 1), (aten.exp2, "exp2", 1),
    (aten.expm1, "expm1", 1), (aten.log, "log", 1), (aten.log2, "log2", 1), (aten.log1p, "log1p", 1),
    (aten.sqrt, "sqrt", 1), (aten.rsqrt, "rsqrt", 1), (aten.tanh, "tanh", 1), (aten.sigmoid, "sigmoid", 1),
    (aten.erf, "erf", 1), (aten.abs, "abs", 1), (aten.sin, "sin", 1), (aten.cos, "cos", 1),
    (aten.floor, "floor", 1), (aten.ceil, "ceil", 1), (aten.reciprocal, "reciprocal", 1),
    (aten.maximum, "max", 2), (aten.minimum, "min", 2), (aten.atan2, "atan2", 2),
    (aten.remainder, "mod", 2),
    (aten.lt, "lt", 2), (aten.le, "le", 2), (aten.gt, "gt", 2), (aten.ge, "ge", 2), (aten.eq, "eq", 2),
    (aten.ne, "ne", 2),
]
for _aten_op, _ir_op, _arity in SIMPLE_OPS:
    RULES.handles(_aten_op)(elementwise(_ir_op, _arity))


_LOGICAL = {aten.logical_and: "and", aten.logical_or: "or", aten.logical_not: "not", aten.logical_xor: "ne",
            aten.bitwise_and: "and", aten.bitwise_or: "or", aten.bitwise_not: "not", aten.bitwise_xor: "ne"}


@RULES.handles(*_LOGICAL)
def _logical(c: RuleContext) -> Value:
    """Logical operators read their operands as truth values (``x != 0``); the bitwise ones are
    the same operators on booleans (the IR has no bitwise integer operators)."""
    packet = overload_packet(c.node.target)
    op = _LOGICAL[packet]
    if packet in (aten.bitwise_and, aten.bitwise_or, aten.bitwise_not, aten.bitwise_xor) \
            and c.out_dtype != dtypes.BOOL:
        raise Unsupported("bitwise operations on integers")
    args = list(c.node.args[:1 if op == "not" else 2])
    ops = [operand(c, a, dtypes.BOOL, c.out_shape) for a in args]
    return pointwise(c, ops, lambda xs: E.call(op, *xs), dtypes.BOOL)


@RULES.handles(aten.pow)
def _pow(c: RuleContext) -> Value:
    """Literal exponents 0, ±0.5 and small integers are a constant, square roots and products, as
    eager computes them; a power of the literal 2 is ``exp2``; other powers stay ``pow``."""
    base, ex = c.node.args[:2]
    compute = opmath(c.out_dtype)
    if isinstance(ex, (int, float)) and not isinstance(ex, bool) and isinstance(base, fx.Node):
        get = operand(c, base, compute, c.out_shape)
        integral = float(ex).is_integer()
        if not dtypes.is_float(compute) and not (integral and 0 <= ex <= 4):
            raise Unsupported(f"integer power {ex}")

        def power(xs: list[Expr]) -> Expr:
            x = xs[0]
            if ex == 0:
                return literal(1, compute)
            if ex == 0.5:
                return E.call("sqrt", x)
            if ex == -0.5:
                return E.call("rsqrt", x)
            if integral and 1 <= abs(ex) <= 4:
                r = x
                for _ in range(int(abs(ex)) - 1):
                    r = E.call("mul", r, x)
                return r if ex > 0 else E.call("div", literal(1, compute), r)
            return E.call("pow", x, literal(ex, compute))
        return pointwise(c, [get], power, compute)
    if isinstance(base, (int, float)) and not isinstance(base, bool) and base == 2 and dtypes.is_float(compute):
        return pointwise(c, [operand(c, ex, compute, c.out_shape)], lambda xs: E.call("exp2", xs[0]), compute)
    return elementwise("pow", 2)(c)


@RULES.handles(aten.round)
def _round(c: RuleContext) -> Value:
    if c.kwarg("decimals", 0):
        raise Unsupported("round with decimals")
    return elementwise("round", 1)(c)


@RULES.handles(aten.add, aten.sub, aten.rsub)
def _add_sub(c: RuleContext) -> Value:
    a, b = c.node.args[:2]
    alpha = c.kwarg("alpha", 1)
    packet = overload_packet(c.node.target)
    if packet is aten.rsub:
        a, b = b, a
    op = "add" if packet is aten.add else "sub"
    compute = opmath(c.out_dtype)
    ga, gb = operand(c, a, compute, c.out_shape), operand(c, b, compute, c.out_shape)

    if compute == dtypes.BOOL:  # True + True is True
        if op != "add" or alpha != 1:
            raise Unsupported("subtraction or scaled addition of booleans")
        op = "or"

    def fn(xs: list[Expr]) -> Expr:
        rhs = xs[1] if alpha == 1 else E.call("mul", literal(alpha, compute), xs[1])  # type: ignore[arg-type]
        return E.call(op, xs[0], rhs)
    return pointwise(c, [ga, gb], fn, compute)


@RULES.handles(aten.div, aten.true_divide)  # true_divide: what a division by a size (a SymFloat) leaves
def _div(c: RuleContext) -> Value:
    mode = c.kwarg("rounding_mode")
    a, b = c.node.args[:2]
    compute = opmath(c.out_dtype)
    ops = [operand(c, a, compute, c.out_shape), operand(c, b, compute, c.out_shape)]
    if mode is None:
        return pointwise(c, ops, lambda xs: E.call("div", *xs), compute)
    if mode == "floor":
        if dtypes.is_float(compute):
            return pointwise(c, ops, lambda xs: E.call("floor", E.call("div", *xs)), compute)
        return pointwise(c, ops, lambda xs: E.call("floordiv", *xs), compute)
    if mode == "trunc":
        if dtypes.is_float(compute):
            return pointwise(c, ops, lambda xs: _trunc(E.call("div", *xs), compute), compute)
        return pointwise(c, ops, lambda xs: _trunc_div(xs[0], xs[1], compute), compute)
    raise Unsupported(f"division with rounding_mode={mode!r}")


def _trunc(x: Expr, dtype: str) -> Expr:
    """Rounding of a real towards zero: ``ceil`` below zero, ``floor`` elsewhere (NaN stays NaN)."""
    return E.call("where", E.call("lt", x, literal(0, dtype)), E.call("ceil", x), E.call("floor", x))


def _trunc_div(a: Expr, b: Expr, dtype: str) -> Expr:
    """C division of integers: the floor quotient, plus one where a negative quotient was inexact."""
    zero = literal(0, dtype)
    q = E.call("floordiv", a, b)
    inexact = E.call("ne", E.call("mul", q, b), a)
    negative = E.call("ne", E.call("lt", a, zero), E.call("lt", b, zero))
    return E.call("where", E.call("and", inexact, negative), E.call("add", q, literal(1, dtype)), q)


@RULES.handles(aten.where)
def _where(c: RuleContext) -> Value:
    cond, a, b = c.node.args[:3]
    out = c.out_dtype
    ops = [operand(c, cond, dtypes.BOOL, c.out_shape), operand(c, a, out, c.out_shape),
           operand(c, b, out, c.out_shape)]
    return pointwise(c, ops, lambda xs: E.call("where", *xs), None)


@RULES.handles(aten.masked_fill)
def _masked_fill(c: RuleContext) -> Value:
    x, mask, fill = c.node.args[:3]
    out = c.out_dtype
    ops = [operand(c, mask, dtypes.BOOL, c.out_shape), operand(c, fill, out, c.out_shape),
           operand(c, x, out, c.out_shape)]
    return pointwise(c, ops, lambda xs: E.call("where", *xs), None)


@RULES.handles(aten.clamp, aten.clamp_min, aten.clamp_max)
def _clamp(c: RuleContext) -> Value:
    packet = overload_packet(c.node.target)
    x = c.node.args[0]
    lo = c.arg(1) if packet is not aten.clamp_max else None
    hi = c.arg(2) if packet is aten.clamp else (c.arg(1) if packet is aten.clamp_max else None)
    lo, hi = c.kwarg("min", lo), c.kwarg("max", hi)
    compute = opmath(c.out_dtype)
    ops = [operand(c, x, compute, c.out_shape)]
    for bound in (lo, hi):
        if bound is not None:
            ops.append(operand(c, bound, compute, c.out_shape))

    def fn(xs: list[Expr]) -> Expr:
        r, k = xs[0], 1
        if lo is not None:
            r, k = E.call("max", r, xs[k]), k + 1
        if hi is not None:
            r = E.call("min", r, xs[k])
        return r
    return pointwise(c, ops, fn, compute)


@RULES.handles(aten.relu)
def _relu(c: RuleContext) -> Value:
    compute = opmath(c.out_dtype)
    return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)],
                     lambda xs: E.call("max", xs[0], literal(0, compute)), compute)


@RULES.handles(aten.isnan, aten.isinf)
def _isnan(c: RuleContext) -> Value:
    op = "isnan" if overload_packet(c.node.target) is aten.isnan else "isinf"
    src = c.node.args[0]
    compute = opmath(ir_dtype(src.meta["val"].dtype))  # type: ignore[union-attr]
    return pointwise(c, [operand(c, src, compute, c.out_shape)], lambda xs: E.call(op, xs[0]), dtypes.BOOL)


@RULES.handles(aten.silu)
def _silu(c: RuleContext) -> Value:
    compute = opmath(c.out_dtype)
    return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)],
                     lambda xs: E.call("mul", xs[0], E.call("sigmoid", xs[0])), compute)


@RULES.handles(aten.gelu)
def _gelu(c: RuleContext) -> Value:
    """``x/2 (1 + erf(x/√2))``, or with ``approximate='tanh'`` eager's
    ``x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))``."""
    approximate = c.kwarg("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"gelu with approximate={approximate!r}")
    compute = opmath(c.out_dtype)
    half, one = literal(0.5, compute), literal(1, compute)

    def fn(xs: list[Expr]) -> Expr:
        x = xs[0]
        if approximate == "tanh":
            cube = E.call("mul", E.call("mul", x, x), x)
            inner = E.call("add", x, E.call("mul", literal(0.044715, compute), cube))
            t = E.call("tanh", E.call("mul", literal(math.sqrt(2 / math.pi), compute), inner))
            return E.call("mul", E.call("mul", half, x), E.call("add", one, t))
        erf = E.call("erf", E.call("mul", x, literal(1 / math.sqrt(2), compute)))
        return E.call("mul", E.call("mul", x, half), E.call("add", one, erf))
    return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)], fn, compute)


@RULES.handles(aten.sign, aten.sgn)
def _sign(c: RuleContext) -> Value:
    """-1, 0 or 1 (0 for NaN and -0.0, as eager); booleans are their own sign."""
    dt = c.out_dtype
    if dt == dtypes.BOOL:
        return pointwise(c, [operand(c, c.arg(0), dt, c.out_shape)], lambda xs: xs[0], None)
    compute = opmath(dt)

    def fn(xs: list[Expr]) -> Expr:
        x, zero = xs[0], literal(0, compute)
        return E.call("where", E.call("gt", x, zero), literal(1, compute),
                      E.call("where", E.call("lt", x, zero), literal(-1, compute), zero))
    return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)], fn, compute)


@RULES.handles(aten.trunc, aten.fix)
def _trunc_op(c: RuleContext) -> Value:
    compute = opmath(c.out_dtype)
    if not dtypes.is_float(compute):
        return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)], lambda xs: xs[0], compute)
    return pointwise(c, [operand(c, c.arg(0), compute, c.out_shape)], lambda xs: _trunc(xs[0], compute), compute)


@RULES.handles(aten.fmod)
def _fmod(c: RuleContext) -> Value:
    """C remainder (the sign of the dividend) of integers: the floor remainder ``mod``, minus the
    divisor where the signs differ and it is not zero; exactly ``mod`` when the dividend is
    provably non-negative and the divisor a positive literal."""
    compute = opmath(c.out_dtype)
    if not dtypes.is_int(compute):
        raise Unsupported("fmod of reals (the IR has no exact real remainder)")
    a, b = c.node.args[:2]
    ga, gb = operand(c, a, compute, c.out_shape), operand(c, b, compute, c.out_shape)

    def make(its: list[Iter]) -> Expr:
        x, y = ga(its), gb(its)
        r = E.call("mod", x, y)
        if isinstance(y, E.Const) and y.value > 0 and nonnegative(x, iterator_ranges(its, c.out_shape)):
            return r
        zero = literal(0, compute)
        fix = E.call("and", E.call("ne", r, zero), E.call("ne", E.call("lt", x, zero), E.call("lt", y, zero)))
        return E.call("where", fix, E.call("sub", r, y), r)
    return pointwise(c, [make], lambda xs: xs[0], compute)


@RULES.handles(aten.copy)
def _copy(c: RuleContext) -> Value:
    """``copy(dst, src)``: ``src`` broadcast to the shape and cast to the dtype of ``dst``."""
    out = c.out_dtype
    return pointwise(c, [operand(c, c.arg(1), out, c.out_shape)], lambda xs: xs[0], None)


@RULES.handles(aten._to_copy, prims.convert_element_type, view=False)
def _to_copy(c: RuleContext) -> Value:
    v = c.value(c.arg(0))
    src = c.node.args[0]
    assert isinstance(src, fx.Node)
    if c.node.meta["val"].device != src.meta["val"].device:
        raise Unsupported("it moves data between devices")
    if v.dtype == c.out_dtype:
        return v
    return pointwise(c, [v], lambda xs: E.call(c.out_dtype, xs[0]), compute=None)


@RULES.handles(prims.div)
def _prims_div(c: RuleContext) -> Value:
    if not dtypes.is_float(c.out_dtype):
        raise Unsupported("truncating integer division")
    return _div(c)
