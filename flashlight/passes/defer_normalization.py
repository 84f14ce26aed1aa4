"""Defer normalisation: move factors that read another reduction's result out of a sum.

For ``z[p] += F`` where ``F`` is a product or quotient (through float casts) with a factor
``c[p]`` that does not vary with the reduction iterators and reads the result of another
reduction, the pass rewrites

    z[p] += G * c[p]       into       z'[p] += G ;   z[p] = z'[p] * c[p]   (after the sum)

(``/ c`` likewise). Lemma: ``Σ_j G_j · c = (Σ_j G_j) · c`` when ``c`` does not depend on
``j`` (distributivity of × over +). A float cast between the factor and the sum (eager rounds
``P = softmax(S)`` to bf16 before ``P @ V``) only moves where rounding happens. This is
FlashAttention-2's deferred division by the softmax denominator; afterwards the sum depends on
the other reduction only through the factor the online rewrite can repair.

Only factors that load a reduction's target are hoisted: others change nothing about fusion.

Only a sum of more than one term is rewritten. With no reduced iterator that can take two
values (layer_norm over a last axis of extent 1: ``mean[p] += x[p]``) the statement is one
term, which eager adds to zero exactly, so its result is bit-identical to the term as other
statements recompute it, and ``x - mean`` is exactly 0. The "only moves where rounding
happens" argument does not hold there: the rewritten sum rounds differently from the term it
is later subtracted from, and the difference, divided by ``sqrt(0 + eps)``, is O(1). Nor is
anything gained: a one-term sum has nothing to defer the factor past.

Legality: distributivity, ``Σ_j G_j · c = (Σ_j G_j) · c``, for a factor ``c`` whose indices
read none of the summed iterators, so it is one value for all the terms of a sum. The product is
taken after the sum, later than before in program order, and the factor's reduction already
ran before the original statement, so the factor read is the same final value; nothing else
reads the new partial sum. Up to where rounding happens, the target gets the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter, Load
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, TensorDecl, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import fresh_tensor_name, guard_body


def _split(e: Expr, invariant: set[str], reduced: set[str], dt: dict[str, str]) -> tuple[Expr | None, list[tuple[Expr, bool]]]:
    """Split a product into (variant part, [(invariant factor, is_divisor)])."""
    if isinstance(e, Call) and e.op == "mul":
        va, fa = _split(e.args[0], invariant, reduced, dt)
        vb, fb = _split(e.args[1], invariant, reduced, dt)
        if va is None:
            return vb, fa + fb
        if vb is None:
            return va, fa + fb
        return E.call("mul", va, vb), fa + fb
    if isinstance(e, Call) and e.op == "div":
        den = e.args[1]
        va, fa = _split(e.args[0], invariant, reduced, dt)
        if _hoistable(den, invariant, reduced):
            return va, fa + [(den, True)]
        if va is None:
            return e, []
        return E.call("div", va, den), fa
    if isinstance(e, Call) and e.op in dtypes.FLOATS and dtypes.is_float(E.dtype_of(e.args[0], dt)):
        v, f = _split(e.args[0], invariant, reduced, dt)
        return (E.call(e.op, v) if v is not None else None), f
    if _hoistable(e, invariant, reduced):
        return None, [(e, False)]
    return e, []


def _may_repeat(loop: Loop) -> bool:
    """Whether the loop can run more than one iteration (unknown bounds: assume it can)."""
    lo, hi = loop.lower, loop.upper
    if isinstance(lo, E.Const) and isinstance(hi, E.Const):
        return hi.value - lo.value > 1
    return True


def _hoistable(e: Expr, invariant: set[str], reduced: set[str]) -> bool:
    return not (E.free_iters(e) & reduced) and any(ld.tensor in invariant for ld in E.loads(e))


def defer_normalization(program: Program) -> Program:
    """Hoist reduction-invariant factors that read other reductions' results out of sums."""
    reduction_targets = {s.target.tensor for s, _, _ in walk_stmts(program.body) if s.is_reduction}
    tensors = list(program.tensors)
    proofs: list[Proof] = []
    new_body: list[Node] = []
    dt = dict(program.dtypes)
    for nest in program.body:
        stmts = list(walk_stmts((nest,)))
        if len(stmts) != 1 or stmts[0][0].op != "+=" or stmts[0][0].scale is not None:
            new_body.append(nest)
            continue
        stmt, loops, guards = stmts[0]
        target_its = {x.name for x in stmt.target.indices if isinstance(x, Iter)}
        reduced = {l.iterator for l in loops if l.iterator not in target_its}
        if not any(_may_repeat(l) for l in loops if l.iterator in reduced):
            new_body.append(nest)  # one term: no sum to defer past (see the module docstring)
            continue
        others = reduction_targets - {stmt.target.tensor}
        variant, factors = _split(stmt.expr, others, reduced, dt)
        if not factors or variant is None:
            new_body.append(nest)
            continue
        decl = program.tensor(stmt.target.tensor)
        acc = fresh_tensor_name(program.replace(tensors=tuple(tensors)), decl.name + "_sum")
        tensors.append(TensorDecl(acc, decl.dtype, decl.shape, "temp"))
        dt[acc] = decl.dtype
        summed = replace(stmt, target=Load(acc, stmt.target.indices), expr=variant)
        value: Expr = Load(acc, stmt.target.indices)
        for f, is_div in factors:
            f = f if E.dtype_of(f, dt) == decl.dtype else E.call(decl.dtype, f)
            value = E.call("div" if is_div else "mul", value, f)
        epilogue = Stmt(stmt.name + "_n", stmt.target, "=", value)
        outer = [l for l in loops if l.iterator not in reduced]
        new_body.append(_rebuild(loops, guards, summed))
        node: Node = epilogue
        for l in reversed(outer):
            node = Loop(l.iterator, l.lower, l.upper, l.kind, (node,))
        new_body.append(node)
        shown = ", ".join(("/ " if d else "* ") + str(f) for f, d in factors)
        proofs.append(Proof(
            f"defer normalization of {stmt.name}", True,
            f"the factors {shown} do not vary with {', '.join(sorted(reduced))}",
            lemma="sum_j (G_j * c) = (sum_j G_j) * c for c invariant in j (distributivity of * over +)"))
    if not proofs:
        return program
    order = {"input": 0, "output": 1, "temp": 2}
    tensors.sort(key=lambda t: order[t.role])
    return program.replace(tensors=tuple(tensors), body=tuple(new_body)).with_proofs(*proofs)


def _rebuild(loops: tuple[Loop, ...], guards: tuple[Expr, ...], stmt: Stmt) -> Node:
    node: Node = guard_body(guards, stmt)
    for l in reversed(loops):
        node = Loop(l.iterator, l.lower, l.upper, l.kind, (node,))
    return node


@dataclass(frozen=True)
class DeferNormalization(Pass):
    """Defer normalisation: move factors that read another reduction's result out of a sum."""

    name: ClassVar[str] = "defer-normalization"

    def apply(self, program: Program) -> Program:
        return defer_normalization(program)
