"""Turn affine masks that feed reductions into domain restrictions (guards).

A reduction ``z ⊕= F(where(c, x, f))`` whose condition ``c`` is affine in the iterators folds,
at every point where ``c`` is false, the value ``F(f)``. If ``F(f)`` is the identity of ``⊕``
for every finite value of the other operands (``exp(-inf - m) = 0`` for ``+=``, ``-inf`` for
``max=``), those points contribute nothing and can leave the domain:
``if c: z ⊕= F(x)``. The check is an abstract evaluation of ``F`` with the mask branch replaced
by its fill and every other load an unknown finite real; it is a lemma, not a pattern.

Then isl knows the exact iteration domain (causal: ``j <= i``), which is what later lets the
tiler prove which key tiles are empty, full or partial. A data-dependent condition (``doc[i] ==
doc[j]``) becomes a guard too: the isl view over-approximates it, and the kernel skips tiles it
rules out at run time.

Caveat, as in every FlashAttention kernel: a row where *every* point is masked folds nothing,
so its accumulators keep their identities (a sum of 0 where eager sums ``exp(nan)``); outputs
normalised by that sum are ``0/0 = nan`` either way, matching eager.
"""

from __future__ import annotations

import math
from dataclasses import replace

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Guard, Program, Proof, Stmt
from flashlight.passes.tree import map_stmts

name = "masks-to-domains"

UNKNOWN = object()  # a finite real we know nothing else about


def abstract_eval(e: Expr) -> object:
    """Evaluate with loads and iterators as unknown finite reals; UNKNOWN where undetermined."""
    if isinstance(e, Const):
        return e.value
    if isinstance(e, (Load, Iter)):
        return UNKNOWN
    assert isinstance(e, Call)
    args = [abstract_eval(a) for a in e.args]
    op = e.op
    if op in E.CASTS:
        x = args[0]
        return x if (x is UNKNOWN or dtypes.is_float(op)) else UNKNOWN
    if op == "where":
        c, a, b = args
        if c is not UNKNOWN:
            return a if c else b
        return a if (a is not UNKNOWN and b is not UNKNOWN and _same(a, b)) else UNKNOWN
    if all(a is not UNKNOWN for a in args):
        return _concrete(op, args)
    # one side unknown but finite: infinities and zeros still decide some results
    if op in ("add", "sub"):  # a finite unknown does not change an infinity
        x, y = args
        if x is not UNKNOWN and isinstance(x, float) and math.isinf(x):
            return x
        if y is not UNKNOWN and isinstance(y, float) and math.isinf(y):
            return y if op == "add" else -y
        return UNKNOWN
    if op == "mul":
        if any(a is not UNKNOWN and a == 0 and not isinstance(a, bool) for a in args):
            return 0.0
        return UNKNOWN
    if op in ("max", "min"):
        known = [a for a in args if a is not UNKNOWN]
        if known and op == "max" and known[0] == -math.inf:
            return UNKNOWN
        if known and op == "max" and known[0] == math.inf:
            return math.inf
        if known and op == "min" and known[0] == -math.inf:
            return -math.inf
        return UNKNOWN
    return UNKNOWN


def _same(a: object, b: object) -> bool:
    return repr(a) == repr(b)


def _concrete(op: str, args: list) -> object:
    a = args[0]
    try:
        if op == "add":
            return a + args[1]
        if op == "sub":
            return a - args[1]
        if op == "mul":
            return a * args[1]
        if op == "div":
            return a / args[1]
        if op == "neg":
            return -a
        if op in ("exp", "exp2"):
            base = math.e if op == "exp" else 2.0
            return 0.0 if a == -math.inf else (math.inf if a == math.inf else base ** a)
        if op == "max":
            return max(a, args[1])
        if op == "min":
            return min(a, args[1])
        if op == "not":
            return not a
    except (OverflowError, ZeroDivisionError):
        return UNKNOWN
    return UNKNOWN


def _negate(c: Expr) -> Expr:
    flip = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}
    if isinstance(c, Call) and c.op in flip:
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


def restrict_statement(stmt: Stmt, dtype: str = "f32") -> tuple[Stmt, list[Expr], list[str]]:
    """The statement with identity-contributing mask branches removed, the kept conditions, notes."""
    if not stmt.is_reduction or stmt.scale is not None:
        return stmt, [], []
    conds: list[Expr] = []
    notes: list[str] = []
    changed = True
    while changed:
        changed = False
        for w in _masks(stmt.expr):
            cond, a, b = w.args
            for fill, kept, keep_cond in ((a, b, _negate(cond)), (b, a, cond)):
                contribution = abstract_eval(_replace(stmt.expr, w, fill))
                identity = dtypes.identity(stmt.op, dtype)
                if contribution is not UNKNOWN and _same(float(contribution), float(identity)):  # type: ignore[arg-type]
                    notes.append(f"{stmt.name}: where {keep_cond} fails the term is {fill}, and "
                                 f"F({fill}) = {identity} = identity of {stmt.op}")
                    stmt = replace(stmt, expr=_replace(stmt.expr, w, kept))
                    conds.append(E.simplify_condition(keep_cond))
                    changed = True
                    break
            if changed:
                break
    return stmt, conds, notes


def masks_to_domains(program: Program) -> Program:
    """Guard reductions by their affine masks where masked points contribute the identity."""
    notes: list[str] = []

    def rewrite(stmt: Stmt) -> Stmt | Guard:
        new, conds, why = restrict_statement(stmt, program.tensor(stmt.target.tensor).dtype)
        notes.extend(why)
        node: Stmt | Guard = new
        for c in reversed(conds):
            node = Guard(c, (node,))
        return node

    body = map_stmts(program.body, rewrite)
    if not notes:
        return program
    proof = Proof("masks to domains", True, "masked points fold the identity, so removing them from "
                  "the domain leaves every reduction unchanged", lemma="; ".join(notes))
    return program.replace(body=body).with_proofs(proof)
