"""Rebase exponentials: ``exp(x - R)`` in online sums read as ratios becomes one fma and an exp2.

fuse-reductions leaves the sums of a softmax as

    l[r]   += exp(x - R)               rescale exp(m_prev - R)
    acc[r] += f32(bf16(exp(x - R))) * v  rescale exp(m_prev - R)

where ``R = where(m == -inf, 0, m)`` is the running maximum as the reference of row ``r``, and
the epilogue reads them as ``acc / l``. Any reference would do for such sums:
``exp(x - R) = exp(x - R') * exp(R' - R)``, and the factor ``exp(R' - R)`` is one number per row,
common to every term and every rescale factor of every sum of the group, so it cancels in
``acc / l``. The pass takes the reference in base 2 rounded once, ``R2 = R * log2e``, and computes

    exp(s * k - R)    as  exp2(fma(s, k * log2e, -R2))
    exp(m_prev - R)   as  exp2(m_prev * log2e - R2)

A term is then rounded once, by the fma, on the scale of ``|x - R|`` (the product inside an fma
is exact; the rounding of the constant ``k * log2e`` is one relative error common to all terms,
which again splits into a common factor and an error on the scale of ``|x - R|``). That is as
exact as eager's ``exp(x - m)`` with an exact difference, and unlike ``exp2(x*log2e - m*log2e)``,
whose two products are rounded on the scale of ``|x|`` separately (exactness lost at large logits:
fuzz bug P). It costs one fused multiply-add per score where ``exp2((x - R) * log2e)`` costs a
multiply-add and a multiply.

Legality, checked per group (the reduction statements whose rescale is ``exp(m_prev - R)`` for
the same ``R``):

* each member is homogeneous of degree one in ``exp(x - R)``: the term is that exponential,
  through casts (a cast rounds relatively, so it moves the factor by no more than its own
  rounding), times or divided by factors that do not read ``R``;
* the sums are not outputs, and every other statement reads them only as a ratio ``a / b`` of two
  members at the same row (the same element of ``R``'s operands), or as the empty-row fixup
  ``z = where(c, nan, z)``; a logsumexp ``m + log(l)`` reads ``l`` alone and is refused;
* the common factor stays in range: it is ``2^d`` with ``|d|`` at most half an ulp of
  ``R*log2e``, so the pass is refused where a row's maximum can be a fill (a finite ``where``
  branch such as -1e9 or ``finfo.min``, or an input added to the scores that varies along the
  row, such as an additive mask) and where terms are rounded to f16 (2^16 overflows it). What
  remains is a bound on the data: scores beyond about 1.5e9 in magnitude (``|d| > 64``) are not
  eager's softmax here. A fill of -1e9 in a fully masked row made a weight of 2^64 that
  overflowed f16 (fuzz bug Y); ``finfo(f32).min`` overflowed ``R*log2e`` to -inf.

Every other exponential of a float32, float16 or bfloat16 value is then computed in base 2 as
well, ``exp(x)`` as ``exp2(x * log2e)``: GPUs evaluate ``2^x`` in hardware, and ``exp`` is this
product and ``exp2`` in every GPU math library. The exponent ``x`` (typically ``s - max``) is
evaluated as written and multiplied once, not distributed into ``s*log2e - max*log2e``: that
would round each product on the scale of ``|s|``, so a row's maximum would no longer give
exactly ``exp(0) = 1`` and the error would grow with the operands (about 1e-3 for a row masked
with -10000). One relative rounding of the product (2^-24) is the whole difference. float64
exponentials stay: a rounded log2(e) would cost them their precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Program, Proof, Stmt, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import is_nan_fixup, map_exprs, map_stmts


LOG2E = 1.0 / math.log(2.0)


def _reference(s: Stmt) -> tuple[Expr, Expr] | None:
    """``(m_prev, R)`` of a sum rescaled by ``exp(m_prev - R)``, or by ``where(c, 0, exp(m_prev -
    R))`` (zero before the first term: any factor times a zero accumulator is zero)."""
    sc = _unguarded(s.scale)
    if s.op != "+=" or not (isinstance(sc, Call) and sc.op == "exp" and isinstance(sc.args[0], Call)
                            and sc.args[0].op == "sub"):
        return None
    prev, ref = sc.args[0].args
    return prev, ref


def _unguarded(scale: Expr | None) -> Expr | None:
    if isinstance(scale, Call) and scale.op == "where" and isinstance(scale.args[1], Const) and scale.args[1].value == 0:
        return scale.args[2]
    return scale


def _reads(e: Expr, ref: Expr) -> bool:
    return any(x == ref for x in E.walk(e))


def _homogeneous(e: Expr, ref: Expr, dt: dict[str, str]) -> bool:
    """``e`` is ``exp(x - R)`` (in fp32) through casts, times or divided by factors free of ``R``."""
    if isinstance(e, Call) and e.op == "exp" and isinstance(e.args[0], Call) and e.args[0].op == "sub":
        x = e.args[0].args[0]
        return e.args[0].args[1] == ref and not _reads(x, ref) and E.dtype_of(x, dt) == "f32"
    if isinstance(e, Call) and e.op in E.CASTS:
        return _homogeneous(e.args[0], ref, dt)
    if isinstance(e, Call) and e.op == "mul":
        a, b = e.args
        return (_homogeneous(a, ref, dt) and not _reads(b, ref)) or (_homogeneous(b, ref, dt) and not _reads(a, ref))
    if isinstance(e, Call) and e.op == "div":
        return _homogeneous(e.args[0], ref, dt) and not _reads(e.args[1], ref)
    return False


def _row(s: Stmt, at: tuple[Expr, ...], ref: Expr) -> tuple | None:
    """The elements of ``R``'s operands that the element ``at`` of ``s``'s target was summed
    against: the row whose common factor it carries."""
    mapping: dict[str, Expr] = {}
    for own, idx in zip(s.target.indices, at):
        if isinstance(own, Iter):
            if mapping.get(own.name, idx) != idx:
                return None
            mapping[own.name] = idx
        elif own != idx:
            return None
    rows = []
    for ld in E.loads(ref):
        if not E.free_iters(ld) <= set(mapping):
            return None
        rows.append((ld.tensor, tuple(E.substitute(i, mapping) for i in ld.indices)))
    return tuple(rows)


def _denominator(x: Expr) -> Expr:
    """``b`` of ``where(b == 0, k, b)`` with a nonzero constant ``k`` (a row without terms
    divides by ``k``), else ``x``."""
    if isinstance(x, Call) and x.op == "where" and isinstance(x.args[1], Const) and x.args[1].value != 0 and \
            isinstance(x.args[0], Call) and x.args[0].op == "eq" and x.args[0].args[0] == x.args[2] and \
            isinstance(x.args[0].args[1], Const) and x.args[0].args[1].value == 0:
        return x.args[2]
    return x


def _ratio_free(e: Expr, members: dict[str, Stmt], ref: Expr, guards: dict[str, tuple[Expr, ...]]) -> Expr | None:
    """``e`` with every same-row ratio of two members replaced by a placeholder, or None if a
    ratio compares different rows.

    ``a / where(b == 0, k, b)`` is a ratio too where ``a`` sums under the guards of ``b``: the
    common factor ``c > 0`` leaves ``b == 0`` unchanged, and where ``b`` is 0 every term of ``b``,
    a nonnegative exponential, is 0, so ``a`` is 0 and ``c * a / k = a / k``."""
    bad = [False]

    def fold(x: Expr) -> Expr | None:
        if not (isinstance(x, Call) and x.op == "div"):
            return None
        a, b = x.args[0], _denominator(x.args[1])
        if not all(isinstance(t, Load) and t.tensor in members for t in (a, b)):
            return None
        if b is not x.args[1] and guards[members[a.tensor].name] != guards[members[b.tensor].name]:  # type: ignore[union-attr]
            return None
        ra = _row(members[a.tensor], a.indices, ref)  # type: ignore[union-attr]
        rb = _row(members[b.tensor], b.indices, ref)  # type: ignore[union-attr]
        if ra is None or ra != rb:
            bad[0] = True
            return None
        return E.const(1.0, "f32")

    out = E.rewrite(e, fold)
    return None if bad[0] else out


def _large_maximum(program: Program, s: Stmt, ref: Expr) -> str | None:
    """Why a row's maximum ``R`` may be large (a fill), or a term's cast narrow in range, if so.

    The common factor ``2^(R*log2e - round(R*log2e))`` is at most half an ulp of ``R*log2e``:
    2^64 at ``R = -1e9``, and ``R*log2e`` overflows at ``finfo(f32).min``. It cancels in the ratio
    only while every term stays finite and nonzero; a fully masked row, whose maximum is the
    fill, breaks that (NaN where eager's softmax is uniform: fuzz bug Y)."""
    rows = {i for x in s.target.indices for i in E.free_iters(x)}
    for e in E.walk(s.expr):
        if isinstance(e, Call) and e.op == "f16":
            return f"{s.name} rounds its terms to f16, whose range the common factor can leave"
        if not (isinstance(e, Call) and e.op == "exp" and isinstance(e.args[0], Call) and e.args[0].op == "sub"
                and e.args[0].args[1] == ref):
            continue
        for x in E.walk(e.args[0].args[0]):
            if isinstance(x, Call) and x.op == "where" and any(
                    isinstance(a, Const) and isinstance(a.value, float) and math.isfinite(a.value) for a in x.args[1:]):
                return f"{s.name}'s scores take a finite fill ({x}), which can be a row's maximum"
            if isinstance(x, Load) and program.tensor(x.tensor).role == "input" and \
                    {i for ix in x.indices for i in E.free_iters(ix)} - rows:
                return f"{s.name}'s scores add data that varies along the row ({x.tensor}), which can be a fill"
    return None


def _refusal(program: Program, group: list[Stmt], ref: Expr) -> str | None:
    members = {s.target.tensor: s for s in group}
    if len(members) != len(group):
        return "two members write one tensor"
    dt = program.dtypes
    for s in group:
        if dt[s.target.tensor] != "f32" or not _homogeneous(s.expr, ref, dt):
            return f"{s.name}'s term is not exp(x - R) times factors free of R"
        large = _large_maximum(program, s, ref)
        if large is not None:
            return large
        if any(ld.tensor in members for ld in E.loads(s.expr)):
            return f"{s.name} reads a sum of its own group"
        if program.tensor(s.target.tensor).role == "output":
            return f"{s.target.tensor} is returned: its factor would not cancel"
    names = {s.name for s in group}
    guards = {s.name: g for s, _, g in walk_stmts(program.body)}  # the group shares its loop
    for s, _, _ in walk_stmts(program.body):
        if s.name in names:
            continue
        if s.target.tensor in members and not is_nan_fixup(s):
            return f"{s.name} writes {s.target.tensor} outside the sum"
        for e in [s.expr] + ([s.scale] if s.scale is not None else []):
            if not any(ld.tensor in members for ld in E.loads(e)):
                continue
            if is_nan_fixup(s) and e is s.expr:
                continue
            free = _ratio_free(e, members, ref, guards)
            if free is None or any(ld.tensor in members for ld in E.loads(free)):
                return f"{s.name} reads {', '.join(sorted(members))} other than as a ratio of one row"
    return None


def _rebased(e: Expr, ref: Expr, ref2: Expr, dt: dict[str, str]) -> Expr:
    """``exp(x - R)`` -> ``exp2(fma(s, k*log2e, -R2))`` with ``x = s*k`` (or ``s/k``, or ``k = 1``)."""
    def fold(x: Expr) -> Expr | None:
        if not (isinstance(x, Call) and x.op == "exp" and isinstance(x.args[0], Call)
                and x.args[0].op == "sub" and x.args[0].args[1] == ref):
            return None
        s, k = x.args[0].args[0], 1.0
        if isinstance(s, Call) and s.op in ("mul", "div") and isinstance(s.args[1], Const):
            s, k = s.args[0], (s.args[1].value if s.op == "mul" else 1.0 / s.args[1].value)
        elif isinstance(s, Call) and s.op == "mul" and isinstance(s.args[0], Const):
            s, k = s.args[1], s.args[0].value
        if not math.isfinite(k) or E.dtype_of(s, dt) != "f32":
            s, k = x.args[0].args[0], 1.0
        return Call("exp2", (Call("fma", (s, E.const(k * LOG2E, "f32"), Call("neg", (ref2,)))),))
    return E.rewrite(e, fold)


def _base_two(program: Program) -> Program:
    """``exp(x)`` as ``exp2(x * log2e)`` for every float exponential below float64."""
    dt = program.dtypes
    changed: list[str] = []

    def fold(x: Expr) -> Expr | None:
        if isinstance(x, Call) and x.op == "exp" and E.dtype_of(x, dt) in ("f32", "f16", "bf16"):
            return Call("exp2", (Call("mul", (E.rewrite(x.args[0], fold), E.const(LOG2E, "f32"))),))
        return None

    def rewrite(s: Stmt) -> Stmt:
        new = map_exprs(s, lambda e: E.rewrite(e, fold))
        if new != s:
            changed.append(s.name)
        return new

    body = map_stmts(program.body, rewrite)
    if not changed:
        return program
    return program.replace(body=body).with_proofs(Proof(
        f"exponentials in base 2 in {', '.join(changed)}", True,
        "exp(x) = 2^(x*log2e), the exponent evaluated as written and multiplied once",
        lemma="exp(x) = exp2(x * log2e); one relative rounding (2^-24) of the product"))


def rebase_exponentials(program: Program) -> Program:
    """Compute the exponentials of online sums that are read only as same-row ratios in base 2
    against a rounded reference (one fma per term); every other exponential below float64 in
    base 2 too."""
    return _base_two(_rebase_online_sums(program))


def _rebase_online_sums(program: Program) -> Program:
    groups: dict[Expr, list[Stmt]] = {}
    for s, _, _ in walk_stmts(program.body):
        found = _reference(s)
        if found is not None and not _reads(found[0], found[1]):
            groups.setdefault(found[1], []).append(s)
    proofs: list[Proof] = []
    rewrites: dict[str, Stmt] = {}
    for ref, group in groups.items():
        names = ", ".join(s.name for s in group)
        why = _refusal(program, group, ref)
        if why is not None:
            proofs.append(Proof(f"rebase exponentials of {names}", False, why))
            continue
        ref2 = Call("mul", (ref, E.const(LOG2E, "f32")))
        for s in group:
            prev, _ = _reference(s)  # type: ignore[misc]
            scale: Expr = Call("exp2", (Call("sub", (Call("mul", (prev, E.const(LOG2E, "f32"))), ref2)),))
            if s.scale is not _unguarded(s.scale):
                scale = Call("where", (s.scale.args[0], s.scale.args[1], scale))  # type: ignore[union-attr]
            rewrites[s.name] = replace(s, expr=_rebased(s.expr, ref, ref2, program.dtypes), scale=scale)
        proofs.append(Proof(
            f"rebase exponentials of {names}", True,
            f"every term and rescale factor of {', '.join(s.target.tensor for s in group)} carries the "
            f"same factor 2^(R*log2e - round(R*log2e)) per row of R = {ref}, and they are read only "
            "as ratios of one row, where it cancels",
            lemma="exp(x - R) = 2^(x*log2e - R2) * 2^(R2 - R*log2e); sum_j a_j c / sum_j b_j c = "
                  "sum_j a_j / sum_j b_j"))
    if not proofs:
        return program
    if not rewrites:
        return program.with_proofs(*proofs)
    body = map_stmts(program.body, lambda s: rewrites.get(s.name, s))
    return program.replace(body=body).with_proofs(*proofs)


@dataclass(frozen=True)
class RebaseExponentials(Pass):
    """Rebase exponentials: ``exp(x - R)`` in online sums read as ratios becomes one fma and an exp2."""

    name: ClassVar[str] = "rebase-exponentials"

    def apply(self, program: Program) -> Program:
        return rebase_exponentials(program)
