"""Restrict producers to the instances whose results are read (dead-instance elimination).

A statement ``W`` that is the only writer of a temporary ``t`` computes, at each instance, one
element of ``t``. If every read of ``t`` is an exact (affine) access, isl computes the elements
read, ``R = ∪_c reads_c(domain_c)``, and the instances of ``W`` that write them,
``needed = writes_W⁻¹(R) ∩ domain_W``. The other instances produce values nobody reads, so
removing them (a guard equal to ``gist(needed, domain_W)``) leaves every output unchanged.

For causal attention this moves the mask ``j <= i`` onto the score statement
``s[i, j] += q[i, d] * k[j, d]``, which is what lets the tiler skip key tiles above the diagonal
for the whole fused loop, not only for the softmax statements. A data-dependent guard that every
reader shares (``doc[i] == doc[j]``) moves to the writer the same way, by renaming the readers'
iterators through the read index (isl over-approximates such guards, so this part is syntactic).

Legality: the removed instances of ``W`` write elements of ``t`` that no statement reads: isl
computes the elements read exactly, since every read is affine, and a data-dependent guard moves
only when every reader has it, so an element is read only where it holds. ``W`` being the only
writer, no other value of those elements exists, so every value read, and with it every output,
is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.nodes import Guard, Program, Proof, Stmt, walk_stmts
from flashlight.ir.poly import PolyView, set_to_condition
from flashlight.passes.declare import Pass
from flashlight.passes.tree import map_stmts, writers


def restrict_to_demand(program: Program) -> Program:
    """Guard each temporary's single writer by the set of its instances that are read."""
    view = PolyView.of(program)
    w = writers(program)
    guards: dict[str, object] = {}
    notes = []
    for stmt, loops, _ in walk_stmts(program.body):
        t = program.tensor(stmt.target.tensor)
        if t.role != "temp" or len(w[t.name]) != 1:
            continue
        readers = [s for s in view.stmts.values() if s.name != stmt.name and _reads(s.reads, t.name)]
        if not readers or not all(r.exact for r in readers):
            continue
        read = isl.UnionSet("{ }")
        for r in readers:
            read = read.union(_restrict_range(r.reads, t.name).intersect_domain(
                isl.UnionSet.from_set(r.domain)).range())
        sv = view.stmts[stmt.name]
        needed = sv.writes.intersect_range(read).domain()
        needed_set = _only(needed, stmt.name)
        if needed_set is None or needed_set.is_equal(sv.domain):
            continue
        extra = needed_set.gist(sv.domain)
        cond = set_to_condition(extra, sv.iterators)
        if cond is None:
            continue
        guards[stmt.name] = cond
        notes.append(f"{stmt.name}: only instances with {cond} write elements of {t.name} that are read")
    for stmt, cond in _shared_data_guards(program, w).items():
        guards[stmt] = cond if stmt not in guards else E.call("and", guards[stmt], cond)  # type: ignore[arg-type]
        notes.append(f"{stmt}: every reader runs only where {cond}")
    if not guards:
        return program

    def guard(s: Stmt) -> Stmt | Guard:
        return Guard(guards[s.name], (s,)) if s.name in guards else s  # type: ignore[arg-type]

    proof = Proof("restrict to demand", True,
                  "removed instances write values no statement reads (isl: writes^-1(reads(domains)))",
                  lemma="; ".join(notes))
    return program.replace(body=map_stmts(program.body, guard)).with_proofs(proof)


def _shared_data_guards(program: Program, w: dict[str, list[Stmt]]) -> dict[str, Expr]:
    """Data-dependent guards every reader of a temporary shares, renamed to its writer's iterators.

    If each reader reads ``t[r0, ..., rn]`` (plain iterators) only under a guard ``g(r)``, the
    writer's instance that writes ``t[w]`` is read only where ``g(w)`` holds: guard it by ``g(w)``.
    """
    placed = list(walk_stmts(program.body))
    out: dict[str, Expr] = {}
    written_before: set[str] = set()
    for stmt, _, _ in placed:
        available = set(written_before) | {t.name for t in program.inputs}
        written_before.add(stmt.target.tensor)
        t = program.tensor(stmt.target.tensor)
        if t.role != "temp" or len(w[t.name]) != 1 or not all(isinstance(i, Iter) for i in stmt.target.indices):
            continue
        target = [i.name for i in stmt.target.indices]  # type: ignore[union-attr]
        common: set[Expr] | None = None
        for rd, _, guards in placed:
            if rd is stmt:
                continue
            lds = [ld for e in (rd.expr, rd.scale) if e is not None for ld in E.loads(e) if ld.tensor == t.name]
            if not lds:
                continue
            if any(ld.indices != lds[0].indices or not all(isinstance(i, Iter) for i in ld.indices) for ld in lds):
                common = set()
                break
            rename = {i.name: Iter(wn) for i, wn in zip(lds[0].indices, target)}  # type: ignore[union-attr]
            # a guard that reads a value the writer has not got yet (its own result) cannot move
            mine = {E.substitute(g, rename) for g in guards
                    if not is_affine_condition(g) and E.free_iters(g) <= set(rename)
                    and {ld.tensor for ld in E.loads(g)} <= available}
            common = mine if common is None else common & mine
        if common:
            cond = None
            for g in sorted(common, key=str):
                cond = g if cond is None else E.call("and", cond, g)
            out[stmt.name] = cond  # type: ignore[assignment]
    return out


def _reads(u: isl.UnionMap, tensor: str) -> bool:
    return not _restrict_range(u, tensor).is_empty()


def _restrict_range(u: isl.UnionMap, tensor: str) -> isl.UnionMap:
    out = isl.UnionMap("{ }")
    maps: list[isl.Map] = []
    u.foreach_map(maps.append)
    for m in maps:
        if m.get_tuple_name(isl.dim_type.out) == tensor:
            out = out.union(isl.UnionMap.from_map(m))
    return out


def _only(u: isl.UnionSet, name: str) -> isl.Set | None:
    sets: list[isl.Set] = []
    u.foreach_set(sets.append)
    for s in sets:
        if s.get_tuple_name() == name:
            return s
    return None


@dataclass(frozen=True)
class RestrictToDemand(Pass):
    """Restrict producers to the instances whose results are read (dead-instance elimination)."""

    name: ClassVar[str] = "restrict-to-demand"

    def apply(self, program: Program) -> Program:
        return restrict_to_demand(program)
