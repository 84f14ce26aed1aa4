"""Turn affine masks that feed reductions into domain restrictions (guards).

A reduction ``z ⊕= F(where(c, x, f))`` whose condition ``c`` is affine in the iterators folds,
at every point where ``c`` is false, the value ``F(f)``. If ``F(f)`` is the identity of ``⊕``
for every finite value of the other operands (``exp(-inf - m) = 0`` for ``+=``, ``-inf`` for
``max=``), those points contribute nothing and can leave the domain:
``if c: z ⊕= F(x)``. The check is an abstract evaluation of ``F`` with the mask branch replaced
by its fill and every other load an unknown finite real; it is a lemma, not a pattern. A load of
an input that carries a lower bound of at least 1 (``sum_1: f32[..] >= 1.0``: a softmax's row
sum saved by the forward, whose maximum contributes ``exp(0) = 1``) is an unknown real that is not
0: the backward's masked probability ``exp(-inf - m) / sum_1`` is then 0, the identity of ``+=``.

A finite fill of at least 2^100 below zero (``finfo(dtype).min``, which models of the
``transformers`` library add to the scores) is treated as -inf where two more facts hold: isl
proves that every row of the reduction keeps a point where the mask holds (a row masked whole
is, in eager, a uniform softmax over the fill, not an empty one), and the other operands stay
below 2^98 in magnitude (the stated hypothesis; scores that large have overflowed long before).
Then a masked term is never a row's maximum and ``exp`` of it less that maximum is exactly 0:
it folds the identity, as -inf would.

Then isl knows the exact iteration domain (causal: ``j <= i``), which is what later lets the
tiler prove which key tiles are empty, full or partial. A data-dependent condition (``doc[i] ==
doc[j]``) becomes a guard too: the isl view over-approximates it, and the kernel skips tiles it
rules out at run time.

Caveat, as in every FlashAttention kernel: a row where *every* point is masked folds nothing,
so its accumulators keep their identities (a sum of 0 where eager sums ``exp(nan)``); outputs
normalised by that sum are ``0/0 = nan`` either way, matching eager.

Legality: at a point where ``c`` is false the statement folds ``F(f)``, which the abstract
evaluation proves to be the identity of ``⊕`` whatever finite values the other operands take;
folding the identity leaves an accumulator as it was, so removing those points from the domain
leaves every reduction unchanged. Where a row's terms read a maximum that stays ``-inf`` (every
point masked), eager folds NaN rather than the identity: a fixup statement after the reduction
(``S_empty``) restores NaN in exactly those rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Call, Expr, Iter, Load
from flashlight.ir.isl_build import is_affine_condition, statement_domain
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, TensorDecl, walk_stmts
from flashlight.passes.algebra import UNKNOWN, abstract_eval, same_value as _same
from flashlight.passes.declare import Pass
from flashlight.passes.tree import fresh_tensor_name, loop_extent, map_stmts, nan_fixup, nest_of


def _negate(c: Expr, dt: Mapping[str, str]) -> Expr:
    """``not c``. A comparison of integers flips (``i < j`` fails exactly where ``i >= j`` holds); one
    of floats does not: ``nan < c`` and ``nan >= c`` are both false."""
    flip = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}
    if isinstance(c, Call) and c.op in flip and not any(dtypes.is_float(E.dtype_of(a, dt)) for a in c.args):
        return E.call(flip[c.op], *c.args)
    if isinstance(c, Call) and c.op == "not":
        return c.args[0]
    return E.call("not", c)


def _masks(e: Expr) -> list[Call]:
    """``where`` nodes whose condition depends on no reduction result: candidates for guards.
    Affine ones become exact domain restrictions; data-dependent ones (document ids) stay
    expressions of the guard, which isl over-approximates."""
    return [x for x in E.walk(e) if isinstance(x, Call) and x.op == "where"]


def _replace(e: Expr, old: Expr, new: Expr) -> Expr:
    return E.rewrite(e, lambda x: new if x == old else None)


# A finite fill at least this large in magnitude (a model's ``finfo(dtype).min``: about -3.4e38 in
# bf16 and f32) masks a point as -inf does while the other operands stay below VAST_FILL / 4.
VAST_FILL = 2.0 ** 100


def restrict_statement(stmt: Stmt, dt: Mapping[str, str], carriers: Mapping[str, Expr] | None = None,
                       at_least: Mapping[str, float] | None = None,
                       rows_kept: Callable[[Expr], bool] | None = None
                       ) -> tuple[Stmt, list[Expr], list[str], list[Expr]]:
    """The statement with identity-contributing mask branches removed, the kept conditions, notes,
    the terms folded at the removed points (``dt``: the program's tensor dtypes). ``carriers``: tensors (other than maxima, which the
    empty-row fixup covers) and their writers' expressions; a mask whose fill such a tensor
    also folds is kept, since the other operand is then not finite where the mask fails (the
    mean of a row with a -inf fill, subtracted from it: NaN in eager, fuzz seed 5040440).
    ``rows_kept(c)``: whether isl proves that every row of the reduction keeps a point where
    ``c`` holds, which a finite fill needs (:func:`_vast_fill`)."""
    if not stmt.is_reduction or stmt.scale is not None:
        return stmt, [], [], []
    carriers = carriers or {}
    conds: list[Expr] = []
    notes: list[str] = []
    removed: list[Expr] = []  # eager's terms at the points that leave the domain
    original = stmt.expr
    changed = True
    while changed:
        changed = False
        for w in _masks(stmt.expr):
            cond, a, b = w.args
            for fill, kept, keep_cond in ((a, b, _negate(cond, dt)), (b, a, cond)):
                if _carried(stmt.expr, w, fill, carriers):
                    continue
                identity = COMBINERS[stmt.op].identity(dt[stmt.target.tensor])
                if _folds(stmt.expr, w, fill, identity, at_least):
                    note = f"F({fill}) = {identity} = identity of {stmt.op}"
                elif _vast_fill(fill) and _folds(stmt.expr, w, E.const(-math.inf, "f32"), identity, at_least) \
                        and rows_kept is not None and rows_kept(keep_cond):
                    note = (f"F(-inf) = {identity} = identity of {stmt.op}, and {fill} acts as -inf: every row "
                            f"keeps a point where {keep_cond} (isl), and while the other operands stay below "
                            f"{VAST_FILL / 4:.3g} in magnitude a masked term lies below every kept one and its "
                            "exp is 0")
                else:
                    note = None
                if note is not None:
                    removed.append(_at_removed(original, cond, 1 if fill is a else 2))
                    notes.append(f"{stmt.name}: where {keep_cond} fails the term is {fill}, and {note}")
                    stmt = replace(stmt, expr=_replace(stmt.expr, w, kept))
                    conds.append(E.simplify_condition(keep_cond))
                    changed = True
                    break
            if changed:
                break
    return stmt, conds, notes, removed


def _folds(e: Expr, w: Call, fill: Expr, identity: object, at_least: Mapping[str, float] | None) -> bool:
    """Whether ``e`` with the mask ``w`` replaced by ``fill`` is ``identity`` for every finite value
    of the other operands (abstract evaluation)."""
    contribution = abstract_eval(_replace(e, w, fill), at_least)
    return contribution is not UNKNOWN and _same(float(contribution), float(identity))  # type: ignore[arg-type]


def _vast_fill(fill: Expr) -> bool:
    """A finite constant fill of at least :data:`VAST_FILL` below zero (``finfo(dtype).min``, as a
    model of the ``transformers`` library masks with). At a masked point the term ``s + fill``
    lies below ``-3/4 VAST_FILL`` while every kept term lies above ``-1/4 VAST_FILL`` (the other
    operands below ``VAST_FILL / 4``), so it never is a row's maximum where the row keeps a point,
    and ``exp`` of it less that maximum underflows to exactly 0: it folds what -inf would."""
    return isinstance(fill, E.Const) and isinstance(fill.value, float) and math.isfinite(fill.value) \
        and fill.value <= -VAST_FILL


def _at_removed(e: Expr, cond: Expr, branch: int) -> Expr:
    """``e`` at the points a mask removes: every ``where`` on ``cond`` takes its ``branch`` (the
    fill), as eager's does there (a fill of 0 around a quotient by a NaN row sum is 0, not NaN)."""
    return E.rewrite(e, lambda x: x.args[branch] if isinstance(x, Call) and x.op == "where" and x.args[0] == cond
                     else None)


def _carried(e: Expr, w: Call, fill: Expr, carriers: Mapping[str, Expr]) -> bool:
    """Whether ``e`` reads a tensor whose writer folds the same mask with the same fill (a where
    on the same condition tensors with that branch)."""
    cond_tensors = {ld.tensor for ld in E.loads(w.args[0])}
    for ld in E.loads(e):
        producer = carriers.get(ld.tensor)
        if producer is not None and any(
                isinstance(x, Call) and x.op == "where" and fill in x.args[1:] and
                {l.tensor for l in E.loads(x.args[0])} == cond_tensors for x in E.walk(producer)):
            return True
    return False


def masks_to_domains(program: Program) -> Program:
    """Guard reductions by their masks where masked points contribute the identity."""
    notes: list[str] = []
    refusals: list[Proof] = []
    maxima = {s.target.tensor for s, _, _ in walk_stmts(program.body) if s.op == "max="}
    carriers = {s.target.tensor: s.expr for s, _, _ in walk_stmts(program.body)
                if s.target.tensor not in maxima and program.tensor(s.target.tensor).role == "temp"}
    domain_of: dict[str, frozenset[Expr]] = {}  # a maximum -> the conditions that became its domain
    at_least = {t.name: t.at_least for t in program.inputs if t.at_least is not None}
    body: list[Node] = []
    pending: list[tuple[str, Node]] = []
    for nest in program.body:
        found = list(walk_stmts((nest,)))
        if len(found) != 1:
            body.append(nest)
            continue
        stmt, loops, _ = found[0]
        def rows_kept(c: Expr, stmt: Stmt = stmt, loops: tuple[Loop, ...] = loops) -> bool:
            if _every_row_keeps(program, stmt, loops, c):
                return True
            refusal = Proof(f"masks to domains of {stmt.name}", False,
                            f"a finite fill acts as -inf only where every row keeps a point, and isl finds rows "
                            f"where {c} holds nowhere (or cannot tell): eager's softmax of a row masked whole "
                            "is uniform over the fill, not empty")
            if refusal not in refusals:
                refusals.append(refusal)
            return False
        new, conds, why, removed = restrict_statement(stmt, program.dtypes, carriers, at_least, rows_kept)
        if not conds:
            body.append(nest)
            continue
        other = _nan_under_other_masks(stmt, conds, maxima, domain_of)
        try:
            fix = _empty_rows(stmt, loops, maxima, program.dtypes) if other is None else None
        except _NoFixup as why:
            other = str(why)
        if other is not None:
            refusals.append(Proof(f"masks to domains of {stmt.name}", False, other))
            body.append(nest)
            continue
        if stmt.op == "max=":
            domain_of[stmt.target.tensor] = frozenset(conds)
        notes.extend(why)

        def rewrite(s: Stmt, new: Stmt = new, conds: list[Expr] = conds) -> Stmt | Guard:
            node: Stmt | Guard = new
            for c in reversed(conds):
                node = Guard(c, (node,))
            return node
        body.extend(map_stmts((nest,), rewrite))
        program, restore = _nan_of_bounds(program, stmt, loops, removed, at_least)
        body.extend(restore[0::2])  # the flags, then each fixup just before the first reader of its output
        pending += [(stmt.target.tensor, fixup) for fixup in restore[1::2]]
        if restore:
            notes.append(f"{stmt.name}: where {', '.join(sorted(at_least))} is NaN (a row with no unmasked "
                         "point), eager folds NaN at the points that left the domain; the statements after "
                         f"{stmt.name} restore it")
        if fix is not None:
            pending.append((stmt.target.tensor, fix))
            notes.append(f"{stmt.name}: a row whose maximum stays -inf folds NaN in eager; "
                         f"{stmt.name}_empty restores it")
    if not notes:
        return program.with_proofs(*refusals) if refusals else program
    for tensor, fix in pending:  # just before the first statement that reads the result
        at = next((k for k, n in enumerate(body) if any(
            ld.tensor == tensor for s, _, _ in walk_stmts((n,)) for ld in E.loads(s.expr))), len(body))
        body.insert(at, fix)
    proof = Proof("masks to domains", True, "masked points fold the identity (for finite values of the "
                  "other operands; rows whose maximum is -inf are restored), so removing them from "
                  "the domain leaves every reduction unchanged", lemma="; ".join(notes))
    return program.replace(body=tuple(body)).with_proofs(*refusals, proof)


def _every_row_keeps(program: Program, stmt: Stmt, loops: tuple[Loop, ...], cond: Expr) -> bool:
    """Whether, for every point of the loops ``stmt`` does not reduce over (its rows), some point
    of its reduced loops satisfies ``cond`` (isl; False where ``cond`` is not affine)."""
    if not is_affine_condition(cond):
        return False
    bounds = [(lp.iterator, lp.lower, lp.upper) for lp in loops]
    domain, _ = statement_domain(stmt.name, bounds, (), program.params)
    kept, exact = statement_domain(stmt.name, bounds, (cond,), program.params)
    reduced = [k for k, lp in enumerate(loops) if lp.kind == "reduce"]
    if not exact or not reduced:
        return False
    first, count = reduced[0], len(reduced)
    if reduced != list(range(first, first + count)):
        return False
    rows = domain.project_out(isl.dim_type.set, first, count)
    return rows.is_subset(kept.project_out(isl.dim_type.set, first, count))


def _nan_under_other_masks(stmt: Stmt, conds: list[Expr], maxima: set[str],
                           domain_of: dict[str, frozenset[Expr]]) -> str | None:
    """Why the masks of ``stmt`` may not become its domain, if so.

    The lemma assumes the maxima ``y`` that the terms read finite; where one is -inf, eager folds
    NaN at masked points, and the empty-row fixup restores NaN in the rows where ``y`` is -inf.
    That is exact when ``y`` is the maximum over the same domain (then every point of such a row
    is masked): the fixup's rows are the NaN rows. Where the statement's masks differ from those
    of ``y`` (a second softmax over a re-masked log-softmax), a row whose ``y`` is -inf may mix
    points that fold NaN and points another mask sets to the identity: eager's NaN depends on
    which. If some choice of the masks' branches gives NaN at ``y = -inf`` (abstract evaluation
    of every combination), the masks stay expressions."""
    ys = [ld for ld in dict.fromkeys(E.loads(stmt.expr)) if ld.tensor in maxima]
    if not ys or all(domain_of.get(y.tensor) == frozenset(conds) for y in ys):
        return None
    wheres = list(dict.fromkeys(_masks(stmt.expr)))
    if len(wheres) > 6:
        return f"{len(wheres)} masks over maxima of other domains: too many to check every combination"
    for choice in itertools.product((1, 2), repeat=len(wheres)):
        pick = dict(zip(wheres, choice))
        for y in ys:
            probe = _choose(_replace(stmt.expr, y, E.const(-math.inf, "f32")), {
                _replace(w, y, E.const(-math.inf, "f32")): k for w, k in pick.items()})
            value = abstract_eval(probe)
            if isinstance(value, float) and math.isnan(value):
                return (f"at {y} = -inf some masked points fold NaN in eager while other masks, unlike "
                        f"those of {y.tensor}, give the identity: which rows are NaN depends on both")
    return None


def _choose(e: Expr, pick: dict[Expr, int]) -> Expr:
    """``e`` with each ``where`` in ``pick`` replaced by the chosen branch, outermost first."""
    if isinstance(e, Call) and e in pick:
        return _choose(e.args[pick[e]], pick)
    kids = E.children(e)
    return E.rebuild(e, tuple(_choose(k, pick) for k in kids)) if kids else e


class _NoFixup(Exception):
    """The rows where eager folds NaN cannot be restored by a fixup: the masks stay expressions."""


def _empty_rows(stmt: Stmt, loops: tuple[Loop, ...], maxima: set[str], dtypes: Mapping[str, str]) -> Node | None:
    """``z = where(y == -inf, nan, z)`` if ``F(fill)`` is NaN when a maximum ``y`` it reads is -inf.

    The lemma of this pass assumes the other operands finite. A maximum over a row with no
    unmasked point is -inf; eager then folds ``F(fill, -inf)`` at every point, NaN for
    ``exp(x - y)``, where the guarded statement folds nothing.
    """
    masks = _masks(stmt.expr)
    for ld in dict.fromkeys(ld for ld in E.loads(stmt.expr) if ld.tensor in maxima):
        for w in masks:
            for fill in w.args[1:]:
                probe = _replace(_replace(stmt.expr, w, fill), ld, E.const(-math.inf, "f32"))
                value = abstract_eval(probe)
                if isinstance(value, float) and math.isnan(value):
                    target = stmt.target
                    keep = {i.name for i in target.indices if isinstance(i, Iter)}
                    if not E.free_iters(ld) <= keep:
                        raise _NoFixup(f"{stmt.name} folds {ld} along its own reduction: a -inf maximum "
                                       "makes NaN in rows no condition on the output's rows can name")
                    node: Node = nan_fixup(f"{stmt.name}_empty", target, ld, dict(dtypes))
                    for l in reversed([l for l in loops if l.iterator in keep]):
                        node = Loop(l.iterator, l.lower, l.upper, "parallel", (node,))
                    return node
    return None


def _nan_of_bounds(program: Program, stmt: Stmt, loops: tuple[Loop, ...], removed: list[Expr],
                   at_least: Mapping[str, float]) -> tuple[Program, list[Node]]:
    """A bound (``sum_1 >= 1.0``) holds where the value is finite; a softmax's row sum is NaN
    in a row with no unmasked point, and eager then folds NaN at the points the guard removed
    (``0 / nan``). For each bounded load ``l[idx]`` of a removed term: a flag over the output's
    rows, ``flag max= f32(l != l)`` over the rest of ``idx``, then ``z = where(flag > 0, nan, z)``."""
    keep = {i.name for i in stmt.target.indices if isinstance(i, Iter)}
    sources = list(dict.fromkeys(ld for term in removed for ld in E.loads(term) if ld.tensor in at_least))
    nests: list[Node] = []
    for k, ld in enumerate(sources):
        its = E.free_iters(ld)
        rows = [l for l in loops if l.iterator in its and l.iterator in keep]
        name = fresh_tensor_name(program, f"{ld.tensor}_nan")
        program = program.replace(tensors=program.tensors + (
            TensorDecl(name, "f32", tuple(loop_extent(l) for l in rows), "temp"),))
        flag = Load(name, tuple(Iter(l.iterator) for l in rows))
        flag_loops = [replace(l, kind="parallel" if l.iterator in keep else "reduce") for l in loops if l.iterator in its]
        nests.append(nest_of(flag_loops, (), Stmt(f"{stmt.name}_nan{k}", flag, "max=",
                                                  E.call("f32", E.call("ne", ld, ld)))))
        dtype = program.tensor(stmt.target.tensor).dtype
        value = E.call("where", E.call("gt", flag, E.const(0.0, "f32")), E.const(math.nan, dtype), stmt.target)
        row_loops = [replace(l, kind="parallel") for l in loops if l.iterator in keep]
        nests.append(nest_of(row_loops, (), Stmt(f"{stmt.name}_nanfix{k}", stmt.target, "=", value)))
    return program, nests


@dataclass(frozen=True)
class MasksToDomains(Pass):
    """Turn affine masks that feed reductions into domain restrictions (guards)."""

    name: ClassVar[str] = "masks-to-domains"

    def apply(self, program: Program) -> Program:
        return masks_to_domains(program)
