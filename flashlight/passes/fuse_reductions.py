"""Fuse nests into kernels, rewriting dependent reductions into online form where that is legal.

Input: a program in the lifted form, one statement per top-level nest. Output: one top-level
nest per *kernel*, each loop mapped:

* ``@grid`` loops: the iterators parallel in every statement of the kernel (one program each);
* ``@serial`` loops: inside a program, in *phases*; a phase loops over the iterator that couples
  its statements (one statement reduces over it while reading another's result along it), or
  over an iterator too large to hold in one block;
* ``@block`` loops: the remaining iterators, whole inside a program (a head dimension).

Statements are taken in program order. Each joins the current kernel if (1) the kernel keeps a
grid, (2) isl finds no dependence that the fused schedule runs backwards (``deps ∩
lex_ge(fused) = ∅``) nor one between different grid points, and (3) every temporary both
written and read inside the kernel can stay in the registers of one program. Inside a kernel, a
statement joins the current phase's loop if that is legal as is; if isl refuses because the
statement reads the *final* value of a reduction of that loop (the witness
``S9[.., j = last] -> S12[.., j']``), the online rewrite is tried: the algebraic lemma of
:mod:`flashlight.passes.algebra` must hold, and isl must accept the fused schedule for the
rewritten program with its running values expanded into single-assignment form
(``y_run[p, j+1] = y_run[p, j] ⊕ g(x_j)``; readers use ``y_run[p, j]`` and ``y_run[p, j+1]``).
Otherwise the statement opens a new phase: a second pass over the same loop in the same kernel.

A kernel whose running vectors per row (accumulators such as ``P @ V``'s) add up to more than
``state_limit`` columns cannot keep them in registers. It is split in two when a slice of the
statements can run first as a kernel of its own: one wide accumulator, what it reads, whoever
reads a tile of the slice, and whoever reads only the slice's results; the rest follows and reads
the slice's final per-row values from memory (differential attention at D128: one softmax chain
per kernel). isl checks that running the slice first runs no dependence backwards.

The rewritten statement reads the running value and carries the repair factor as its
``rescale``; a copy ``y_prev = y`` before the running reduction keeps the old value. For a
running ``max``, the new value enters ``F`` and the rescale through ``where(y == -inf, 0, y)``:
any finite reference keeps the invariant ``z = ⊕ G(x_j) ⊗ H(ref)``, and while ``y`` is still
``-inf`` the accumulator is the identity, so ``exp(-inf - ref) = 0`` repairs it safely.

Legality: fusing, mapping and splitting only reorder statement instances, and each order is
checked with isl against the memory dependences (RAW, WAR, WAW): no dependence runs backwards
under the fused schedule (``deps ∩ lex_ge(fused) = ∅``) or links two grid points, which run in
different programs with no order between them. The online rewrite also changes what a statement
computes; it is applied only where the lemma of :mod:`flashlight.passes.algebra` shows that the
running value, repaired by its rescale factor, equals the one computed from the final reduction,
and isl accepts the fused schedule of the single-assignment form. Every refusal records isl's
witness or the failed lemma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr, Iter, Load
from flashlight.ir.isl_build import Term, is_affine_condition, isl_name, schedule_map
from flashlight.ir.nodes import Guard, Loop, Node, OnlineState, Program, Proof, Stmt, TensorDecl, walk_stmts
from flashlight.ir.poly import PolyView, set_to_condition
from flashlight.passes import algebra
from flashlight.passes.declare import Pass, option
from flashlight.passes.dependences import (flow_dependences, memory_dependences, parallel_violations,
                                           violations, witness)
from flashlight.passes.tree import fresh_tensor_name, is_nan_fixup, nan_fixup


BLOCK_LIMIT = 256
# Running vectors a row one kernel may keep (fp32 accumulators summed over its statements). An H100
# thread holds at most 255 registers; a program of 64 rows on 4 warps spends W/2 of them on W
# columns a row. Differential attention at D128 keeps two accumulators of 256 columns: fused in
# one kernel 4.68 ms, best of 24 tile configurations 4.84, where two FlexAttention calls take 3.3.
STATE_LIMIT = 256


# {{{ statements in their own nests

@dataclass(frozen=True)
class Rec:
    stmt: Stmt
    loops: tuple[Loop, ...]
    guards: tuple[Expr, ...]

    @property
    def name(self) -> str:
        return self.stmt.name

    @property
    def its(self) -> tuple[str, ...]:
        return tuple(l.iterator for l in self.loops)

    def extent(self, it: str) -> int:
        return int(self.loop(it).upper.value)  # type: ignore[union-attr]

    def loop(self, it: str) -> Loop:
        return next(l for l in self.loops if l.iterator == it)

    @property
    def parallel(self) -> tuple[str, ...]:
        return tuple(l.iterator for l in self.loops if l.kind == "parallel")


def _records(program: Program) -> list[Rec] | None:
    recs = []
    for nest in program.body:
        found = list(walk_stmts((nest,)))
        if len(found) != 1:
            return None
        stmt, loops, guards = found[0]
        if any(not (isinstance(l.lower, Const) and l.lower.value == 0 and isinstance(l.upper, Const))
               for l in loops):
            return None
        recs.append(Rec(stmt, loops, guards))
    return recs

# }}}


# {{{ plans

@dataclass
class Phase:
    loops: tuple[str, ...]
    members: list[str] = field(default_factory=list)


@dataclass
class Group:
    grid: tuple[str, ...]
    phases: list[Phase]
    recs: list[Rec]
    serial: dict[str, tuple[str, ...]]  # statement -> its serial iterators
    block: dict[str, tuple[str, ...]]   # statement -> its block iterators


@dataclass(frozen=True)
class Running:
    """A reduction whose running value is read inside its own loop by rewritten statements."""

    stmt: str
    tensor: str
    loop: str
    extent: int
    prev: str       # temporary holding the value before the current step
    readers: frozenset[str]


def _roles(recs: list[Rec], block_limit: int) -> tuple[tuple[str, ...], dict, dict] | None:
    """Grid iterators and, per statement, serial and block iterators.

    An iterator is serial (a loop over tiles inside the program) if it is too large for one block,
    or if it *couples* the statements: some statement reduces over it while reading, at an index
    that varies with it, a tensor another statement of the group produces (the key index of
    attention: the softmax reductions read the score tile ``s[i, j]``).
    """
    first = recs[0]
    grid = tuple(it for it in first.its
                 if all(it in r.parallel for r in recs) and len({r.extent(it) for r in recs}) == 1)
    if len(recs) > 1 and not grid and any(r.parallel for r in recs):
        return None  # one program would do what several did in parallel (a reduction to a scalar has none)
    extents: dict[str, int] = {}
    for r in recs:  # one name, one extent: a kernel's axes are named by their iterators
        for it in r.its:
            if extents.setdefault(it, r.extent(it)) != r.extent(it):
                return None
    produced = {r.stmt.target.tensor: r.name for r in recs}
    coupling: set[str] = set()
    for r in recs:
        reduced = {l.iterator for l in r.loops if l.kind == "reduce"}
        for ld in E.loads(r.stmt.expr):
            writer = produced.get(ld.tensor)
            if writer is not None and writer != r.name:
                coupling |= reduced & {i for x in ld.indices for i in E.free_iters(x)}
    serial, block = {}, {}
    for r in recs:
        rest = [it for it in r.its if it not in grid]
        # a seq loop carries a dependence from one point to the next: it is walked, never a block
        s = tuple(it for it in rest if it in coupling or r.extent(it) > block_limit or r.loop(it).kind == "seq")
        serial[r.name] = s
        block[r.name] = tuple(it for it in rest if it not in s)
    return grid, serial, block

# }}}


# {{{ the analysed program: rewritten statements with running values expanded

def _guarded(guards: tuple[Expr, ...], value: Expr, identity: Expr) -> Expr:
    for g in guards:
        value = E.call("where", g, value, identity)
    return value


def analysis_program(program: Program, recs: list[Rec], rewrites: dict[str, Stmt],
                     running: dict[str, Running]) -> Program:
    """The program whose dependences license the fused schedule.

    Rewritten statements replace their originals, and each running value ``y`` becomes the
    single-assignment ``y_run[p, j]`` (the value after ``j`` steps): the running reduction writes
    ``y_run[p, j+1]`` from ``y_run[p, j]`` at every ``j``; inside the loop, rewritten readers read
    ``y_run[p, j+1]`` for ``y`` and ``y_run[p, j]`` for ``y_prev``; everyone else reads the final
    ``y_run[p, N]``.
    """
    if not running:
        body = tuple(_nest(r.loops, r.guards, rewrites.get(r.name, r.stmt)) for r in recs)
        return program.replace(body=body)
    tensors = list(program.tensors)
    run_of = {}
    for y, info in running.items():
        decl = program.tensor(y)
        rname = fresh_tensor_name(program.replace(tensors=tuple(tensors)), y + "_run")
        tensors.append(TensorDecl(rname, decl.dtype, decl.shape + (info.extent + 1,), "temp"))
        run_of[y] = rname
        tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
    body: list[Node] = []
    for r in recs:
        stmt = rewrites.get(r.name, r.stmt)
        by_stmt = {info.stmt: (y, info) for y, info in running.items()}
        if r.name in by_stmt:
            y, info = by_stmt[r.name]
            p = stmt.target.indices
            j = Iter(info.loop)
            old = Load(run_of[y], p + (j,))
            new = Load(run_of[y], p + (E.add(j, E.index(1)),))
            ident = E.const(COMBINERS[stmt.op].identity(program.tensor(y).dtype), program.tensor(y).dtype)
            term = _guarded(r.guards, _redirect(stmt.expr, running, run_of, r.name), ident)
            if stmt.scale is not None:
                scale = _redirect(stmt.scale, running, run_of, r.name)
                old = E.call("mul" if stmt.op == "+=" else "add", old, scale)
            body.append(_nest(r.loops, (), Stmt(stmt.name, new, "=", E.call(COMBINERS[stmt.op].combine, old, term))))
            continue

        def redirect(e: Expr, name: str = r.name) -> Expr:
            return _redirect(e, running, run_of, name)
        new_stmt = replace(stmt, expr=redirect(stmt.expr),
                           scale=None if stmt.scale is None else redirect(stmt.scale))
        body.append(_nest(r.loops, r.guards, new_stmt))
    return program.replace(tensors=tuple(tensors), body=tuple(body))


def _redirect(e: Expr, running: dict[str, Running], run_of: dict[str, str], reader: str) -> Expr:
    prev_of = {info.prev: y for y, info in running.items()}

    def fold(x: Expr) -> Expr | None:
        if not isinstance(x, Load):
            return None
        if x.tensor in running:
            info = running[x.tensor]
            if reader in info.readers or reader == info.stmt:
                return Load(run_of[x.tensor], x.indices + (E.add(Iter(info.loop), E.index(1)),))
            return Load(run_of[x.tensor], x.indices + (E.index(info.extent),))
        if x.tensor in prev_of:
            y = prev_of[x.tensor]
            return Load(run_of[y], x.indices + (Iter(running[y].loop),))
        return None

    return E.rewrite(e, fold)


def _nest(loops: tuple[Loop, ...], guards: tuple[Expr, ...], stmt: Stmt) -> Node:
    node: Node = stmt
    for g in reversed(guards):
        node = Guard(g, (node,))
    for l in reversed(loops):
        node = Loop(l.iterator, l.lower, l.upper, l.kind, (node,))
    return node

# }}}


# {{{ schedules

@dataclass
class Layout:
    """Where every statement goes: planned groups, then the rest in their own nests."""

    groups: list[Group]
    rest: list[Rec]

    def schedule(self, view: PolyView) -> isl.UnionMap:
        """``[group, grid..., phase, serial..., position, block...]`` for every statement, each of
        the three sections padded with zeros to a common width."""
        rows: list[tuple[str, list[list[Term]]]] = []
        for g, grp in enumerate(self.groups):
            for p, phase in enumerate(grp.phases):
                for k, s in enumerate(phase.members):
                    rows.append((s, [[g, *grp.grid], [p, *grp.serial[s]], [k, *grp.block[s]]]))
        for r in self.rest:
            g = len(self.groups) + self.rest.index(r)
            rows.append((r.name, [[g, *r.its], [0], [0]]))
        widths = [max(len(sections[k]) for _, sections in rows) for k in range(3)]
        out = isl.UnionMap("{ }")
        for stmt, sections in rows:
            terms = [t for part, w in zip(sections, widths) for t in part + [0] * (w - len(part))]
            sv = view.stmts[stmt]
            out = out.union(isl.UnionMap.from_map(schedule_map(stmt, sv.iterators, terms, sv.domain)))
        return out

# }}}


@dataclass
class _Verdict:
    legal: bool
    bad: isl.UnionMap | None = None
    parallel_bad: isl.UnionMap | None = None


class _Fuser:
    def __init__(self, program: Program, recs: list[Rec], block_limit: int, state_limit: int) -> None:
        self.program = program
        self.state_limit = state_limit
        self.recs = recs
        self.block_limit = block_limit
        self.groups: list[Group] = []
        self.rewrites: dict[str, Stmt] = {}
        self.running: dict[str, Running] = {}
        self.proofs: list[Proof] = []
        self.prev_names: dict[str, str] = {}
        self._cache: dict[tuple, tuple[PolyView, isl.UnionMap]] = {}
        self._verdicts: dict[tuple, _Verdict] = {}

    def _analysis(self, members: set[str], rewrites: dict[str, Stmt], running: dict[str, Running]
                  ) -> tuple[PolyView, isl.UnionMap]:
        """The view and memory dependences of the candidate kernel's statements (cached).

        Only dependences among the kernel's own statements matter: earlier kernels run before it
        and later ones after, so every other dependence points forward anyway."""
        key = _analysis_key(members, rewrites, running)
        hit = self._cache.get(key)
        if hit is None:
            recs = [r for r in self.recs if r.name in members]
            view = PolyView.of(analysis_program(self.program, recs, dict(key[1]), dict(key[2])))
            hit = self._cache[key] = (view, memory_dependences(view).all)
        return hit

    def check(self, groups: list[Group], rewrites: dict[str, Stmt], running: dict[str, Running]) -> _Verdict:
        """isl's verdict on the last group's fused schedule (cached: planning a kernel one statement
        longer checks every shorter one again)."""
        group = groups[-1]
        members = {s for p in group.phases for s in p.members}
        layout = (group.grid, tuple((p.loops, tuple(p.members)) for p in group.phases),
                  tuple((s, group.serial[s], group.block[s]) for s in sorted(members)))
        key = (layout, _analysis_key(members, rewrites, running))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._check(group, members, rewrites, running)
        return verdict

    def _check(self, group: Group, members: set[str], rewrites: dict[str, Stmt], running: dict[str, Running]
               ) -> _Verdict:
        view, deps = self._analysis(members, rewrites, running)
        sched = Layout([group], []).schedule(view)
        # a plain reduction may fold its own instances in another order (its combiner is
        # associative and commutative): a serial loop around a block loop of one sum, as tile does
        folds = {r.name for r in group.recs if r.name in members and r.name not in {i.stmt for i in running.values()}
                 and _plain_reduction(rewrites.get(r.name, r.stmt))}
        bad = violations(_without_self(deps, folds), sched)
        if not bad.is_empty():
            return _Verdict(False, bad=bad)
        par = parallel_violations(deps, sched, 0, len(group.grid))
        if not par.is_empty():
            return _Verdict(False, parallel_bad=par)
        return _Verdict(True)

    def naive_witness(self, groups: list[Group], rewrites: dict[str, Stmt], running: dict[str, Running],
                      bad: isl.UnionMap) -> tuple[str, str | None]:
        """The value-based (flow) part of a violation, else the memory-based one."""
        group = groups[-1]
        members = {s for p in group.phases for s in p.members}
        members |= {m.get_tuple_name(isl.dim_type.in_) for m in _maps(bad)}
        members |= {m.get_tuple_name(isl.dim_type.out) for m in _maps(bad)}
        view, _ = self._analysis(members, rewrites, running)
        flow = flow_dependences(view).intersect(bad).coalesce()
        rel = flow if not flow.is_empty() else bad
        return str(rel), witness(rel)

    def plan(self, recs: list[Rec]) -> tuple[Group, dict[str, Stmt], dict[str, Running], list[Proof]] | None:
        roles = _roles(recs, self.block_limit)
        if roles is None:
            return None
        grid, serial, block = roles
        group = Group(grid, [], recs, serial, block)
        rewrites = dict(self.rewrites)
        running = dict(self.running)
        proofs: list[Proof] = []
        done = self.groups
        for rec in recs:
            loops = serial[rec.name]
            cur = group.phases[-1] if group.phases else None
            if cur is not None and cur.loops == loops:
                cur.members.append(rec.name)
                verdict = self.check(done + [group], rewrites, running)
                if verdict.legal:
                    continue
                cur.members.pop()
                if loops and verdict.bad is not None:
                    attempt = self.online(group, rec, rewrites, running, verdict.bad)
                    proofs.extend(attempt[2])
                    if attempt[0] is not None:
                        rewrites, running = attempt[0], attempt[1]
                        cur.members.append(rec.name)
                        continue
            group.phases.append(Phase(loops, [rec.name]))
        verdict = self.check(done + [group], rewrites, running)
        if not verdict.legal:
            return None
        if not self.contractible(group, rewrites, running):
            return None
        return group, rewrites, running, proofs

    def online(self, group: Group, rec: Rec, rewrites: dict[str, Stmt], running: dict[str, Running],
               bad: isl.UnionMap) -> tuple[dict | None, dict | None, list[Proof]]:
        """Try the online rewrite of ``rec`` into the current phase."""
        phase = group.phases[-1]
        stmt = rec.stmt
        relation, wit = self.naive_witness(self.groups + [group], rewrites, running, bad)
        what = f"fuse {stmt.name} into the {', '.join(phase.loops)} loop of {', '.join(phase.members)}"
        refusal = Proof(what, False, "a dependence would run backwards under the fused schedule",
                        relation=relation, witness=wit)
        loop_its = set(phase.loops)
        if (len(phase.loops) != 1 or not stmt.is_reduction or COMBINERS[stmt.op].partner is None
                or stmt.scale is not None):
            return None, None, [refusal]
        if any(isinstance(i, Iter) and i.name in loop_its for i in stmt.target.indices):
            return None, None, [refusal]
        j = phase.loops[0]
        members = {r.name: r for r in group.recs if r.name in phase.members}
        candidates = {}
        for m in members.values():
            t = m.stmt.target
            if m.stmt.is_reduction and not any(isinstance(i, Iter) and i.name in loop_its for i in t.indices):
                candidates[t.tensor] = m
        ys = tuple(dict.fromkeys(ld for ld in E.loads(stmt.expr) if ld.tensor in candidates))
        if not ys or any(E.free_iters(y) & loop_its for y in ys):
            return None, None, [refusal]
        try:
            lemma = algebra.prove_online(stmt.expr, ys, stmt.op)
        except algebra.NotSeparable as why:
            return None, None, [refusal, Proof(
                f"online rewrite of {stmt.name}", False,
                f"the lemma fails for F = {stmt.expr} in y = {', '.join(str(y) for y in ys)}: {why}")]
        new_running = dict(running)
        prev_loads, safe_loads = [], []
        for y in ys:
            src = candidates[y.tensor]
            info = new_running.get(y.tensor)
            if info is None:
                prev = self.fresh_prev(y.tensor)
                info = Running(src.name, y.tensor, j, rec.extent(j) if j in rec.its else src.extent(j),
                               prev, frozenset())
            info = replace(info, readers=info.readers | {stmt.name})
            new_running[y.tensor] = info
            prev_loads.append(Load(info.prev, y.indices))
            safe_loads.append(_safe(y, src.stmt.op, self.program.tensor(y.tensor).dtype))
        subst = dict(zip(ys, safe_loads))
        acc_dtype = self.program.tensor(stmt.target.tensor).dtype
        try:
            c = _fold_safe(algebra.to_ir(lemma, prev_loads, safe_loads, acc_dtype), safe_loads)
        except algebra.NotSeparable as why:
            return None, None, [refusal, Proof(f"online rewrite of {stmt.name}", False,
                                               f"the rescale has no IR form: {why}", lemma=lemma.statement())]
        if lemma.functions:
            guarded = _guard_first_rescale(stmt, [candidates[y.tensor].stmt for y in ys], prev_loads, c,
                                           self.program.dtypes)
            if guarded is None:
                return None, None, [refusal, Proof(
                    f"online rewrite of {stmt.name}", False,
                    "the rescale applies opaque functions of the running values, which may overflow while "
                    "they are the identity, and the terms folded then are not provably the identity",
                    lemma=lemma.statement())]
            c = guarded
        new_stmt = replace(stmt, expr=_fold_safe(E.rewrite(stmt.expr, lambda x: subst.get(x)), safe_loads), scale=c)
        new_rewrites = dict(rewrites)
        new_rewrites[stmt.name] = new_stmt
        phase.members.append(stmt.name)
        verdict = self.check(self.groups + [group], new_rewrites, new_running)
        phase.members.pop()
        if not verdict.legal:
            rel = verdict.bad if verdict.bad is not None else verdict.parallel_bad
            return None, None, [refusal, Proof(
                f"online rewrite of {stmt.name}", False, "the rewritten program still violates a dependence",
                relation=str(rel), witness=witness(rel), lemma=lemma.statement())]
        try:
            _empty_fixup(self.program, rec, new_stmt, group, new_running)
        except _RowsUnknown as why:
            return None, None, [refusal, Proof(
                f"online rewrite of {stmt.name}", False, "a row where it folds no term (eager gives the identity) "
                f"cannot be told from one whose running max stays -inf (eager gives NaN): {why}")]
        accepted = Proof(
            f"online rewrite of {stmt.name} into the {j} loop", True,
            "the running values expanded to single assignment, no dependence of the rewritten "
            "program runs backwards under the fused schedule: deps ∩ lex_ge(fused) = ∅",
            relation="∅", lemma=lemma.statement())
        return new_rewrites, new_running, [refusal, accepted]

    def fresh_prev(self, y: str) -> str:
        if y not in self.prev_names:
            taken = set(self.program.tensor_map) | set(self.prev_names.values())
            name, k = y + "_prev", 1
            while name in taken:
                name, k = f"{y}_prev_{k}", k + 1
            self.prev_names[y] = name
        return self.prev_names[y]

    def contractible(self, group: Group, rewrites: dict[str, Stmt], running: dict[str, Running]) -> bool:
        """Temporaries written and read inside the group must stay in one program's registers."""
        from flashlight.passes.contract_buffers import local_temps

        members = {r.name for r in group.recs}
        mine = {y: info for y, info in running.items() if info.stmt in members}
        nest = emit_group(self.program, group, rewrites, mine)
        local = local_temps(self.program_with(nest, running), nest)
        for r in group.recs:
            t = rewrites.get(r.name, r.stmt).target.tensor
            if self.program.tensor(t).role != "temp":
                continue
            read_inside = any(ld.tensor == t for o in group.recs if o.name in members
                              for ld in E.loads(rewrites.get(o.name, o.stmt).expr))
            if read_inside and t not in local:
                return False
        return True

    def split_state(self, recs: list[Rec]) -> tuple[list[Rec], list[Rec]] | None:
        """Two kernels for a group whose wide running state exceeds ``state_limit``: the first
        takes one wide accumulator with its slice (see below), the second the rest, run after it.
        Legal if the reordered sequence of nests runs no dependence backwards (isl) and both parts
        plan as kernels; the second reads from the first only per-row values (final reductions,
        stored to memory: O(rows x columns)), since a statement that reads a tile of the slice's
        serial loop is taken into the slice."""
        group = self.groups_pending[0]  # type: ignore[has-type]
        wide = _wide_state(group)
        if sum(wide.values()) <= self.state_limit:
            return None
        produced = {r.stmt.target.tensor: r for r in recs}
        by_name = {r.name: r for r in recs}

        def tiled(r: Rec) -> bool:  # its result is a tile of the serial loop, not a value per row
            return bool(set(group.serial[r.name]) & {i for x in r.stmt.target.indices for i in E.free_iters(x)})

        def reads(r: Rec) -> set[str]:  # the statements of the group whose results r reads
            return {produced[ld.tensor].name for ld in E.loads(r.stmt.expr) if ld.tensor in produced}

        for w in wide:
            # the slice: w, what it reads, whoever reads a tile of the slice (tiles never leave the
            # kernel), and whoever reads the slice's results and nothing of the rest, to a fixed point
            need: set[str] = set()
            todo = [w]
            while todo:
                n = todo.pop()
                if n not in need:
                    need.add(n)
                    todo += reads(by_name[n])
                    if tiled(by_name[n]):
                        todo += [x.name for x in recs if n in reads(x)]
                if not todo:
                    todo = [x.name for x in recs if x.name not in need and reads(x) and reads(x) <= need]
            first = [r for r in recs if r.name in need]
            rest = [r for r in recs if r.name not in need]
            if not rest:
                continue
            view, deps = self._analysis({r.name for r in recs}, {}, {})
            order = Layout([], first + rest).schedule(view)
            bad = violations(deps, order)
            if not bad.is_empty():
                self.proofs.append(Proof(
                    f"split [{', '.join(r.name for r in recs)}] before {rest[0].name}", False,
                    f"running the slice of {w} first would run a dependence backwards", relation=str(bad),
                    witness=witness(bad)))
                continue
            plans = self.plan(first), self.plan(rest)
            if plans[0] is None or plans[1] is None:
                continue
            crossing = sorted({ld.tensor for r in rest for ld in E.loads(r.stmt.expr)
                               if ld.tensor in produced and produced[ld.tensor].name in need})
            self.proofs.append(Proof(
                f"split [{', '.join(r.name for r in recs)}] into [{', '.join(r.name for r in first)}] "
                f"and [{', '.join(r.name for r in rest)}]", True,
                f"one kernel would hold {sum(wide.values())} running values a row "
                f"({', '.join(f'{s}: {n}' for s, n in wide.items())}; limit {self.state_limit}); the reordered nests "
                f"run no dependence backwards, and the second kernel reads {', '.join(crossing) or 'nothing'} "
                "of the first from memory", relation="∅"))
            return first, rest
        return None

    def program_with(self, nest: Node, running: dict[str, Running]) -> Program:
        tensors = list(self.program.tensors)
        for info in running.values():
            if info.prev not in self.program.tensor_map:
                decl = self.program.tensor(info.tensor)
                tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
        return self.program.replace(tensors=tuple(tensors), body=(nest,))

    def run(self) -> Program:
        current: list[Rec] = []
        aside: list[Rec] = []  # statements no dependence connects with the open kernel: they run first
        for rec in self.recs:
            if current and _unrelated(current, rec) and not self.keeps_grid(current, rec):
                # fusing it would only share loads and cost the kernel its grid: it goes aside, into
                # a kernel of its own before the open one (with the statements set aside after it)
                joined = self.plan(aside + [rec]) if aside else None
                if joined is None and aside:
                    self.hoist(aside, current)
                    aside = []
                aside = aside + [rec]
                self.aside_pending = joined or self.plan([rec])
                assert self.aside_pending is not None, f"{rec.name} cannot even form its own kernel"
                continue
            attempt = self.plan(current + [rec]) if current else None
            if attempt is not None:
                current = current + [rec]
                self.groups_pending = attempt
                continue
            if aside:
                self.hoist(aside, current)
                aside = []
            if current:
                self.commit(current)
            current = [rec]
            single = self.plan(current)
            assert single is not None, f"{rec.name} cannot even form its own kernel"
            self.groups_pending = single
        if aside:
            self.hoist(aside, current)
        if current:
            self.commit(current)
        return self.emit()

    def keeps_grid(self, current: list[Rec], rec: Rec) -> bool:
        roles = _roles(current + [rec], self.block_limit)
        return roles is not None and roles[0] == self.groups_pending[0].grid

    def hoist(self, aside: list[Rec], current: list[Rec]) -> None:
        """The statements set aside, as a kernel before the open one: legal because no dependence
        connects them with it (they read nothing it writes and write nothing it touches), and the
        open kernel stays open for the statements after them that continue it (a score matrix and
        the softmax that reads it, with unrelated projections written between them)."""
        pending = self.groups_pending
        self.groups_pending = self.aside_pending
        self.proofs.append(Proof(
            f"hoist [{', '.join(r.name for r in aside)}] before [{', '.join(r.name for r in current)}]", True,
            "they read nothing those write and write nothing those read or write: no dependence orders "
            "them, and fusing them would only share loads", relation="∅"))
        self.commit(aside)
        self.groups_pending = pending  # a plan adds only its own members' rewrites (commit merges them)

    def commit(self, recs: list[Rec]) -> None:
        split = self.split_state(recs)
        if split is not None:
            for part in split:  # planned again: a plan carries the rewrites of the kernels before it
                self.groups_pending = self.plan(part)
                self.commit(part)
            return
        group, rewrites, running, proofs = self.groups_pending  # type: ignore[has-type]
        self.groups.append(group)
        # plans of the kernel set aside and of the open one start from the same committed rewrites
        # and add their own members' (disjoint): the union is what both committed
        self.rewrites, self.running = {**self.rewrites, **rewrites}, {**self.running, **running}
        self.proofs.extend(proofs)
        self.proofs.append(Proof(
            f"kernel {len(self.groups) - 1}: " + " ; ".join(
                f"[{', '.join(p.members)}]" + (f" over {', '.join(p.loops)}" if p.loops else "")
                for p in group.phases), True,
            f"grid ({', '.join(group.grid)}) carries no dependence and the fused schedule violates none",
            relation="∅"))

    def emit(self) -> Program:
        body = tuple(emit_group(self.program, g, self.rewrites, self.running) for g in self.groups)
        tensors = list(self.program.tensors)
        for info in self.running.values():
            decl = self.program.tensor(info.tensor)
            tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
        return self.program.replace(tensors=tuple(tensors), body=body).with_proofs(*self.proofs)


def _plain_reduction(stmt: Stmt) -> bool:
    """A reduction without a rescale that reads nothing of its own target."""
    return stmt.is_reduction and stmt.scale is None and \
        all(ld.tensor != stmt.target.tensor for ld in E.loads(stmt.expr))


def _without_self(deps: isl.UnionMap, stmts: set[str]) -> isl.UnionMap:
    """``deps`` without the dependences of each of ``stmts`` on itself."""
    names = {isl_name(n) for n in stmts}
    out = isl.UnionMap("{ }")
    for m in _maps(deps):
        src = m.get_tuple_name(isl.dim_type.in_)
        if not (src == m.get_tuple_name(isl.dim_type.out) and src in names):
            out = out.union(isl.UnionMap.from_map(m))
    return out


def _analysis_key(members: set[str], rewrites: dict[str, Stmt], running: dict[str, Running]) -> tuple:
    """What the analysed program of a candidate kernel depends on: its members, their rewrites
    and the running values they read or are."""
    mine_rw = tuple(sorted((n, st) for n, st in rewrites.items() if n in members))
    mine_run = tuple(sorted((y, info) for y, info in running.items() if info.stmt in members))
    return frozenset(members), mine_rw, mine_run


def _unrelated(recs: list[Rec], rec: Rec) -> bool:
    """No dependence connects ``rec`` with ``recs``: it reads no tensor they write, and writes no
    tensor they read or write (a check on tensors, which over-approximates isl's)."""
    written = {r.stmt.target.tensor for r in recs}
    touched = written | {ld.tensor for r in recs for e in _exprs(r) for ld in E.loads(e)}
    reads = {ld.tensor for e in _exprs(rec) for ld in E.loads(e)}
    return not (reads & written) and rec.stmt.target.tensor not in touched


def _exprs(r: Rec) -> list[Expr]:
    return [r.stmt.expr, *r.stmt.target.indices, *r.guards] + ([r.stmt.scale] if r.stmt.scale is not None else [])


def _wide_state(group: Group) -> dict[str, int]:
    """Per running reduction over a serial loop that keeps a vector a row (an attention
    accumulator), the length of that vector: its block iterators' extents."""
    out = {}
    for r in group.recs:
        serial = set(group.serial[r.name])
        if not serial or not r.stmt.is_reduction:
            continue
        target = {i for x in r.stmt.target.indices for i in E.free_iters(x)}
        if target & serial:
            continue
        cols = math.prod(r.extent(it) for it in group.block[r.name] if it in target)
        if cols > 1:
            out[r.name] = cols
    return out


def _maps(u: isl.UnionMap) -> list[isl.Map]:
    out: list[isl.Map] = []
    u.foreach_map(out.append)
    return out


def _safe(y: Load, op: str, dtype: str) -> Expr:
    """The reference value for a running ``max``: finite even before any element arrives."""
    if op != "max=" or not dtypes.is_float(dtype):
        return y
    return E.call("where", E.call("eq", y, E.const(-float("inf"), dtype)), E.const(0.0, dtype), y)


def _guard_first_rescale(stmt: Stmt, sources: list[Stmt], prev: list[Load], c: Expr,
                         dt: dict[str, str]) -> Expr | None:
    """``where(y_prev == -inf, 0, c)``: the rescale of the running state before its first term.

    With opaque functions ``h`` of the running maxima, ``c = exp(h(y_prev) - h(y))`` is finite
    only where ``h`` is: ``h(-inf)`` is a finite reference (``where(|m| == inf, 0, m)``), and
    ``exp(0 - h(y))`` overflows for a row maximum below -88 (0 * inf: NaN, fuzz seed 493). While a
    running maximum is still -inf every element it folded was -inf, so every term ``F`` folded so
    far was ``F(-inf, ·)``; where that is the identity (abstract evaluation), the accumulator is
    the identity and any factor, 0 included, leaves it so. None if that cannot be shown."""
    if any(src.op != "max=" for src in sources):
        return None
    minus_inf = E.const(-math.inf, "f32")
    args = {src.expr for src in sources}
    probe = E.rewrite(stmt.expr, lambda x: minus_inf if x in args else None)
    identity = COMBINERS[stmt.op].identity(dt[stmt.target.tensor])
    value = algebra.abstract_eval(probe)
    if value is algebra.UNKNOWN or not algebra.same_value(float(value), float(identity)):  # type: ignore[arg-type]
        return None
    first, finite = None, {}
    for y_prev, src in zip(prev, sources):
        cond = E.call("eq", y_prev, E.const(-math.inf, dt[src.target.tensor]))
        first = cond if first is None else E.call("or", first, cond)
        finite[cond] = y_prev
    # where the guard fails y_prev is not -inf: a select on that condition takes its else branch
    c = E.rewrite(c, lambda x: x.args[2] if isinstance(x, E.Call) and x.op == "where" and x.args[0] in finite
                  else None)
    return E.call("where", first, E.const(0.0, dt[stmt.target.tensor]), c)  # 0 * identity, or -inf + 0


def _fold_safe(e: Expr, safe: list[Expr]) -> Expr:
    """``where(r == -inf, 0, r)`` is ``r`` where ``r`` is a reference value that is never -inf
    (the program guarded its maximum the way the rewrite does: SDPA's decomposition)."""
    def fold(x: Expr) -> Expr | None:
        if isinstance(x, E.Call) and x.op == "where" and x.args[2] in safe and isinstance(x.args[1], Const) and \
                x.args[1].value == 0 and isinstance(x.args[0], E.Call) and x.args[0].op == "eq" and \
                x.args[0].args[0] == x.args[2] and isinstance(x.args[0].args[1], Const) and \
                x.args[0].args[1].value == -float("inf"):
            return x.args[2]
        return None
    return E.rewrite(e, fold)


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
                members.append(_copy_prev(r, stmt, info, group, [by_name[x] for x in info.readers if x in by_name]))
            node: Node = stmt
            for g in reversed(r.guards):
                node = Guard(g, (node,))
            for it in reversed(group.block[s]):
                l = r.loop(it)
                node = Loop(it, l.lower, l.upper, l.kind, (node,), mapping="block")
            members.append(node)
        fixups = [_empty_fixup(program, by_name[s], rewrites[s], group, running)
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
                node = Loop(it, E.index(0), E.index(owner.extent(it)), kind,
                            tuple(members) if node is None else (node,), mapping="serial",
                            state=state if it == state_loop else None)
            phase_nodes.append(node)  # type: ignore[arg-type]
        else:
            phase_nodes.extend(members)
        phase_nodes.extend(fixups)
    body: tuple[Node, ...] = tuple(phase_nodes)
    for it in reversed(group.grid):
        body = (Loop(it, E.index(0), E.index(first.extent(it)), "parallel", body, mapping="grid"),)
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


class _RowsUnknown(Exception):
    """isl cannot state exactly in which rows a statement has terms (a data-dependent guard)."""


def _empty_fixup(program: Program, r: Rec, stmt: Stmt, group: Group, running: dict[str, Running]) -> Node | None:
    """``z = where(y == -inf, nan, z)`` after the loop, where eager gives NaN and the online form 0.

    While a running max ``y`` stays ``-inf`` the online form folds with a finite reference, so a
    row whose every term is ``-inf`` ends at the identity. Eager folds ``F(-inf, y = -inf)``
    there: the lemma's side condition (finite ``y``) fails. Evaluating ``F`` with ``y`` and the
    max's own argument at ``-inf`` says what eager gets; if that is NaN, this restores it, in the
    rows where the statement has a term at all: a row it has none of folds nothing in eager
    either, whatever ``y`` is there (-inf too where restrict-to-demand left it uncomputed).
    Raises :class:`_RowsUnknown` if isl cannot say which rows those are.
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
    instance: its guarded domain with the other iterators projected out; None if every row has."""
    def projected(guards: tuple[Expr, ...]) -> isl.Set:
        dom = PolyView.of(program.replace(body=(_nest(r.loops, guards, r.stmt),))).stmts[r.name].domain
        for k in reversed(range(len(r.its))):
            if r.its[k] not in rows:
                dom = dom.project_out(isl.dim_type.set, k, 1)
        return dom
    if any(not is_affine_condition(g) for g in r.guards):
        raise _RowsUnknown(f"{r.name} has a data-dependent guard")
    domain, box = projected(r.guards), projected(())
    if domain.is_equal(box):
        return None
    kept = tuple(it for it in r.its if it in rows)
    cond = set_to_condition(domain.gist(box), kept)
    if cond is None:
        raise _RowsUnknown(f"the rows where {r.name} has terms need existential variables: {domain}")
    return cond


def _copy_prev(r: Rec, stmt: Stmt, info: Running, group: Group, readers: list[Rec]) -> Node:
    """``y_prev = y`` before the running reduction; it runs where its readers do (only they
    read the copy, in the same iteration), so it carries their guards when they share them and
    read only iterators bound where the copy runs (a guard on a reader's own block iterator,
    ``if i3 == 0`` of a sliced P @ V, would be unbound there: then it runs unguarded)."""
    target = stmt.target
    node: Node = Stmt(f"{stmt.name}_prev", Load(info.prev, target.indices), "=", target)
    shared = {rd.guards for rd in readers}
    bound = set(r.its) - {it for it in group.block[r.name] if not any(
        isinstance(i, Iter) and i.name == it for i in target.indices)}
    if len(shared) == 1 and all(E.free_iters(g) <= bound for g in next(iter(shared))):
        for g in reversed(next(iter(shared))):
            node = Guard(g, (node,))
    for it in reversed(group.block[r.name]):
        if any(isinstance(i, Iter) and i.name == it for i in target.indices):
            l = r.loop(it)
            node = Loop(it, l.lower, l.upper, "parallel", (node,), mapping="block")
    return node


def fuse_reductions(program: Program, block_limit: int = BLOCK_LIMIT, state_limit: int = STATE_LIMIT) -> Program:
    """Group the program's nests into kernels (see the module docstring)."""
    recs = _records(program)
    if recs is None:
        body = tuple(map_nest(n, block_limit) for n in program.body)
        return program.replace(body=body).with_proofs(Proof(
            "fuse reductions", False, "not in the lifted form (one statement per nest, loops from 0 to a "
            "constant): nothing fused; each nest is one kernel, its leading parallel loops the grid, its "
            "seq loops walked (the tiled schedule is checked by tile)"))
    if not recs:
        return program
    return _Fuser(program, recs, block_limit, state_limit).run()


def map_nest(nest: Node, block_limit: int) -> Node:
    """One kernel of a nest as written: the perfectly nested parallel loops at its top (with
    constant bounds) on the grid, every other loop walked (``seq`` loops, and loops too long for
    a block) or whole in a block."""
    def inner(node: Node) -> Node:
        if isinstance(node, Stmt):
            return node
        body = tuple(inner(c) for c in node.body)
        if isinstance(node, Guard):
            return replace(node, body=body)
        whole = isinstance(node.upper, Const) and node.upper.value <= block_limit
        mapping = "block" if node.kind != "seq" and whole else "serial"
        return replace(node, body=body, mapping=mapping)

    def top(node: Node) -> Node:
        if isinstance(node, Loop) and node.kind == "parallel" and isinstance(node.lower, Const) and \
                isinstance(node.upper, Const):
            body = (top(node.body[0]),) if len(node.body) == 1 else tuple(inner(c) for c in node.body)
            return replace(node, body=body, mapping="grid")
        return inner(node)

    return top(nest)


@dataclass(frozen=True)
class FuseReductions(Pass):
    """Fuse nests into kernels, rewriting dependent reductions into online form where that is legal."""

    name: ClassVar[str] = "fuse-reductions"
    block_limit: int = option(BLOCK_LIMIT, "largest extent of an iterator kept whole inside one program (a "
                                           "@block loop); a longer one is walked in tiles (@serial)")
    state_limit: int = option(STATE_LIMIT, "most columns of running vectors (accumulators) a row that one kernel "
                                           "keeps in registers; a kernel that needs more is split in two where "
                                           "isl allows")

    def apply(self, program: Program) -> Program:
        return fuse_reductions(program, block_limit=self.block_limit, state_limit=self.state_limit)
