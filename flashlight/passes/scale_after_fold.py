"""Scale after fold: ``m max= x * c`` with ``c > 0`` a constant folds ``x`` and scales the fold by ``c``.

A running maximum of scaled scores, ``m[i] max= s[i,j] * 0.125`` (factor-scales and
softmax's ``/ sqrt(d)`` leave such a product at the top of the maximum's argument), multiplies
every score of a tile before folding it. Written ``m[i] max= s[i,j] then * 0.125``, the tile of
``s`` is folded first and the folded row multiplied once: one multiply per row of a tile instead
of one per score. Code generation prints the fold and then the multiply; it decides nothing.

Legality. For ``c > 0``, multiplying by ``c`` is monotonic and so is rounding to the nearest
float: ``x <= y`` implies ``fl(x*c) <= fl(y*c)``. Hence the largest of the rounded products is
the rounded product of the largest, ``max_j fl(x_j*c) = fl(max_j(x_j) * c)``, exactly, bit for
bit, whatever the order or blocking of the fold; likewise for ``min``. NaN propagates through
both forms (a NaN ``x_j`` makes both NaN), and ``-inf * c = -inf`` keeps an empty fold's identity.
Refused where the lemma fails or would not help: ``c <= 0`` (a negative factor swaps max and min,
and 0 turns inf into NaN), a non-finite ``c`` (``0 * inf`` is NaN while ``max(x) * inf`` need not
be), a factor that is not a constant (it may vary along the fold), integer maxima (a product may
wrap around, which is not monotonic) and sums (``+=``: a sum scaled after the fold rounds
differently). Runs after ``tile``, when no later pass rewrites a maximum's argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import math
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir.expr import Call, Const
from flashlight.ir.nodes import Program, Proof, Stmt
from flashlight.passes.declare import Pass
from flashlight.passes.tree import map_stmts


def _foldable(s: Stmt, target_dtype: str) -> bool:
    """Whether ``s`` is a max= or min= of floats of ``x * c`` with ``c`` a positive finite constant."""
    e = s.expr
    if s.op not in ("max=", "min=") or s.fold_scale is not None or not dtypes.is_float(target_dtype):
        return False
    if not (isinstance(e, Call) and e.op == "mul" and isinstance(e.args[1], Const)):
        return False
    c = e.args[1].value
    return isinstance(c, float) and math.isfinite(c) and c > 0


def scale_after_fold(program: Program) -> Program:
    """Move a positive constant factor of a max= or min= reduction's argument after its fold."""
    moved: list[str] = []

    def rewrite(s: Stmt) -> Stmt:
        if not _foldable(s, program.tensor(s.target.tensor).dtype):
            return s
        assert isinstance(s.expr, Call)
        x, c = s.expr.args
        moved.append(s.name)
        return replace(s, expr=x, fold_scale=c)

    body = map_stmts(program.body, rewrite)
    if not moved:
        return program
    return program.replace(body=body).with_proofs(Proof(
        f"scale after fold in {', '.join(moved)}", True,
        "each is a max= or min= of floats whose argument is x * c with c a positive finite constant: "
        "multiplying by c and rounding are monotonic, so scaling the fold is exact",
        lemma="max_j fl(x_j * c) = fl(max_j(x_j) * c) for c > 0 (likewise min)"))


@dataclass(frozen=True)
class ScaleAfterFold(Pass):
    """Scale after fold: ``m max= x * c`` with ``c > 0`` a constant folds ``x`` and scales the fold by ``c``."""

    name: ClassVar[str] = "scale-after-fold"

    def apply(self, program: Program) -> Program:
        return scale_after_fold(program)
