"""Keep fused intermediates in fp32: drop a round trip through a narrower float between two ops.

Eager PyTorch materialises every op's result in the tensor's dtype, so a bf16 program rounds
the scores to bf16 after ``q @ k.T`` and again after scaling them. Inside one fused kernel
nothing is materialised: ``f32(bf16(x))`` with ``x`` already fp32 is the identity up to one
rounding, and dropping it keeps the value exact (fp32 rather than bf16), as TorchInductor does
for its fused kernels. Results move *closer* to an fp32 reference, never further.

Round trips that are the operands of a contraction stay: ``sum_j f32(bf16(p)) * f32(v)`` is
``P`` cast to V's dtype before ``P @ V``, which eager does and a tensor-core product consumes.
Round trips through fp16 stay too: its range is narrow, so the rounding decides which values
become inf or 0 (a score past 65504 is inf in eager, and its softmax NaN); bf16 has fp32's range.
And round trips below a comparison stay: a comparison turns one ulp into a different boolean
(``bf16(min(x, 1e-3)) != 1e-3`` is false in eager for every x above 1e-3 and would be true in
fp32; fuzz seed 7480580).

Legality: a rewrite of expressions inside one statement, so domains, accesses and the schedule
stay, and with them every dependence. Each dropped ``wide(narrow(x))`` yields ``x`` where eager
yields ``x`` rounded to the narrower type: the value differs from eager's by that one rounding
(half an ulp of the narrow type, relatively) and is the value an fp32 computation would hold.
The exceptions above are where that rounding matters downstream: a contraction operand (the
tensor-core product consumes the narrow value), fp16 (the rounding decides overflow) and a
comparison's operands (the rounding decides the boolean).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr
from flashlight.ir.nodes import Program, Proof, Stmt
from flashlight.passes.declare import Pass
from flashlight.passes.tree import map_stmts


def _is_round_trip(e: Expr, dt: dict[str, str]) -> bool:
    return (isinstance(e, Call) and e.op in dtypes.FLOATS and isinstance(e.args[0], Call)
            and e.args[0].op == "bf16" and E.dtype_of(e.args[0].args[0], dt) == e.op
            and dtypes.FLOATS.index(e.op) < dtypes.FLOATS.index(e.args[0].op))


def elide_roundings(program: Program) -> Program:
    """Drop ``wide(narrow(x))`` for wide ``x``, except on contraction operands."""
    dt = program.dtypes
    count = [0]

    def elide(e: Expr) -> Expr:
        if isinstance(e, Call) and e.op in E.COMPARISONS:
            return e  # a comparison's operands keep eager's roundings: one ulp flips the result
        if _is_round_trip(e, dt):
            count[0] += 1
            return elide(e.args[0].args[0])  # type: ignore[union-attr]
        return E.rebuild(e, tuple(elide(c) for c in E.children(e)))

    def rewrite(s: Stmt) -> Stmt:
        expr = s.expr
        if s.op == "+=" and isinstance(expr, Call) and expr.op == "mul":
            # contraction operands keep their cast; everything below them is fair game
            a, b = expr.args
            keep = [x if _is_round_trip(x, dt) else elide(x) for x in (a, b)]
            keep = [Call(x.op, (Call(x.args[0].op, (elide(x.args[0].args[0]),)),))  # type: ignore[union-attr]
                    if _is_round_trip(x, dt) else x for x in keep]
            expr = Call("mul", tuple(keep))
        else:
            expr = elide(expr)
        scale = None if s.scale is None else elide(s.scale)
        return replace(s, expr=expr, scale=scale)

    body = map_stmts(program.body, rewrite)
    if not count[0]:
        return program
    return program.replace(body=body).with_proofs(Proof(
        "elide roundings", True,
        f"{count[0]} round trips through bf16 inside fused expressions dropped: the fp32 value is "
        "kept exactly (contraction operands keep their casts)"))


@dataclass(frozen=True)
class ElideRoundings(Pass):
    """Keep fused intermediates in fp32: drop a round trip through a narrower float between two ops."""

    name: ClassVar[str] = "elide-roundings"

    def apply(self, program: Program) -> Program:
        return elide_roundings(program)
