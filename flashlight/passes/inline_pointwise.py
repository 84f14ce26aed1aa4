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

A chain grows in loads too: a transformer's residual stream ``h = h + f(norm(h))``, inlined
layer after layer, made every reader of layer L's stream load the 2L tensors summed into it (the
norm's mean, each projection's row tiles, once per program of columns): quadratic traffic in the
depth, and no two layers' kernels alike. Where a definition's expression, with its own reads
inlined, would load more than ``max_reads`` tensors, the definition it copies that several
statements read (the stream ``h``; the one loading most, if several) stays a statement instead,
and the rest is resolved again; where it copies none, it stays a statement itself if several
statements read it (one reader loads no more than it would). As Inductor realizes a buffer that
reads too many; the readers then load one tensor where they loaded the chain. A definition that
reads a matrix product larger than its factors (attention's scores) is never kept so: stored, it
would be the S x S buffer the fusions exist to avoid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Program, Proof, Stmt, walk_stmts
from flashlight.ir.products import expanding_products
from flashlight.passes.declare import Pass, option
from flashlight.passes.tree import drop_unused_temps, map_exprs, map_stmts, readers, writers


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


def _inline_into(e: Expr, resolved: dict[str, tuple[tuple[str, ...], Expr]], dtypes: dict[str, str]) -> Expr:
    """``e`` with each load of a resolved definition replaced by its expression at the load's index."""
    def fold(x: Expr) -> Expr | None:
        if isinstance(x, Load) and x.tensor in resolved:
            its, body = resolved[x.tensor]
            return E.substitute(body, {i: v for i, v in zip(its, x.indices) if i})
        return None

    return drop_identity_casts(E.rewrite(e, fold), dtypes)


MAX_SIZE = 400
MAX_READS = 4


def _reached(e: Expr, defs: dict[str, tuple[tuple[str, ...], Expr]], reads: Callable[[Expr], set[str]]) -> set[str]:
    """The definitions ``e`` reads, directly or through other definitions."""
    seen: set[str] = set()
    todo = list(reads(e))
    while todo:
        t = todo.pop()
        if t in defs and t not in seen:
            seen.add(t)
            todo.extend(reads(defs[t][1]))
    return seen


def _tensors_read() -> Callable[[Expr], set[str]]:
    """The tensors an expression loads, remembered by object: resolving a model's program asks it
    of the same bodies again and again (the walks were most of its compilation)."""
    known: dict[int, tuple[Expr, set[str]]] = {}  # the expression is held: its id stays its own

    def reads(e: Expr) -> set[str]:
        hit = known.get(id(e))
        if hit is None:
            hit = known[id(e)] = (e, {ld.tensor for ld in E.loads(e)})
        return hit[1]
    return reads


def _resolve(program: Program, defs: dict[str, tuple[tuple[str, ...], Expr]], shared: set[str], max_size: int,
             max_reads: int, reads: Callable[[Expr], set[str]]) -> tuple[dict, dict[str, Expr], str | None]:
    """Definitions with their own reads inlined, in program order: (resolved, kept, cut). ``shared``
    stay statements; ``cut`` is the first definition read by several statements that a definition
    loading more than ``max_reads`` tensors would copy (the one of them loading most), or that
    definition itself where it reads none and several statements read it. A definition that reads
    an expanding product (:func:`expanding_products`) is never cut: kept, it would be stored at
    that product's size (attention's probabilities, read by each gradient of a backward)."""
    resolved: dict[str, tuple[tuple[str, ...], Expr]] = {}
    read_by = readers(program)
    expanding = expanding_products(program)

    def may_cut(t: str, body: Expr) -> bool:
        return len(read_by.get(t, ())) > 1 and not reads(body) & expanding

    kept: dict[str, Expr] = {}  # definitions too large to copy, or cut: their statements stay
    for stmt, _, _ in walk_stmts(program.body):
        name = stmt.target.tensor
        if name not in defs:
            continue
        its, written = defs[name]
        body = _inline_into(written, resolved, program.dtypes)
        if name in shared or E.tree_size(body) > max_size:
            kept[name] = body
        elif len(reads(body)) > max_reads:
            reached = _reached(written, defs, reads)
            copied = [t for t in resolved if t in reached and may_cut(t, resolved[t][1])]
            if copied:  # the first (the chain's origin) of those loading most
                return resolved, kept, max(copied, key=lambda t: len(reads(resolved[t][1])))
            if may_cut(name, body):
                return resolved, kept, name
            resolved[name] = (its, body)
        else:
            resolved[name] = (its, body)
    return resolved, kept, None


def inline_pointwise(program: Program, max_size: int = MAX_SIZE, max_reads: int = MAX_READS) -> Program:
    """Substitute every single-assignment pointwise temporary of at most ``max_size`` nodes into
    its readers; where a copy would load more than ``max_reads`` tensors, a definition several
    statements read stays a statement (the shared one the copy reads, else the copy's own)."""
    defs = _definition(program)
    if not defs:
        return program
    shared: list[str] = []  # cut where copies would load too many tensors, one at a time
    reads = _tensors_read()
    while True:
        resolved, kept, cut = _resolve(program, defs, set(shared), max_size, max_reads, reads)
        if cut is None:
            break
        shared.append(cut)
    if not resolved:
        return program

    inlined = [n for n in resolved]
    large = [n for n in kept if n not in shared]

    def rewrite_stmt(s: Stmt) -> Stmt | None:
        if s.target.tensor in resolved:
            return None
        if s.target.tensor in kept:
            return replace(s, expr=kept[s.target.tensor])
        return map_exprs(s, lambda e: _inline_into(e, resolved, program.dtypes))

    body = map_stmts(program.body, rewrite_stmt)
    proof = Proof(
        "inline " + ", ".join(inlined), True,
        "each inlined temporary has a single pointwise writer over its whole shape, so every read "
        "equals the writer's expression at the read index" + (
            f"; kept {', '.join(large)}: more than {max_size} nodes each, which every read would copy" if large else "") + (
            f"; kept {', '.join(shared)}: read by several statements, where a copy would load more than "
            f"{max_reads} tensors (each reader would load them all)" if shared else ""))
    return drop_unused_temps(program.replace(body=body)).with_proofs(proof)


@dataclass(frozen=True)
class InlinePointwise(Pass):
    """Inline pointwise producers into their consumers."""

    name: ClassVar[str] = "inline"
    max_size: int = option(MAX_SIZE, "largest definition, in expression nodes as a tree with its own reads "
                                     "inlined, copied into its readers; a larger one stays a statement")
    max_reads: int = option(MAX_READS, "most tensors a definition read by several statements may load, its own "
                                       "reads inlined, and still be copied into its readers")

    def apply(self, program: Program) -> Program:
        return inline_pointwise(program, max_size=self.max_size, max_reads=self.max_reads)
