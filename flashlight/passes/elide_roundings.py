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

A value is elided everywhere or nowhere. When one reader of ``bf16(x)`` must keep the rounding
(one of the exceptions, or a stored result), every other reader keeps it too: mixing ``x`` in one
statement with ``bf16(x)`` in another breaks identities eager's values satisfy (softmax's largest
score minus the row max is exactly 0, so its exponential is 1). Since inlining copies a producer
into each consumer, this is a property of the whole program, decided in two rounds: elide
wherever allowed, collect the values still rounded, elide again sparing those. A widening of a
selection, ``f32(where(c, a, b))``, is read as ``where(c, f32(a), f32(b))`` (a cast applies per
element) so that a masked score is seen as the same value as the unmasked one.

Legality: a rewrite of expressions inside one statement, so domains, accesses and the schedule
stay, and with them every dependence. Each dropped ``wide(narrow(x))`` yields ``x`` where eager
yields ``x`` rounded to the narrower type: the value differs from eager's by that one rounding
(half an ulp of the narrow type, relatively) and is the value an fp32 computation would hold.
The exceptions above are where that rounding matters downstream: a contraction operand (the
tensor-core product consumes the narrow value), fp16 (the rounding decides overflow) and a
comparison's operands (the rounding decides the boolean); the values kept for consistency are
rounded exactly as eager rounds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter, Load
from flashlight.ir.nodes import Node, Program, Proof, Stmt, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import map_stmts


def _is_round_trip(e: Expr, dt: dict[str, str]) -> bool:
    return (isinstance(e, Call) and e.op in dtypes.FLOATS and isinstance(e.args[0], Call)
            and e.args[0].op == "bf16" and E.dtype_of(e.args[0].args[0], dt) == e.op
            and dtypes.FLOATS.index(e.op) < dtypes.FLOATS.index(e.args[0].op))


def _widened_branches(e: Expr, dt: dict[str, str]) -> Expr | None:
    """``f32(where(c, a, b))`` as ``where(c, f32(a), f32(b))`` when that exposes a round trip
    in a branch: a cast applies per element, so the two are equal."""
    if not (isinstance(e, Call) and e.op in dtypes.FLOATS and isinstance(e.args[0], Call)
            and e.args[0].op == "where"):
        return None
    cond, a, b = e.args[0].args
    pushed = Call("where", (cond, Call(e.op, (a,)), Call(e.op, (b,))))
    return pushed if any(_is_round_trip(x, dt) for x in pushed.args[1:]) else None


def _value_key(e: Expr, dt: dict[str, str]) -> str:
    """A rounded value's identity across statements: its expression with every index, iterator
    and inner round trip erased, so that the same producer inlined into two nests (under other
    iterator names, elided in one and not yet in the other) has one key. Coarser than the value
    itself, which only makes the pass keep more roundings."""

    def erase(n: Expr) -> Expr | None:
        if isinstance(n, Load):
            return Load(n.tensor, ())
        if isinstance(n, Iter):
            return Iter("_")
        return n.args[0].args[0] if _is_round_trip(n, dt) else None  # type: ignore[union-attr]

    return str(E.rewrite(e, erase))


def _narrowed_keys(e: Expr, dt: dict[str, str]) -> set[str]:
    return {_value_key(n.args[0], dt) for n in E.walk(e) if isinstance(n, Call) and n.op == "bf16"}


def elide_roundings(program: Program) -> Program:
    """Drop ``wide(narrow(x))`` for wide ``x`` wherever every reader of ``narrow(x)`` can."""
    dt = program.dtypes

    def rewrite_all(kept: set[str]) -> tuple[Node, int]:
        count = [0]

        def elide(e: Expr) -> Expr:
            if isinstance(e, Call) and e.op in E.COMPARISONS:
                return e  # a comparison's operands keep eager's roundings: one ulp flips the result
            e = _widened_branches(e, dt) or e
            if _is_round_trip(e, dt) and _value_key(e.args[0].args[0], dt) not in kept:  # type: ignore[union-attr]
                count[0] += 1
                return elide(e.args[0].args[0])  # type: ignore[union-attr]
            return E.rebuild(e, tuple(elide(c) for c in E.children(e)))

        def rewrite(s: Stmt) -> Stmt:
            expr = s.expr
            if s.op == "+=" and isinstance(expr, Call) and expr.op == "mul":
                # contraction operands keep their cast; everything below them is fair game
                expr = Call("mul", tuple(
                    Call(x.op, (Call("bf16", (elide(x.args[0].args[0]),)),))  # type: ignore[union-attr]
                    if _is_round_trip(x, dt) else elide(x) for x in expr.args))
            else:
                expr = elide(expr)
            scale = None if s.scale is None else elide(s.scale)
            return replace(s, expr=expr, scale=scale)

        return map_stmts(program.body, rewrite), count[0]

    # First elide everywhere it is allowed; a value still rounded somewhere after that (a
    # contraction operand, a comparison's operand, a stored result) is then kept rounded
    # everywhere: mixing x in one statement with bf16(x) in another breaks identities eager's
    # values satisfy (softmax's largest score minus the row max is 0, so its exp is 1; fuzz
    # seeds 7811892, 7861770).
    first, _ = rewrite_all(set())
    kept = set().union(*(_narrowed_keys(e, dt) for s, _, _ in walk_stmts(first)
                         for e in (s.expr, s.scale) if e is not None))
    body, count = rewrite_all(kept)
    if not count:
        return program
    return program.replace(body=body).with_proofs(Proof(
        "elide roundings", True,
        f"{count} round trips through bf16 inside fused expressions dropped: the fp32 value is "
        "kept exactly (contraction operands, comparison operands and values rounded elsewhere "
        "keep their casts)"))


@dataclass(frozen=True)
class ElideRoundings(Pass):
    """Keep fused intermediates in fp32: drop a round trip through a narrower float between two ops."""

    name: ClassVar[str] = "elide-roundings"

    def apply(self, program: Program) -> Program:
        return elide_roundings(program)
