"""Join dimensions: a temporary read only as ``t[.., e // P, e % P, ..]`` becomes ``t[.., e, ..]``.

A paged cache's scores are computed per page and slot, ``s[b, h, p, r] = Σ_d q[b, h, d] ·
k_pages[table[b, p], r, h, d]``, and the softmax reads them as one row of keys through a view,
``s[b, h, j // P, j % P]``. Split-reductions re-indexes by chunk only a producer whose loop is the
split loop itself (``s[.., j]``), and fuse-reductions computes in a chunk's program only scores it
reads at plain iterators: a paged decode step stored its scores in a kernel of their own (run 21:
1375 GB/s of the cache read, against 2429 for the contiguous cache's split kernel in run 22).
Joined, the writer walks one loop ``f`` over ``A·P`` points with ``p = f // P`` and ``r = f % P``,
writes ``s[.., f]``, and every read is ``s[.., e]``: the paged scores are then the contiguous
case's, computed where they are read.

Legality: ``(p, r) ↦ P·p + r`` is a bijection of the writer's box ``[0, A) × [0, P)`` onto
``[0, A·P)``, so each element is written once, by the same expression at the same ``(p, r)``; and
a read at ``(e // P, e % P)`` reads element ``P·(e // P) + e % P = e`` (floor division's identity,
for every integer ``e``). It applies to a temporary with one writer, alone in its nest, whose two
adjacent target indices are iterators of parallel loops from 0 (the second to ``P``, a number)
that index nothing else of the target, and that every statement (value, indices, rescale, guards)
reads only through such a pair for the same ``P``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Loop, Program, Proof, Stmt, TensorDecl, node_exprs, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import fresh_name, map_exprs, map_node_exprs, nest_of, rewrite_to_fixpoint, writers


def join_dims(program: Program) -> Program:
    """Join each pair of dimensions read only as ``(e // P, e % P)`` (see the module docstring)."""
    return rewrite_to_fixpoint(program, _one_join)


def _one_join(program: Program) -> tuple[Program, Proof] | None:
    w = writers(program)
    where = {s.name: (k, loops, guards) for k, node in enumerate(program.body)
             for s, loops, guards in walk_stmts((node,))}
    for decl in program.tensors:
        if decl.role != "temp" or len(w.get(decl.name, [])) != 1:
            continue
        (stmt,) = w[decl.name]
        k, loops, guards = where[stmt.name]
        if len(list(walk_stmts((program.body[k],)))) != 1:
            continue
        # every read of it: the writer's own target is the one load of it that is no read
        reads = [ld for node in program.body for e in node_exprs(node) for ld in E.loads(e)
                 if ld.tensor == decl.name and ld is not stmt.target]
        if not reads:
            continue
        pos = _joinable(stmt, loops, reads)
        if pos is not None:
            return _joined(program, decl, stmt, k, loops, guards, pos)
    return None


def _split_of(load: Load, pos: int) -> tuple[Expr, int] | None:
    """``(e, P)`` where ``load`` reads ``(e // P, e % P)`` at ``pos, pos + 1``."""
    a, b = load.indices[pos], load.indices[pos + 1]
    if not (isinstance(a, Call) and a.op == "floordiv" and isinstance(b, Call) and b.op == "mod"):
        return None
    if a.args[0] != b.args[0] or a.args[1] != b.args[1] or not isinstance(a.args[1], Const):
        return None
    return a.args[0], int(a.args[1].value)


def _joinable(stmt: Stmt, loops: tuple[Loop, ...], reads: list[Load]) -> int | None:
    target = stmt.target.indices
    by_name = {l.iterator: l for l in loops}
    for pos in range(len(target) - 1):
        a, b = target[pos], target[pos + 1]
        if not (isinstance(a, Iter) and isinstance(b, Iter) and a.name in by_name and b.name in by_name):
            continue
        la, lb = by_name[a.name], by_name[b.name]
        if a.name == b.name or any(l.kind != "parallel" or l.lower != E.index(0) or not isinstance(l.upper, Const)
                                   for l in (la, lb)):
            continue
        if any({a.name, b.name} & E.free_iters(ix) for k, ix in enumerate(target) if k not in (pos, pos + 1)):
            continue
        size = int(lb.upper.value)  # type: ignore[union-attr]
        if all((found := _split_of(ld, pos)) is not None and found[1] == size for ld in reads):
            return pos
    return None


def _joined(program: Program, decl: TensorDecl, stmt: Stmt, k: int, loops: tuple[Loop, ...],
            guards: tuple[Expr, ...], pos: int) -> tuple[Program, Proof]:
    a, b = stmt.target.indices[pos], stmt.target.indices[pos + 1]
    assert isinstance(a, Iter) and isinstance(b, Iter)
    la = next(l for l in loops if l.iterator == a.name)
    lb = next(l for l in loops if l.iterator == b.name)
    n_a, n_b = int(la.upper.value), int(lb.upper.value)  # type: ignore[union-attr]
    f = fresh_name(a.name + b.name, {l.iterator for _, ls, _ in walk_stmts(program.body) for l in ls})
    at = {a.name: E.call("floordiv", Iter(f), E.index(n_b)), b.name: E.call("mod", Iter(f), E.index(n_b))}
    target = Load(decl.name, stmt.target.indices[:pos] + (Iter(f),) + stmt.target.indices[pos + 2:])
    written = replace(map_exprs(stmt, lambda e: E.substitute(e, at)), target=target)
    new_loops = [replace(l, iterator=f, upper=E.index(n_a * n_b), body=()) if l is la else l
                 for l in loops if l is not lb]
    nest = nest_of(new_loops, tuple(E.substitute(g, at) for g in guards), written)

    def read_joined(e: Expr) -> Expr:
        return E.rewrite(e, lambda x: Load(x.tensor, x.indices[:pos] + (_split_of(x, pos)[0],) + x.indices[pos + 2:])
                         if isinstance(x, Load) and x.tensor == decl.name else None)

    body = tuple(nest if i == k else map_node_exprs(node, read_joined) for i, node in enumerate(program.body))
    shape = decl.shape[:pos] + (n_a * n_b,) + decl.shape[pos + 2:]
    tensors = tuple(replace(t, shape=shape) if t.name == decl.name else t for t in program.tensors)
    proof = Proof(
        f"join dims {pos}, {pos + 1} of {decl.name}", True,
        f"{stmt.name} writes {decl.name}[.., {a.name}, {b.name}, ..] over {a.name} in 0:{n_a}, {b.name} in 0:{n_b}, "
        f"and every read is at (e // {n_b}, e % {n_b}): one loop {f} in 0:{n_a * n_b} writes it at {f}, read at e",
        lemma=f"(p, r) -> {n_b}·p + r is a bijection of [0,{n_a})x[0,{n_b}) onto [0,{n_a * n_b}); "
              f"{n_b}·(e // {n_b}) + e % {n_b} = e for every integer e")
    return program.replace(body=body, tensors=tensors), proof


@dataclass(frozen=True)
class JoinDims(Pass):
    """Join dimensions: a temporary read only as ``t[e // P, e % P]`` is written and read at ``e``."""

    name: ClassVar[str] = "join-dims"

    def apply(self, program: Program) -> Program:
        return join_dims(program)
