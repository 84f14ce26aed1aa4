"""Stage reductions: a reduction over several long loops becomes partial reductions over the
first of them, kept parallel, then a reduction of the partials.

``g[h] += f(h, i, j)`` over ``i`` and ``j`` (the gradient of a per-head ALiBi slope or
temperature, a loss summed over a whole matrix) is one program per ``h`` walking every
``(i, j)``: its own kernel spreads nothing over programs, and fuse-reductions would put it beside
statements that have rows to spread (``dQ``, whose ``i`` it reduces) and cost them their grid.
Staged::

    g_part[h, i] += f(h, i, j)     for h, i parallel; j reduce
    g[h] += g_part[h, i]           for h parallel; i reduce

the first joins a kernel over tiles of ``i`` (the backward's query-major one, which computes
``f`` anyway), the second folds ``S`` numbers per ``h``.

Legality: every combiner of the IR is associative and commutative (``+``, ``*``, ``max``,
``min``), so folding the terms of each ``i`` first and then the partials folds the same multiset
of terms into the same identity (the lemma). In floating point the order of rounding changes, as
every blocking of a sum does (tiling's too). The partial is a new temporary that each ``(h, i)``
writes once, read only by the second statement, which reads it after it is complete. The second
statement moves down to just before the first statement that reads or writes its target (the
end, for an output): no statement in between touches what it reads or writes, so the move
reorders no dependence, and the statements after the first (the rest of the kernel it joins)
are not cut off from it by a fold that needs all of it. Applied to statements in the lifted form (one statement per nest) with at least two
reduce loops longer than a block and no rescale; the first long reduce loop is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Expr, Iter, Load
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, TensorDecl, walk_stmts
from flashlight.passes.declare import Pass, option
from flashlight.passes.tree import fits_block, fresh_stmt_name, fresh_tensor_name, loop_extent, nest_of, stmt_exprs

BLOCK_LIMIT = 256  # as fuse-reductions': a loop at most this long is one block of a program


def stage_reductions(program: Program, block_limit: int = BLOCK_LIMIT) -> Program:
    """Stage each reduction over two or more long loops (see the module docstring)."""
    body: list[Node] = []
    proofs: list[Proof] = []
    waiting: list[Node] = []  # second stages, placed before the first statement that touches their target
    for nest in program.body:
        touched = _touched(nest)
        body += [w for w in waiting if _target(w) in touched]
        waiting = [w for w in waiting if _target(w) not in touched]
        found = list(walk_stmts((nest,)))
        staged = _staged(program, *found[0], block_limit) if len(found) == 1 else None
        if isinstance(staged, Proof) or staged is None:
            proofs += [staged] if staged is not None else []
            body.append(nest)
            continue
        program, first, second, keep = staged
        body.append(first)
        waiting.append(second)
        stmt = found[0][0]
        proofs.append(Proof(
            f"stage {stmt.name} over {keep}", True,
            f"partial {COMBINERS[stmt.op].reduce}s per {keep} in {_target(first)}, then their "
            f"{COMBINERS[stmt.op].reduce}: the same terms folded in another order",
            lemma=f"{stmt.op[:-1]} is associative and commutative: ⊕_({keep}, rest) f = ⊕_{keep} (⊕_rest f)"))
    if len(proofs) == sum(not p.legal for p in proofs):
        return program.with_proofs(*proofs)
    return program.replace(body=tuple(body + waiting)).with_proofs(*proofs)


def _staged(program: Program, stmt: Stmt, loops: tuple[Loop, ...], guards: tuple[Expr, ...], block_limit: int
            ) -> tuple[Program, Node, Node, str] | Proof | None:
    """The two stages of ``stmt`` (and the program declaring the partial), a refusal for a
    reduction over several loops that stays whole, or None."""
    reduce = [l for l in loops if l.kind == "reduce"]
    if not stmt.is_reduction or len(reduce) < 2:
        return None
    long = [l for l in reduce if not fits_block(loop_extent(l), block_limit)]
    if stmt.scale is not None or len(long) < 2:
        why = ("it carries a rescale (an online reduction: its partials would need their own repair)"
               if stmt.scale is not None else
               f"{len(long)} of its {len(reduce)} reduce loops {'is' if len(long) == 1 else 'are'} longer than a "
               f"block ({block_limit}): a program folds the rest whole")
        return Proof(f"stage {stmt.name}", False, why)
    keep = long[0]
    decl = program.tensor(stmt.target.tensor)
    name = fresh_tensor_name(program, decl.name + "_part")
    program = program.replace(tensors=program.tensors + (
        TensorDecl(name, decl.dtype, decl.shape + (loop_extent(keep),), "temp"),))
    partial = Load(name, stmt.target.indices + (Iter(keep.iterator),))
    outer = [l for l in loops if l.kind != "reduce"]
    first_loops = outer + [replace(keep, kind="parallel")] + [l for l in loops if l.kind == "reduce" and l is not keep]
    first = nest_of(first_loops, guards, replace(stmt, name=fresh_stmt_name(program, stmt.name + "_part"), target=partial))
    second = nest_of(outer + [keep], (), replace(stmt, expr=partial))
    return program, first, second, keep.iterator


def _target(nest: Node) -> str:
    return next(walk_stmts((nest,)))[0].target.tensor


def _touched(nest: Node) -> set[str]:
    return {t for s, _, guards in walk_stmts((nest,))
            for t in [s.target.tensor, *(ld.tensor for e in stmt_exprs(s, guards) for ld in E.loads(e))]}


@dataclass(frozen=True)
class StageReductions(Pass):
    """Stage reductions: partial reductions over one long reduce loop, kept parallel, then theirs."""

    name: ClassVar[str] = "stage-reductions"
    block_limit: int = option(BLOCK_LIMIT, "a reduce loop at most this long fits a block and is not staged")

    def apply(self, program: Program) -> Program:
        return stage_reductions(program, block_limit=self.block_limit)
