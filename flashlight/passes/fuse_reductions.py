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

A statement no dependence connects with the open kernel, that would cost it its grid, is set
aside into a kernel of its own that runs before it (*hoisted*); where a later statement reads
both and continues the kernel set aside with its grid (a norm's row scale deferred past a
projection's sum, applied to the projection's output), that kernel runs after the open one
instead (*sunk*): no dependence orders the two either way.

A recomputable contraction (:mod:`flashlight.passes.fusion_recompute`: the scores of an
attention backward, read by kernels over query tiles and over key tiles) is not planned where it
is written: each statement that reads it joins a kernel together with a copy of it, aligned with
its loops, unless the kernel already holds one it can read; the copy joins its reader's phase.
One that reduces over a loop longer than a block (the logits ``x Wᵀ`` of a loss over a
vocabulary, summed over the model dimension) is *computed once*: its copy joins its first
reader's phase with a serial loop of its own over that dimension, where every grid and serial
iterator of the kernel indexes it (each value computed by one program, once; the logit tile of
the vocabulary loop is a matrix product), else a kernel of its own stores it; later readers read
it from memory. A reader that gathers it at an index (the target logit ``mm[i, t[i]]``) gets a
copy that computes only the values read.

Why forming kernels, the online rewrite and the loop roles are one pass: a statement joins a
phase either as written or through the online rewrite, whether a kernel can keep its tiles in
registers depends on which (the score tile stays in registers only if its readers share its
loop), and the grid and serial roles are what isl's check of the fused schedule is about. Taken
apart, the program between two passes would either read running values outside their loop or a
pass would have to run the next to learn whether fusing pays. Splitting a kernel whose running
state is too wide for registers needs none of that: :mod:`flashlight.passes.split_wide_state`
does it afterwards, on the kernels this pass forms.

The rewritten statement reads the running value and carries the repair factor as its
``rescale``; a copy ``y_prev = y`` before the running reduction keeps the old value. For a
running ``max``, the new value enters ``F`` and the rescale through ``where(y == -inf, 0, y)``:
any finite reference keeps the invariant ``z = ⊕ G(x_j) ⊗ H(ref)``, and while ``y`` is still
``-inf`` the accumulator is the identity, so ``exp(-inf - ref) = 0`` repairs it safely.

Legality: fusing and mapping only reorder statement instances, and each order is
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

from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr, Iter, Load
from flashlight.ir.isl_build import isl_name
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, TensorDecl
from flashlight.ir.nodes import scatters as scatters_in
from flashlight.ir.poly import PolyView
from flashlight.passes import algebra
from flashlight.passes.declare import Pass, option
from flashlight.passes.dependences import (flow_dependences, memory_dependences, parallel_violations,
                                           violations, witness)
from flashlight.passes.fusion_recompute import Copies, read_at, recomputable_contractions, redirect
from flashlight.passes.fusion_emit import RowsUnknown, emit_group, empty_fixup
from flashlight.passes.residency import local_temps
from flashlight.passes.tree import fits_block, loop_extent, stmt_exprs
from flashlight.passes.online_rescale import _finite_before_first, _fold_safe, _guard_first_rescale, _safe
from flashlight.passes.fusion_plan import Group, Layout, Phase, Rec, Running, _records, _roles, analysis_program


BLOCK_LIMIT = 256
# A kernel's plan: its group, the rewrites and running values it adds, its proofs.
Plan = tuple[Group, dict[str, Stmt], dict[str, Running], list[Proof]]


@dataclass
class _Verdict:
    legal: bool
    bad: isl.UnionMap | None = None
    parallel_bad: isl.UnionMap | None = None


class _Fuser:
    def __init__(self, program: Program, recs: list[Rec], block_limit: int) -> None:
        self.program = program
        self.recs = recs
        self.block_limit = block_limit
        self.groups: list[Group] = []
        self.rewrites: dict[str, Stmt] = {}
        self.running: dict[str, Running] = {}
        self.proofs: list[Proof] = []
        self.prev_names: dict[str, str] = {}
        self._cache: dict[tuple, tuple[PolyView, isl.UnionMap]] = {}
        self._verdicts: dict[tuple, _Verdict] = {}
        deferred, once, refusals = recomputable_contractions(program, recs, block_limit)
        self.copies = Copies(deferred, once)
        self.proofs.extend(refusals)

    def _analysis(self, recs: list[Rec], members: set[str], rewrites: dict[str, Stmt],
                  running: dict[str, Running]) -> tuple[PolyView, isl.UnionMap]:
        """The view and memory dependences of the candidate kernel's statements (cached).

        Only dependences among the kernel's own statements matter: earlier kernels run before it
        and later ones after, so every other dependence points forward anyway."""
        mine = [r for r in recs if r.name in members]
        key = _analysis_key(mine, rewrites, running)
        hit = self._cache.get(key)
        if hit is None:
            view = PolyView.of(analysis_program(self.program, mine, dict(key[1]), dict(key[2])))
            hit = self._cache[key] = (view, memory_dependences(view).all)
        return hit

    def check(self, groups: list[Group], rewrites: dict[str, Stmt], running: dict[str, Running]) -> _Verdict:
        """isl's verdict on the last group's fused schedule (cached: planning a kernel one statement
        longer checks every shorter one again)."""
        group = groups[-1]
        members = {s for p in group.phases for s in p.members}
        layout = (group.grid, tuple((p.loops, tuple(p.members)) for p in group.phases),
                  tuple((s, group.serial[s], group.block[s]) for s in sorted(members)))
        key = (layout, _analysis_key([r for r in group.recs if r.name in members], rewrites, running))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._check(group, members, rewrites, running)
        return verdict

    def _check(self, group: Group, members: set[str], rewrites: dict[str, Stmt], running: dict[str, Running]
               ) -> _Verdict:
        view, deps = self._analysis(group.recs, members, rewrites, running)
        sched = Layout([group], []).schedule(view)
        # a plain reduction may fold its own instances in another order (its combiner is
        # associative and commutative): a serial loop around a block loop of one sum, as tile does
        folds = {r.name for r in group.recs if r.name in members and r.name not in {i.stmt for i in running.values()}
                 and _plain_reduction(rewrites.get(r.name, r.stmt))}
        bad = violations(_without_self(deps, folds), sched)
        if not bad.is_empty():
            return _Verdict(False, bad=bad)
        # a scatter's points add atomically: its dependences on itself allow any order, across programs too
        scatters = {r.name for r in group.recs if r.name in members and scatters_in(rewrites.get(r.name, r.stmt), r.loops)}
        par = parallel_violations(_without_self(deps, scatters), sched, 0, len(group.grid))
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
        view, _ = self._analysis(group.recs, members, rewrites, running)
        flow = flow_dependences(view).intersect(bad).coalesce()
        rel = flow if not flow.is_empty() else bad
        return str(rel), witness(rel)

    def plan(self, recs: list[Rec]) -> Plan | None:
        roles = _roles(recs, self.block_limit)
        if roles is None:
            return None
        grid, serial, block = roles
        group = Group(grid, [], recs, serial, block)
        rewrites = dict(self.rewrites)
        running = dict(self.running)
        proofs: list[Proof] = []
        done = self.groups
        held: list[Rec] = []  # copies of recomputed contractions: they join their reader's phase
        for k, rec in enumerate(recs):
            if rec.stmt.target.tensor in self.copies.of and k + 1 < len(recs):
                held.append(rec)
                continue
            rewrites, running = self.join_phase(group, rec, rewrites, running, proofs)
            phase = group.phases[-1]
            extras = [self.copies.extra_loops(h, serial[h.name], phase.loops, grid) for h in held]
            if any(x is None for x in extras):
                return None
            for h, extra in zip(held, extras):
                if extra:
                    where = f"inside the {', '.join(phase.loops)} loop of" if phase.loops else "in the kernel of"
                    proofs.append(Proof(
                        f"compute {h.stmt.target.tensor} ({h.name}) {where} {rec.name}", True,
                        f"it reduces over {', '.join(extra)}, longer than a block: a loop of its own inside its "
                        f"reader's, where every grid and serial iterator ({', '.join(grid + phase.loops)}) indexes "
                        "it, so each value is computed once, by one program, and never stored"))
            phase.members[-1:-1] = [h.name for h in held]
            held = []
        verdict = self.check(done + [group], rewrites, running)
        if not verdict.legal:
            return None
        if not self.contractible(group, rewrites, running):
            return None
        return group, rewrites, running, proofs

    def join_phase(self, group: Group, rec: Rec, rewrites: dict[str, Stmt], running: dict[str, Running],
                   proofs: list[Proof]) -> tuple[dict[str, Stmt], dict[str, Running]]:
        """Put ``rec`` into the group's last phase, as written or through the online rewrite, else
        into a new phase of its own."""
        loops = group.serial[rec.name]
        cur = group.phases[-1] if group.phases else None
        if cur is not None and cur.loops == loops:
            cur.members.append(rec.name)
            verdict = self.check(self.groups + [group], rewrites, running)
            if verdict.legal:
                return rewrites, running
            cur.members.pop()
            if loops and verdict.bad is not None:
                attempt = self.online(group, rec, rewrites, running, verdict.bad)
                proofs.extend(attempt[2])
                if attempt[0] is not None:
                    cur.members.append(rec.name)
                    return attempt[0], attempt[1]
        group.phases.append(Phase(loops, [rec.name]))
        return rewrites, running

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
        new_running, prev_loads, safe_loads = self.running_values(ys, candidates, running, rec, j)
        subst = dict(zip(ys, safe_loads))
        acc_dtype = self.program.tensor(stmt.target.tensor).dtype
        try:
            c = _fold_safe(algebra.to_ir(lemma, prev_loads, safe_loads, acc_dtype), safe_loads)
        except algebra.NotSeparable as why:
            return None, None, [refusal, Proof(f"online rewrite of {stmt.name}", False,
                                               f"the rescale has no IR form: {why}", lemma=lemma.statement())]
        if not lemma.functions and not _finite_before_first(c, prev_loads, safe_loads):
            # ``exp(y_new - y_old)`` (a term ``exp(m - x)``): the raw previous maximum -inf makes it
            # inf, and 0 * inf NaN. The terms were folded against the reference of the running
            # maximum, so the repair is from the previous reference, 0 where nothing was folded
            safe_prev = [_safe(p, candidates[y.tensor].stmt.op, self.program.dtypes[y.tensor])
                         for p, y in zip(prev_loads, ys)]
            first = None
            for p, y in zip(prev_loads, ys):
                cond = E.call("eq", p, E.const(-math.inf, self.program.dtypes[y.tensor]))
                first = cond if first is None else E.call("or", first, cond)
            c = E.call("where", first, E.const(0.0, acc_dtype),
                       _fold_safe(algebra.to_ir(lemma, safe_prev, safe_loads, acc_dtype), safe_loads))
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
            empty_fixup(self.program, rec, new_stmt, group, new_running)
        except RowsUnknown as why:
            return None, None, [refusal, Proof(
                f"online rewrite of {stmt.name}", False, "a row where it folds no term (eager gives the identity) "
                f"cannot be told from one whose running max stays -inf (eager gives NaN): {why}")]
        accepted = Proof(
            f"online rewrite of {stmt.name} into the {j} loop", True,
            "the running values expanded to single assignment, no dependence of the rewritten "
            "program runs backwards under the fused schedule: deps ∩ lex_ge(fused) = ∅",
            relation="∅", lemma=lemma.statement())
        return new_rewrites, new_running, [refusal, accepted]

    def running_values(self, ys: tuple[Load, ...], candidates: dict[str, Rec], running: dict[str, Running],
                       rec: Rec, j: str) -> tuple[dict[str, Running], list[Load], list[Expr]]:
        """The running reductions ``rec`` reads (new ones get a ``prev`` copy), and per ``y`` its
        previous value and its value made a finite reference (``where(y == -inf, 0, y)``)."""
        new_running = dict(running)
        prev_loads: list[Load] = []
        safe_loads: list[Expr] = []
        for y in ys:
            src = candidates[y.tensor]
            info = new_running.get(y.tensor)
            if info is None:
                prev = self.fresh_prev(y.tensor)
                info = Running(src.name, y.tensor, j, rec.extent(j) if j in rec.its else src.extent(j),
                               prev, frozenset())
            info = replace(info, readers=info.readers | {rec.stmt.name})
            new_running[y.tensor] = info
            prev_loads.append(Load(info.prev, y.indices))
            safe_loads.append(_safe(y, src.stmt.op, self.program.tensor(y.tensor).dtype))
        return new_running, prev_loads, safe_loads

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

    def program_with(self, nest: Node, running: dict[str, Running]) -> Program:
        tensors = list(self.program.tensors)
        for info in running.values():
            if info.prev not in self.program.tensor_map:
                decl = self.program.tensor(info.tensor)
                tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
        return self.program.replace(tensors=tuple(tensors), body=(nest,))

    def run(self) -> Program:
        current: list[Rec] = []
        pending: Plan | None = None  # the plan of ``current``
        aside: list[Rec] = []  # statements no dependence connects with the open kernel: they run first
        aside_plan: Plan | None = None
        for rec in self.recs:
            if rec.name in self.copies.deferred_stmts:
                continue  # planned where it is read
            alone = self.units([], rec)[0]
            if current and _unrelated(current, alone) and not self.keeps_grid(current, alone, pending):
                # fusing it would only share loads and cost the kernel its grid: it goes aside, into
                # a kernel of its own before the open one (with the statements set aside after it)
                # the same test for the kernel set aside, where nothing connects them either: a copy of
                # a row sum joining the kernel of Evoformer's dQ would cost it its grid over 256 rows
                shares_only_loads = bool(aside) and _unrelated(aside, alone)
                joined = self.place(aside, rec) if aside and not (
                    shares_only_loads and not self.keeps_grid(aside, alone, aside_plan)) else None
                own = None if joined is not None else self.place([], rec)
                if joined is not None or own is not None:
                    if joined is None and aside:
                        self.hoist(aside, aside_plan, current)
                        aside = []
                    unit, aside_plan = joined or own  # type: ignore[misc]
                    aside = aside + self.take(unit)
                    continue
            placed = self.place(current, rec) if current else None
            if placed is not None:
                current, pending = current + self.take(placed[0]), placed[1]
                continue
            if aside and not _unrelated(aside, alone) and _unrelated(current, aside) \
                    and self.keeps_grid(aside, alone, aside_plan):
                # it continues the kernel set aside (the scale of a normed row applied to its
                # projection, deferred past the sum): that kernel runs after the open one instead
                joined = self.place(aside, rec)
                if joined is not None:
                    self.sink(aside, current, pending)
                    current, pending, aside = aside + self.take(joined[0]), joined[1], []
                    continue
            if aside:
                self.hoist(aside, aside_plan, current)
                aside = []
            if current:
                self.commit(pending)
            unit, pending = self.place([], rec) or self.materialize(rec)
            current = self.take(unit)
        if aside:
            self.hoist(aside, aside_plan, current)
        if current:
            self.commit(pending)
        return self.emit()

    def units(self, kernel: list[Rec], rec: Rec) -> list[list[Rec]]:
        """The ways ``rec`` may join ``kernel``: with fresh copies of the recomputable contractions
        it reads, or, first, reading the copies the kernel already has of them where a copy
        writes just what ``rec`` reads."""
        needs = self.copies.read_by(rec)
        if not needs:
            return [[rec]]
        have = {t: copy.stmt.target.tensor for t, copy in self.copies.copies_in(kernel).items()
                if t in needs and copy.stmt.target.indices == read_at(rec, t)}
        options = [self.unit(rec, needs, {})]
        if have:
            options.insert(0, self.unit(rec, needs, have))
        return options

    def fresh_copy(self, t: str, rec: Rec) -> Rec:
        self.program, copy = self.copies.candidate(self.program, t, rec)
        return copy

    def unit(self, rec: Rec, needs: list[str], have: dict[str, str]) -> list[Rec]:
        names, copies = dict(have), []
        for t in needs:
            stored = self.copies.stored(t, rec)
            if stored is not None:
                names[t] = stored
            elif t not in have:
                copy = self.fresh_copy(t, rec)
                copies.append(copy)
                names[t] = copy.stmt.target.tensor
        return copies + [self.redirected(rec, names)]

    def redirected(self, rec: Rec, names: dict[str, str]) -> Rec:
        spread = {t: self.copies.gathered[c] for t, c in names.items() if c in self.copies.gathered}
        return redirect(rec, names, spread)

    def place(self, kernel: list[Rec], rec: Rec) -> tuple[list[Rec], Plan] | None:
        for unit in self.units(kernel, rec):
            plan = self.plan(kernel + unit)
            if plan is not None:
                return unit, plan
        return None

    def materialize(self, rec: Rec) -> tuple[list[Rec], Plan]:
        """``rec`` alone, each contraction it reads stored by a kernel of its own before it (no
        kernel would take the copies with it)."""
        names, alone_copies = {}, []
        for t in self.copies.read_by(rec):
            stored = self.copies.stored(t, rec)
            if stored is not None:
                names[t] = stored
                continue
            copy = self.fresh_copy(t, rec)
            if t in self.copies.once and not self.copies.gathers(t, rec):
                written = {i for x in copy.stmt.target.indices for i in E.free_iters(x)}
                apart = [it for it in rec.its if it not in written]
                self.proofs.append(Proof(
                    f"compute {t} once where {rec.name} reads it", False,
                    f"no kernel with {rec.name} computes each of its values once: {', '.join(apart)} "
                    f"{'does' if len(apart) == 1 else 'do'} not index it, and every program or step along "
                    f"{'it' if len(apart) == 1 else 'them'} would redo a contraction over a loop longer than a "
                    "block: it is stored by a kernel of its own"))
            alone_copies.append(copy)
            names[t] = copy.stmt.target.tensor
        # the copies one kernel: they share its loads (a MLP's gate and up projections read one
        # row tile), where that plans with their common grid; else a kernel each
        self.take(alone_copies)
        together = self.plan(alone_copies) if len(alone_copies) > 1 else None
        if together is not None and together[0].grid == self.plan(alone_copies[:1])[0].grid:
            self.commit(together)
        else:
            for copy in alone_copies:
                self.commit(self.plan([copy]))
        alone = [self.redirected(rec, names)]
        plan = self.plan(alone)
        assert plan is not None, f"{rec.name} cannot even form its own kernel"
        return alone, plan

    def take(self, unit: list[Rec]) -> list[Rec]:
        self.proofs.extend(self.copies.take(unit))
        return unit

    def keeps_grid(self, current: list[Rec], unit: list[Rec], pending: Plan | None) -> bool:
        roles = _roles(current + unit, self.block_limit)
        return roles is not None and pending is not None and roles[0] == pending[0].grid

    def hoist(self, aside: list[Rec], plan: Plan | None, current: list[Rec]) -> None:
        """The statements set aside, as a kernel before the open one: legal because no dependence
        connects them with it (they read nothing it writes and write nothing it touches), and the
        open kernel stays open for the statements after them that continue it (a score matrix and
        the softmax that reads it, with unrelated projections written between them). The open
        kernel's plan stays valid: a plan adds only its own members' rewrites (commit merges them)."""
        self.proofs.append(Proof(
            f"hoist [{', '.join(r.name for r in aside)}] before [{', '.join(r.name for r in current)}]", True,
            "they read nothing those write and write nothing those read or write: no dependence orders "
            "them, and fusing them would only share loads", relation="∅"))
        self.commit(plan)

    def sink(self, aside: list[Rec], current: list[Rec], plan: Plan | None) -> None:
        """The open kernel, committed before the statements set aside, which stay open for a
        statement that reads both: legal for the reason hoisting them was (no dependence connects
        the two), checked again on the open kernel as it is now."""
        self.proofs.append(Proof(
            f"sink [{', '.join(r.name for r in aside)}] after [{', '.join(r.name for r in current)}]", True,
            "they read nothing those write and write nothing those read or write: no dependence orders "
            "them, and a statement that reads both continues the first kernel", relation="∅"))
        self.commit(plan)

    def commit(self, plan: Plan | None) -> None:
        assert plan is not None
        group, rewrites, running, proofs = plan
        self.groups.append(group)
        # plans of the kernel set aside and of the open one start from the same committed rewrites
        # and add their own members' (disjoint): the union is what both committed
        self.rewrites, self.running = {**self.rewrites, **rewrites}, {**self.running, **running}
        self.proofs.extend(proofs)
        self.proofs.append(Proof(
            f"kernel {len(self.groups) - 1}: " + " ; ".join(
                f"[{', '.join(p.members)}]" + (f" over {', '.join(p.loops)}" if p.loops else "")
                for p in group.phases), True,
            f"grid ({', '.join(group.grid)}) carries no dependence{_but_scatters(group, self.rewrites)} and the "
            "fused schedule violates none",
            relation="∅"))

    def emit(self) -> Program:
        body = tuple(emit_group(self.program, g, self.rewrites, self.running) for g in self.groups)
        unused = self.copies.untaken()
        tensors = [t for t in self.program.tensors if t.name not in unused]
        for info in self.running.values():
            decl = self.program.tensor(info.tensor)
            tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
        return self.program.replace(tensors=tuple(tensors), body=body).with_proofs(*self.proofs)


def _but_scatters(group: Group, rewrites: dict[str, Stmt]) -> str:
    """The scatters of a kernel whose points other programs add to as well (atomics)."""
    found = [(r.name, r.stmt.target.tensor) for r in group.recs if scatters_in(rewrites.get(r.name, r.stmt), r.loops)
             and any(l.kind == "reduce" and l.iterator in group.grid for l in r.loops)]
    if not found:
        return ""
    return " but " + ", ".join(f"{n}'s adds into {t}" for n, t in found) + " (they commute: atomics)"


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


def _analysis_key(recs: list[Rec], rewrites: dict[str, Stmt], running: dict[str, Running]) -> tuple:
    """What the analysed program of a candidate kernel depends on: its members (as written: a
    reader of a recomputed contraction reads its kernel's copy), their rewrites and the running
    values they read or are."""
    members = {r.name for r in recs}
    mine_rw = tuple(sorted((n, st) for n, st in rewrites.items() if n in members))
    mine_run = tuple(sorted((y, info) for y, info in running.items() if info.stmt in members))
    return frozenset((r.name, r.stmt, r.guards) for r in recs), mine_rw, mine_run


def _unrelated(recs: list[Rec], unit: list[Rec]) -> bool:
    """No dependence connects ``unit`` with ``recs``: it reads no tensor they write, and writes no
    tensor they read or write (a check on tensors, which over-approximates isl's)."""
    written = {r.stmt.target.tensor for r in recs}
    touched = written | {ld.tensor for r in recs for e in stmt_exprs(r.stmt, r.guards) for ld in E.loads(e)}
    reads = {ld.tensor for rec in unit for e in stmt_exprs(rec.stmt, rec.guards) for ld in E.loads(e)}
    return not (reads & written) and not {rec.stmt.target.tensor for rec in unit} & touched


def _maps(u: isl.UnionMap) -> list[isl.Map]:
    out: list[isl.Map] = []
    u.foreach_map(out.append)
    return out


def fuse_reductions(program: Program, block_limit: int = BLOCK_LIMIT) -> Program:
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
    return _Fuser(program, recs, block_limit).run()


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
        whole = isinstance(node.upper, Const) and fits_block(loop_extent(node), block_limit)
        mapping = "block" if node.kind != "seq" and whole else "serial"
        return replace(node, body=body, mapping=mapping)

    def top(node: Node) -> Node:
        if isinstance(node, Loop) and node.kind == "parallel" and isinstance(node.lower, Const) and \
                isinstance(node.upper, (Const, Iter)):
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

    def apply(self, program: Program) -> Program:
        return fuse_reductions(program, block_limit=self.block_limit)
