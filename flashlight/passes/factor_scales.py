"""Factor scales: ``x * c + a * b`` with ``c`` a power of two becomes ``fma(a / c, b, x) * c``.

A scaled score plus a bias, ``s * 0.125 + slope[h] * f32(j - i)`` (ALiBi at head dim 64), costs
a multiply, a multiply and an add per score (a compiler may contract one pair). Factored,
``fma(slope[h] * 8, f32(j - i), s) * 0.125``: the bias scale ``slope[h] * 8`` is invariant in the
score's inner iterators (code generation computes it once, outside the loops), the sum is one
fused multiply-add per score, and the outer ``* 0.125`` is absorbed downstream: a running maximum
takes it out of the reduction (``max_j(y_j * c) = max_j(y_j) * c`` for ``c > 0``, rounding is
monotonic) and rebase-exponentials folds it into the constant of its fma. Two operations a score
fewer, in every statement that reads the sum, on every Triton version (none relies on the
backend contracting a multiply and an add).

Legality. Multiplying by ``c = 2^e`` changes only the exponent, so it commutes with rounding:
``fl(u) * c = fl(u * c)`` and ``a / c`` is exact. Hence ``fma(a/c, b, x) * c = fl(a*b + x*c)``:
the exactly rounded value of the sum whose product eager rounds first, ``fl(x*c + fl(a*b))``. The
two differ by at most that one rounding of ``a * b`` (half an ulp of the bias), and the factored
value is the closer to the exact sum. This holds for every value whose intermediates stay in the
normal range (a product that overflows, or underflows into subnormals, under one scaling and not
the other is the only further difference; scores and biases live many orders of magnitude inside
it). The rewrite is applied only where it removes work: ``c`` is a positive fp32 power of two,
the bias is a product with a factor that reads fewer iterators than the product (so ``a / c`` is
computed once per value of fewer iterators), and all of it is fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr
from flashlight.ir.nodes import Program, Proof, Stmt
from flashlight.passes.declare import Pass
from flashlight.passes.tree import map_exprs, map_stmts


def _power_of_two(e: Expr) -> float | None:
    """The value of a positive fp32 constant that is a power of two."""
    if not (isinstance(e, Const) and e.dtype == "f32"):
        return None
    v = float(e.value)
    return v if v > 0 and math.isfinite(v) and math.frexp(v)[0] == 0.5 else None


def _scaled(e: Expr) -> tuple[Expr, float] | None:
    """``(x, c)`` of ``x * c`` or ``c * x`` with ``c`` a power of two."""
    if not (isinstance(e, Call) and e.op == "mul"):
        return None
    for x, k in (e.args, e.args[::-1]):
        c = _power_of_two(k)
        if c is not None:
            return x, c
    return None


def _split_bias(bias: Expr, c: float) -> tuple[Expr, Expr] | None:
    """``(a, b)`` of a bias ``a * b`` whose factor ``a`` reads fewer iterators, or None."""
    if not (isinstance(bias, Call) and bias.op == "mul"):
        return None
    a, b = sorted(bias.args, key=lambda f: len(E.free_iters(f)))
    if len(E.free_iters(a)) >= len(E.free_iters(bias)):
        return None
    return a, b


def factor_scales(program: Program) -> Program:
    """Pull power-of-two scales out of sums with a product, where the product absorbs them."""
    dt = program.dtypes
    count = [0]

    def fold(e: Expr) -> Expr | None:
        if not (isinstance(e, Call) and e.op in ("add", "sub") and E.dtype_of(e, dt) == "f32"):
            return None
        for side in (0, 1):
            found = _scaled(e.args[side])
            other = e.args[1 - side]
            if found is None or E.dtype_of(other, dt) != "f32":
                continue
            x, c = found
            split = _split_bias(other, c)
            if split is None or E.dtype_of(x, dt) != "f32":
                continue
            a, b = split
            sign = -1.0 if e.op == "sub" and side == 0 else 1.0  # x*c - a*b
            a = E.call("mul", a, E.const(sign / c, "f32"))
            if e.op == "sub" and side == 1:  # a*b - x*c
                x = E.neg(x)
            count[0] += 1
            return Call("mul", (Call("fma", (a, b, x)), E.const(c, "f32")))
        return None

    def rewrite(s: Stmt) -> Stmt:
        return map_exprs(s, lambda e: E.rewrite(e, fold))

    body = map_stmts(program.body, rewrite)
    if not count[0]:
        return program
    return program.replace(body=body).with_proofs(Proof(
        "factor scales", True,
        f"{count[0]} sum{'s' if count[0] != 1 else ''} x*c + a*b with c a power of two computed as "
        "fma(a/c, b, x)*c: scaling by 2^e commutes with rounding, so each is the sum rounded once "
        "(eager rounds a*b first)",
        lemma="fma(a*2^-e, b, x) * 2^e = fl(a*b + x*2^e) in the normal range"))


@dataclass(frozen=True)
class FactorScales(Pass):
    """Factor scales: ``x * c + a * b`` with ``c`` a power of two becomes ``fma(a / c, b, x) * c``."""

    name: ClassVar[str] = "factor-scales"

    def apply(self, program: Program) -> Program:
        return factor_scales(program)
