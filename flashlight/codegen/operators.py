"""Triton's spelling of the IR's dtypes, constants and pointwise operators.

Pure functions of code strings: the caller has already broadcast the operands. Where the CUDA
target calls libdevice, the interpreter (which has none) gets an exact formula of ``tl``
operations instead.
"""

from __future__ import annotations

import math

from flashlight.codegen.kernel_source import CodegenError
from flashlight.ir import dtypes
from flashlight.ir.expr import Const

TL_DTYPE = {
    "f64": "tl.float64", "f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16",
    "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
    "b1": "tl.int1",
}
LOG2E = 1.4426950408889634

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
          "ge": ">=", "eq": "==", "ne": "!=", "and": "&", "or": "|"}
_UNARY = {"exp": "tl.exp", "exp2": "tl.exp2", "log": "tl.log", "log2": "tl.log2", "sqrt": "tl.sqrt_rn",
          "rsqrt": "tl.rsqrt", "sigmoid": "tl.sigmoid", "erf": "tl.erf", "abs": "tl.abs",
          "sin": "tl.sin", "cos": "tl.cos", "floor": "tl.floor", "ceil": "tl.ceil"}
# operators the CUDA target takes from libdevice (by its name there); the interpreter spells them
# in tl operations
LIBDEVICE = {"tanh": "tanh", "pow": "pow", "atan2": "atan2", "expm1": "expm1", "log1p": "log1p",
             "round": "rint"}


def literal(c: Const) -> str:
    """A constant as a Python literal (NaN and infinities as ``float(...)``)."""
    v = c.value
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else 'float("-inf")'
        return repr(v)
    return str(v)


def pointwise(op: str, xs: list[str], dts: list[str], target: str) -> str:
    """The code of ``op`` applied to the operand codes ``xs`` of dtypes ``dts``."""
    a = xs[0]
    b = xs[1] if len(xs) > 1 else None
    if op in _INFIX:
        if op == "div" and not dtypes.is_float(dts[0]):
            raise CodegenError("integer true division")
        return f"({a} {_INFIX[op]} {b})"
    if op == "floordiv":
        if dtypes.is_float(dts[0]):
            return f"tl.floor({a} / {b})"
        return f"(({a} - (({a} % {b}) + {b}) % {b}) // {b})"
    if op == "mod":
        return f"((({a} % {b}) + {b}) % {b})"
    if op == "neg":
        return f"(-{a})"
    if op == "not":
        return f"({a} == 0)"
    if op == "sqrt" and dts[0] == "f64":
        return f"tl.sqrt({a})"  # sqrt_rn is float32 only; a float64 sqrt is correctly rounded
    if op in _UNARY:
        return f"{_UNARY[op]}({a})"
    if op == "reciprocal":
        return f"(1.0 / {a})"
    if op in ("max", "min"):
        fn = "tl.maximum" if op == "max" else "tl.minimum"
        if dtypes.is_float(dts[0]):
            return f"{fn}({a}, {b}, propagate_nan=tl.PropagateNan.ALL)"
        return f"{fn}({a}, {b})"
    if op == "where":
        return f"tl.where({a}, {b}, {xs[2]})"
    if op == "fma":
        return f"tl.fma({a}, {b}, {xs[2]})"
    if op == "isnan":
        return f"({a} != {a})"
    if op == "isinf":
        return f"(tl.abs({a}) == float('inf'))"
    if op in LIBDEVICE:
        return _libdevice(op, xs, dts, target)
    raise CodegenError(f"operator {op} has no Triton lowering")


def _libdevice(op: str, xs: list[str], dts: list[str], target: str) -> str:
    a = xs[0]
    b = xs[1] if len(xs) > 1 else None
    if target == "cuda":
        args = f"{a}, {b}" if op in ("pow", "atan2") else a
        return f"libdevice.{LIBDEVICE[op]}({args})"
    if op == "tanh":  # exp-based, with a series near 0 where 1 - exp(-2|x|) cancels
        ax = f"tl.abs({a})"
        e = f"tl.exp2({ax} * {-2 * LOG2E})"
        big = f"tl.where({a} < 0, -1.0, 1.0) * ((1.0 - {e}) / (1.0 + {e}))"
        x2 = f"({a} * {a})"
        small = f"{a} * (1.0 + {x2} * (-0.3333333333333333 + {x2} * (0.13333333333333333 + {x2} * -0.05396825396825397)))"
        return f"tl.where({ax} < 0.05, {small}, {big})"
    if op == "pow":
        if not dtypes.is_float(dts[0]):
            raise CodegenError("an integer pow is not available under the interpreter")
        # |a|^b = exp2(b * log2|a|), with C's pow for the rest: a negative base takes an integer
        # exponent's sign (NaN otherwise), a^0 = 1, 1^b = 1
        r = f"tl.exp2({b} * tl.log2(tl.abs({a})))"
        odd = f"({b} - 2.0 * tl.floor({b} * 0.5) == 1.0)"
        signed = f"tl.where(tl.floor({b}) == {b}, tl.where({odd}, -{r}, {r}), float('nan'))"
        return f"tl.where(({b} == 0.0) | ({a} == 1.0), 1.0, tl.where({a} < 0.0, {signed}, {r}))"
    if op == "expm1":  # Kahan: (u - 1) * x / log(u), u = exp(x), exact where u rounds to 1
        u = f"tl.exp({a})"
        return f"tl.where({u} == 1.0, {a}, tl.where({u} - 1.0 == -1.0, -1.0, ({u} - 1.0) * {a} / tl.log({u})))"
    if op == "log1p":  # Kahan: log(u) * x / (u - 1), u = 1 + x
        u = f"(1.0 + {a})"
        return f"tl.where({u} == 1.0, {a}, tl.log({u}) * {a} / ({u} - 1.0))"
    if op == "round":  # half to even
        r = f"tl.floor({a} + 0.5)"
        return f"tl.where(({r} - {a} == 0.5) & ({r} - 2.0 * tl.floor({r} * 0.5) != 0.0), {r} - 1.0, {r})"
    raise CodegenError(f"{op} is not available under the interpreter")


def cast(x: str, src: str, dst: str, target: str) -> str:
    """``x`` of dtype ``src`` converted to ``dst``: Triton's conversion, but for bfloat16 under
    the interpreter, which truncates where PyTorch and the GPU round to nearest even."""
    if dst == "bf16" and target == "interpreter":
        return rounded_to_bf16(x if src == "f32" else f"{x}.to(tl.float32)")
    return f"{x}.to({TL_DTYPE[dst]})"


def rounded_to_bf16(x: str) -> str:
    """``x`` (fp32) to bfloat16, rounded to nearest even as PyTorch and the GPU round: Triton's
    interpreter truncates (fuzz bug BF: a bf16 division one unit low at half the points). The
    rounding adds ``0x7FFF`` plus the last kept bit to the bits before dropping the low 16; a NaN
    keeps the plain conversion (its payload could carry into the exponent)."""
    x = f"({x})"
    bits = f"{x}.to(tl.uint32, bitcast=True)"
    rne = f"((({bits} + 0x7FFF + (({bits} >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True))"
    return f"tl.where({x} == {x}, {rne}, {x}.to(tl.bfloat16))"
