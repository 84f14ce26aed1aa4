"""Merge sums: a sum read only by another sum becomes part of it.

GQA's backward sums the gradient of the repeated keys over the query heads of each group,
``dk[b, g, j, d] += dk_rep[b, R g + r, j, d]`` over ``r``, where ``dk_rep[b, h, j, d] += t(b, h,
i, j, d)`` over the queries ``i``. Stored, ``dk_rep`` is a ``B·H·S·D`` buffer and a kernel of its
own. Merged, the inner sum's term is read in place, ``dk[b, g, j, d] += t(b, R g + r, i, j, d)``
over ``(r, i)``: one reduction, which fuse-reductions plans like any other (a serial loop over
the group's heads around the loop over the queries, in one program per key tile).

Legality: ``+`` is associative and commutative and the index of a read is substituted exactly:
``Σ_r T[f(P, r)] = Σ_r Σ_i t(f(P, r), i) = Σ_(r, i) t(f(P, r), i)`` for any index ``f`` (an
element read twice is summed twice either way). This holds when ``T[h]`` is exactly the inner
sum at every ``h`` read: ``T`` is a temporary with one writer, a plain ``+=`` (no rescale) whose
target is indexed by its parallel iterators, each once, and whose reduce loops have constant
bounds (they move unchanged into the reader); nothing between the two writes what the inner sum
reads (its operands hold the same values where the reader is); and the reader, the only one, is a
plain ``+=`` of ``T`` alone into the same dtype (no rounding between the two sums that merging
would remove). The lemma is recorded with the merge.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Const, Expr, Iter, Load
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import drop_unused_temps, fresh_name, nest_of, readers, rewrite_to_fixpoint, stmt_exprs, writers


def merge_sums(program: Program) -> Program:
    """Merge each sum read only by another sum into it (see the module docstring)."""
    return rewrite_to_fixpoint(program, _one_merge)


def _one_merge(program: Program) -> tuple[Program, Proof] | None:
    placed = [(n, s, loops, guards) for n, node in enumerate(program.body) for s, loops, guards in walk_stmts((node,))]
    w, rd = writers(program), readers(program)
    for pos, (k, inner, loops, guards) in enumerate(placed):
        t = program.tensor(inner.target.tensor)
        if t.role != "temp" or len(w[t.name]) != 1 or not _plain_sum(inner):
            continue
        target = inner.target.indices
        if not all(isinstance(i, Iter) for i in target) or len({i.name for i in target}) != len(target):
            continue
        reduce_loops = [l for l in loops if l.kind == "reduce"]
        if {l.iterator for l in loops if l.kind != "reduce"} != {i.name for i in target}:
            continue
        if not all(isinstance(l.lower, Const) and isinstance(l.upper, Const) for l in reduce_loops):
            continue
        users = [s for s in rd.get(t.name, []) if s is not inner]
        if len(users) != 1:
            continue
        outer = users[0]
        at = next((p for p, entry in enumerate(placed) if entry[1] is outer), None)
        if at is None or at <= pos or not _plain_sum(outer) or not isinstance(outer.expr, Load):
            continue
        j, _, outer_loops, outer_guards = placed[at]
        if outer.expr.tensor != t.name or program.tensor(outer.target.tensor).dtype != t.dtype:
            continue
        if any(ld.tensor == t.name for e in (outer.target, *outer_guards) for ld in E.loads(e)):
            continue
        operands = {ld.tensor for e in stmt_exprs(inner, guards) for ld in E.loads(e)}
        if any(s.target.tensor in operands for _, s, _, _ in placed[pos + 1:at]):
            continue  # an operand changes before the reader: the term read there would differ
        return _merged(program, k, j, inner, guards, reduce_loops, outer, outer_loops, outer_guards)
    return None


def _plain_sum(s: Stmt) -> bool:
    return s.op == "+=" and s.scale is None and s.dot is None and s.tag is None


def _merged(program: Program, k: int, j: int, inner: Stmt, guards: tuple[Expr, ...], reduce_loops: list[Loop],
            outer: Stmt, outer_loops: tuple[Loop, ...], outer_guards: tuple[Expr, ...]) -> tuple[Program, Proof]:
    read = outer.expr
    assert isinstance(read, Load)
    taken = {l.iterator for l in outer_loops}
    subst: dict[str, Expr] = {i.name: f for i, f in zip(inner.target.indices, read.indices)}  # type: ignore[union-attr]
    new_loops = []
    for l in reduce_loops:
        name = fresh_name(l.iterator, taken)
        taken.add(name)
        subst[l.iterator] = Iter(name)
        new_loops.append(replace(l, iterator=name))

    def moved(e: Expr) -> Expr:
        return E.rewrite(e, lambda x: subst[x.name] if isinstance(x, Iter) and x.name in subst else None)

    stmt = replace(outer, expr=moved(inner.expr))
    nest: Node = nest_of((*outer_loops, *new_loops), (*outer_guards, *(moved(g) for g in guards)), stmt)
    body = list(program.body)
    body[j] = nest
    del body[k]
    proof = Proof(
        f"merge {inner.name} into {outer.name}", True,
        f"{outer.name} sums {read}, which {inner.name} sums over "
        f"{', '.join(l.iterator for l in reduce_loops)} alone (one writer, read nowhere else, the same dtype): "
        f"its term is read in place, over {', '.join(l.iterator for l in new_loops)} more",
        lemma="Σ_r Σ_i t(f(P, r), i) = Σ_(r, i) t(f(P, r), i): + is associative and commutative")
    return drop_unused_temps(program.replace(body=tuple(body))), proof


@dataclass(frozen=True)
class MergeSums(Pass):
    """Merge sums: a sum read only by another sum, at any index, becomes part of it."""

    name: ClassVar[str] = "merge-sums"

    def apply(self, program: Program) -> Program:
        return merge_sums(program)
