"""The nests fuse-reductions emits for a proved group: grid, serial and block loops, the serial
loop's declared online state, the copies of running values before each step, and the fixups that
restore eager's NaN in rows where a running maximum stays -inf.

The legality of what is emitted is argued in :mod:`flashlight.passes.fuse_reductions` (the
schedule) and :func:`empty_fixup` (where eager gives NaN).
"""

from __future__ import annotations

import math

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter, Load
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.nodes import Guard, Loop, Node, OnlineState, Program, Stmt, walk_stmts
from flashlight.ir.poly import PolyView, set_to_condition
from flashlight.passes import algebra
from flashlight.passes.tree import extent_expr, is_nan_fixup, nan_fixup, nest_of
from flashlight.passes.fusion_plan import Group, Rec, Running


def emit_group(program: Program, group: Group, rewrites: dict[str, Stmt], running: dict[str, Running]) -> Node:
    by_name = {r.name: r for r in group.recs}
    running_by_stmt = {info.stmt: info for info in running.values()}
    first = group.recs[0]
    phase_nodes: list[Node] = []
    for phase in group.phases:
        members: list[Node] = []
        for s in phase.members:
            r = by_name[s]
            stmt = rewrites.get(s, r.stmt)
            info = running_by_stmt.get(s)
            if info is not None:
                members.append(_copy_prev(r, stmt, info, group, [by_name[x] for x in info.readers if x in by_name],
                                           set(program.params)))
            node: Node = stmt
            for g in reversed(r.guards):
                node = Guard(g, (node,))
            for it in reversed(group.block[s]):
                l = r.loop(it)
                node = Loop(it, l.lower, l.upper, l.kind, (node,), mapping="block")
            for it in reversed(group.serial[s][len(phase.loops):]):  # a contraction's own long loop
                l = r.loop(it)
                node = Loop(it, l.lower, l.upper, l.kind, (node,), mapping="serial")
            members.append(node)
        fixups = [empty_fixup(program, by_name[s], rewrites[s], group, running)
                   for s in phase.members if s in rewrites and rewrites[s].scale is not None]
        fixups = [f for f in fixups if f is not None]
        if phase.loops:
            recs = [by_name[s] for s in phase.members]
            state_loop, state = _online_state(phase.members, rewrites, running_by_stmt)
            node = None
            for it in reversed(phase.loops):
                owner = next(r for r in recs if it in r.its)
                kinds = {r.loop(it).kind for r in recs if it in r.its}
                kind = "seq" if "seq" in kinds else "reduce" if "reduce" in kinds else "parallel"
                node = Loop(it, E.index(0), extent_expr(owner.extent(it)), kind,
                            tuple(members) if node is None else (node,), mapping="serial",
                            state=state if it == state_loop else None)
            phase_nodes.append(node)  # type: ignore[arg-type]
        else:
            phase_nodes.extend(members)
        phase_nodes.extend(fixups)
    body: tuple[Node, ...] = tuple(phase_nodes)
    for it in reversed(group.grid):
        body = (Loop(it, E.index(0), extent_expr(first.extent(it)), "parallel", body, mapping="grid"),)
    if len(body) > 1:  # statements without a parallel iterator: one program, a grid of one
        used = {l.iterator for r in group.recs for l in r.loops}
        it = next(f"p{k}" for k in range(len(used) + 1) if f"p{k}" not in used)
        body = (Loop(it, E.index(0), E.index(1), "parallel", body, mapping="grid"),)
    return body[0]


def _online_state(members: tuple[str, ...] | list[str], rewrites: dict[str, Stmt],
                  running_by_stmt: dict[str, Running]) -> tuple[str | None, OnlineState | None]:
    """The loop of a phase's running reductions and the state it carries: their targets, their
    previous values' copies, and the accumulators rescaled as they change."""
    infos = [running_by_stmt[s] for s in members if s in running_by_stmt]
    rescaled = [rewrites[s].target.tensor for s in members if s in rewrites and rewrites[s].scale is not None]
    if not infos and not rescaled:
        return None, None
    loops = {info.loop for info in infos}
    if len(loops) != 1:
        raise AssertionError(f"running reductions of one phase over several loops: {sorted(loops)}")
    state = OnlineState(tuple(dict.fromkeys(i.tensor for i in infos)), tuple(dict.fromkeys(i.prev for i in infos)),
                        tuple(dict.fromkeys(rescaled)))
    return next(iter(loops)), state


class RowsUnknown(Exception):
    """isl cannot state exactly in which rows a statement has terms (a data-dependent guard)."""


def empty_fixup(program: Program, r: Rec, stmt: Stmt, group: Group, running: dict[str, Running]) -> Node | None:
    """``z = where(y == -inf, nan, z)`` after the loop, where eager gives NaN and the online form 0.

    While a running max ``y`` stays ``-inf`` the online form folds with a finite reference, so a
    row whose every term is ``-inf`` ends at the identity. Eager folds ``F(-inf, y = -inf)``
    there: the lemma's side condition (finite ``y``) fails. Evaluating ``F`` with ``y`` and the
    max's own argument at ``-inf`` says what eager gets; if that is NaN, this restores it, in the
    rows where the statement has a term at all: a row it has none of folds nothing in eager
    either, whatever ``y`` is there (-inf too where restrict-to-demand left it uncomputed).
    Raises :class:`RowsUnknown` if isl cannot say which rows those are.
    """
    if any(is_nan_fixup(s) and s.target.tensor == r.stmt.target.tensor for s, _, _ in walk_stmts(program.body)):
        return None  # masks-to-domains already restores such rows (in this kernel or a later one)
    recs = {x.name: x for x in group.recs}
    for y, info in running.items():
        if r.name not in info.readers or info.stmt not in recs or recs[info.stmt].stmt.op != "max=":
            continue
        g = recs[info.stmt].stmt.expr
        minus_inf = E.const(-float("inf"), "f32")
        probe = E.rewrite(r.stmt.expr, lambda x: minus_inf if (x == g or (isinstance(x, Load) and x.tensor == y))
                          else None)
        value = algebra.abstract_eval(probe)
        if not (isinstance(value, float) and math.isnan(value)):
            continue
        y_load = next(ld for ld in E.loads(r.stmt.expr) if ld.tensor == y)
        rows = _rows_with_terms(program, r, tuple(i.name for i in stmt.target.indices if isinstance(i, Iter)))
        node: Node = nan_fixup(f"{stmt.name}_empty", stmt.target, y_load, program.dtypes, rows)
        for it in reversed(group.block[r.name]):
            if any(isinstance(i, Iter) and i.name == it for i in stmt.target.indices):
                l = r.loop(it)
                node = Loop(it, l.lower, l.upper, "parallel", (node,), mapping="block")
        return node
    return None


def _rows_with_terms(program: Program, r: Rec, rows: tuple[str, ...]) -> Expr | None:
    """The condition on ``rows`` (the iterators of ``r``'s target) under which ``r`` has an
    instance: its guarded domain with the other iterators projected out; None if every row has.
    A data-dependent guard of the rows alone (a loss's ``target != ignore_index``) is kept as it
    is: a row where it fails has no term; one that reads a reduced iterator cannot be projected."""
    def projected(guards: tuple[Expr, ...]) -> isl.Set:
        dom = PolyView.of(program.replace(body=(nest_of(r.loops, guards, r.stmt),))).stmts[r.name].domain
        for k in reversed(range(len(r.its))):
            if r.its[k] not in rows:
                dom = dom.project_out(isl.dim_type.set, k, 1)
        return dom
    affine = tuple(g for g in r.guards if is_affine_condition(g))
    of_rows = [g for g in r.guards if g not in affine]
    if any(not E.free_iters(g) <= set(rows) for g in of_rows):
        raise RowsUnknown(f"{r.name} has a data-dependent guard on its reduced iterators")
    domain, box = projected(affine), projected(())
    cond = None
    if not domain.is_equal(box):
        kept = tuple(it for it in r.its if it in rows)
        cond = set_to_condition(domain.gist(box), kept)
        if cond is None:
            raise RowsUnknown(f"the rows where {r.name} has terms need existential variables: {domain}")
    for g in of_rows:
        cond = g if cond is None else E.call("and", cond, g)
    return cond


def _copy_prev(r: Rec, stmt: Stmt, info: Running, group: Group, readers: list[Rec], params: set[str]) -> Node:
    """``y_prev = y`` before the running reduction; it runs where its readers do (only they
    read the copy, in the same iteration), so it carries their guards when they share them and
    read only iterators bound where the copy runs (a guard on a reader's own block iterator,
    ``if i3 == 0`` of a sliced P @ V, would be unbound there: then it runs unguarded)."""
    target = stmt.target
    node: Node = Stmt(f"{stmt.name}_prev", Load(info.prev, target.indices), "=", target)
    shared = {rd.guards for rd in readers}
    bound = set(r.its) - {it for it in group.block[r.name] if not any(
        isinstance(i, Iter) and i.name == it for i in target.indices)} | params
    if len(shared) == 1 and all(E.free_iters(g) <= bound for g in next(iter(shared))):
        for g in reversed(next(iter(shared))):
            node = Guard(g, (node,))
    for it in reversed(group.block[r.name]):
        if any(isinstance(i, Iter) and i.name == it for i in target.indices):
            l = r.loop(it)
            node = Loop(it, l.lower, l.upper, "parallel", (node,), mapping="block")
    return node
