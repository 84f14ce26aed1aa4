"""Inline pointwise producers into their consumers.

A statement ``t[x0, ..., xn] = e`` whose nest is exactly the loops over ``x0..xn`` (one
distinct iterator per dimension, or the index 0 of a dimension of size one; no guard) and that is the only writer of the temporary ``t``
defines ``t`` as a pure function of its index. Every load ``t[f0, ..., fn]`` can therefore be
replaced by ``e[x := f]``, and the statement deleted once nothing reads ``t``.

Legality: the producer writes each element of ``t`` exactly once, over ``t``'s whole shape, and
before any reader (program order is a valid order, and a single writer means no later write can
change the value), so substitution preserves every value read. Reductions, outputs and
statements under guards are never inlined. A reduction with no reduction loop (a sum over a
dimension of size one, whose loop the lift drops) folds one term into its identity per element:
``0 + e``, ``max(-inf, e)``, ``1 * e`` are ``e``, so it is a definition like any other. Casts to a value's own dtype are dropped on the way.

Cost: a definition read twice is copied twice, so a chain of them grows exponentially (banded
attention built from padded, strided chunks: an expression that no pass finished walking). A
definition whose expression, with its own reads inlined, has more than ``max_size`` nodes as a
tree stays a statement, and its readers load it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Program, Proof, Stmt, walk_stmts
from flashlight.passes.declare import Pass, option
from flashlight.passes.tree import drop_unused_temps, map_exprs, map_stmts, writers


def _definition(program: Program) -> dict[str, tuple[tuple[str, ...], Expr]]:
    """Temporaries defined by a single pointwise statement: tensor -> (iterators, expression)."""
    out = {}
    w = writers(program)
    for stmt, loops, guards in walk_stmts(program.body):
        t = program.tensor(stmt.target.tensor)
        if t.role != "temp" or stmt.scale is not None or guards or len(w[t.name]) != 1:
            continue
        if stmt.op != "=" and any(l.kind != "parallel" for l in loops):
            continue  # a reduction that folds one term per element (a sum over a dimension of size one) is that term
        idx = stmt.target.indices
        its = tuple(l.iterator for l in loops)
        unit = [isinstance(i, Const) and t.shape[k] == 1 for k, i in enumerate(idx)]
        named = tuple(i.name for i, u in zip(idx, unit) if isinstance(i, Iter) and not u)
        if named != its or len(named) + sum(unit) != len(idx):
            continue
        if any(ld.tensor == t.name for ld in E.loads(stmt.expr)):
            continue
        out[t.name] = (tuple(i.name if isinstance(i, Iter) else "" for i in idx), stmt.expr)
    return out


def drop_identity_casts(e: Expr, dtypes: dict[str, str]) -> Expr:
    def fold(x: Expr) -> Expr | None:
        if isinstance(x, Call) and x.op in E.CASTS and E.dtype_of(x.args[0], dtypes) == x.op:
            return x.args[0]
        return None

    return E.rewrite(e, fold)


MAX_SIZE = 400


def inline_pointwise(program: Program, max_size: int = MAX_SIZE) -> Program:
    """Substitute every single-assignment pointwise temporary of at most ``max_size`` nodes into
    its readers."""
    defs = _definition(program)
    if not defs:
        return program
    # Definitions may read each other; resolve them in program order.
    resolved: dict[str, tuple[tuple[str, ...], Expr]] = {}

    def substitute(e: Expr) -> Expr:
        def fold(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.tensor in resolved:
                its, body = resolved[x.tensor]
                return E.substitute(body, {i: v for i, v in zip(its, x.indices) if i})
            return None

        return drop_identity_casts(E.rewrite(e, fold), program.dtypes)

    kept: dict[str, Expr] = {}  # definitions too large to copy: their statements stay
    for stmt, _, _ in walk_stmts(program.body):
        if stmt.target.tensor in defs:
            its, body = defs[stmt.target.tensor]
            body = substitute(body)
            if E.tree_size(body) > max_size:
                kept[stmt.target.tensor] = body
            else:
                resolved[stmt.target.tensor] = (its, body)
    if not resolved:
        return program

    inlined = [n for n in resolved]

    def rewrite_stmt(s: Stmt) -> Stmt | None:
        if s.target.tensor in resolved:
            return None
        if s.target.tensor in kept:
            return replace(s, expr=kept[s.target.tensor])
        return map_exprs(s, substitute)

    body = map_stmts(program.body, rewrite_stmt)
    proof = Proof(
        "inline " + ", ".join(inlined), True,
        "each inlined temporary has a single pointwise writer over its whole shape, so every read "
        "equals the writer's expression at the read index" + (
            f"; kept {', '.join(kept)}: more than {max_size} nodes each, which every read would copy" if kept else ""))
    return drop_unused_temps(program.replace(body=body)).with_proofs(proof)


@dataclass(frozen=True)
class InlinePointwise(Pass):
    """Inline pointwise producers into their consumers."""

    name: ClassVar[str] = "inline"
    max_size: int = option(MAX_SIZE, "largest definition, in expression nodes as a tree with its own reads "
                                     "inlined, copied into its readers; a larger one stays a statement")

    def apply(self, program: Program) -> Program:
        return inline_pointwise(program, max_size=self.max_size)
