"""Spread conversions: ``f32(a*i + b*j + c)`` over a tile of several axes as ``f32(a*i) + f32(b*j) + c``.

ALiBi's bias ``slope * f32(j - i)`` converts an integer to a float at every element of a query x
key tile, and int-to-float conversions run at a quarter of the fp32 rate on the GPU. Spread over
the terms, there is one conversion per row and one per column (each hoisted out of the loops it
does not vary in) and one add per element.

Legality: exact, bit for bit. Every term and every partial sum of the spread form is an integer
whose magnitude is below 2^24 (bounded with each iterator at the last point of its padded tile
range, ``ceil(extent / tile) * tile - 1``, since tails are evaluated too and masked later; a
sum over a size parameter's iterator has no such bound and is left alone), and
fp32 represents every such integer exactly, so each conversion and each addition is exact and the
sum equals the conversion of the integer sum. Applied only where at least two of the iterators
are vector axes of the kernel (tiled grid, serial or block loops): elsewhere the value is one
conversion per program or per row already. Runs after ``tile``, which fixes those axes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, grid_chain, walk_loops
from flashlight.passes.declare import Pass
from flashlight.passes.tree import loop_extent, map_exprs

EXACT_INTEGERS = 2 ** 24  # fp32 represents every integer below this in magnitude


def spread_conversions(program: Program) -> Program:
    """Convert affine integer sums to fp32 term by term where they span several tile axes."""
    body, spread = [], []
    for nest in program.body:
        loops = list(walk_loops((nest,)))
        if any(l.tile is None for l in loops):
            body.append(nest)  # not tiled: no axes to speak of
            continue
        axes = {l.iterator for l in loops if l.mapping in ("serial", "block")}
        axes |= {l.iterator for l in grid_chain(nest) if (l.tile or 1) > 1}
        # an iterator over a size parameter has no bound for every size: a sum it is in stays whole
        span = {l.iterator: -(-n // l.tile) * l.tile - 1 for l in loops  # type: ignore[operator]
                if isinstance(n := loop_extent(l), int)}
        body.append(_rewrite_nest(nest, lambda e: _spread(e, axes, span), spread))
    if not spread:
        return program
    return program.replace(body=tuple(body)).with_proofs(Proof(
        f"spread conversions in {', '.join(dict.fromkeys(spread))}", True,
        "every term and partial sum is an integer below 2^24 in magnitude over the padded tile "
        "ranges, which fp32 represents exactly",
        lemma="f32(a*i + b*j + c) = f32(a*i) + f32(b*j) + c for integers below 2^24"))


def _spread(e: Expr, axes: set[str], span: dict[str, int]) -> Expr | None:
    if not (isinstance(e, Call) and e.op == "f32" and len(e.args) == 1):
        return None
    form = E.affine_form(e.args[0])
    if form is None or len([k for k in form[0] if k in axes]) < 2 or any(k not in span for k in form[0]):
        return None
    coeffs, c = form
    if abs(c) + sum(abs(a) * span[k] for k, a in coeffs.items()) >= EXACT_INTEGERS:
        return None
    out: Expr | None = None
    for k, a in sorted(coeffs.items(), key=lambda kv: kv[1] < 0):  # positive terms first
        term = Call("f32", (Iter(k) if abs(a) == 1 else Call("mul", (E.index(abs(a)), Iter(k))),))
        out = term if out is None and a > 0 else \
            Call("neg", (term,)) if out is None else Call("add" if a > 0 else "sub", (out, term))
    if c:
        out = Call("add" if c > 0 else "sub", (out, E.const(float(abs(c)), "f32")))  # type: ignore[arg-type]
    return out


def _rewrite_nest(node: Node, fold, changed: list[str]) -> Node:
    if isinstance(node, Stmt):
        new = map_exprs(node, lambda e: E.rewrite(e, fold))
        if new != node:
            changed.append(node.name)
        return new
    body = tuple(_rewrite_nest(c, fold, changed) for c in node.body)
    if isinstance(node, Guard):
        return replace(node, cond=E.rewrite(node.cond, fold), body=body)
    assert isinstance(node, Loop)
    return replace(node, body=body)


@dataclass(frozen=True)
class SpreadConversions(Pass):
    """Spread conversions: ``f32(a*i + b*j + c)`` over a tile of several axes as ``f32(a*i) + f32(b*j) + c``."""

    name: ClassVar[str] = "spread-conversions"

    def apply(self, program: Program) -> Program:
        return spread_conversions(program)
