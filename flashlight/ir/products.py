"""Matrix products in the IR: whether a statement does a GEMM's work (read by the Inductor
handoff), and which iterators of ``acc[..] += A * B`` are its rows, columns, batches and reduced
dimension (read by call-library and by the code generator of a library call), and which products
are larger than their factors (read by inline, which never stores a value computed from one)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flashlight.ir.expr import Call, Const, Expr, Iter, Load, free_iters, loads
from flashlight.ir.nodes import Program, Stmt, walk_stmts

FLOATS = ("f32", "f64", "bf16", "f16")


@dataclass(frozen=True)
class Roles:
    """The iterators of a matrix product: batch dimensions, the rows of ``A``, the columns of
    ``B``, the reduced one."""

    batch: tuple[str, ...]
    m: str
    n: str
    k: str


def matmul_roles(s: Stmt, k: str) -> Roles | None:
    """The roles of ``acc[..] += A * B`` reduced over ``k``, or None if it is no matrix product of
    loads indexed by iterators and constants (each iterator once per tensor)."""
    if s.op != "+=" or s.scale is not None or not (isinstance(s.expr, Call) and s.expr.op == "mul"):
        return None
    factors = [factor_load(x) for x in s.expr.args]
    if any(f is None for f in factors):
        return None
    accesses = [s.target, *factors]
    if not all(_plain_index(ld) for ld in accesses):  # type: ignore[arg-type]
        return None
    its = [{i.name for i in ld.indices if isinstance(i, Iter)} for ld in accesses]  # type: ignore[union-attr]
    c, a, b = its
    if k in c or k not in a or k not in b or not (a | b) - {k} <= c:
        return None
    # rows: an iterator only A and acc use (the innermost in acc's index where several do: the
    # others are batch dimensions B broadcasts over); columns likewise for B
    order = [i.name for i in s.target.indices if isinstance(i, Iter)]
    ms, ns = [i for i in order if i in a and i not in b], [i for i in order if i in b and i not in a]
    if not ms or not ns:
        return None
    ms, ns = ms[-1:], ns[-1:]
    batch = tuple(i.name for i in s.target.indices if isinstance(i, Iter) and i.name not in (ms[0], ns[0]))
    return Roles(batch, ms[0], ns[0], k)


def factor_load(x: Expr) -> Load | None:
    """A factor of the product: a load, or a cast of one."""
    if isinstance(x, Call) and x.op in FLOATS and len(x.args) == 1:
        x = x.args[0]
    return x if isinstance(x, Load) else None


def _plain_index(ld: Load) -> bool:
    names = [i.name for i in ld.indices if isinstance(i, Iter)]
    return all(isinstance(i, (Iter, Const)) for i in ld.indices) and len(names) == len(set(names))


def is_contraction(s: Stmt) -> bool:
    """``acc[..] += A[..] * B[..]`` whose two factors both use an iterator the target does not, and
    one an iterator the other does not: a matrix product (or a batch of them, or a matrix and a
    vector), the work of a GEMM."""
    if s.op != "+=" or s.scale is not None:
        return False
    factors = _factors(s.expr)
    if factors is None or len(factors) != 2:
        return False
    a, b = (_iterators(f) for f in factors)
    # a square (x * x) or a dot product of two vectors is a plain reduction, not a GEMM's work
    return bool((a & b) - _iterators(s.target)) and a != b


SYMBOLIC_EXTENT = 1 << 16  # a size parameter's extent where sizes are compared


def _numel(shape: tuple[int | str, ...]) -> int:
    return math.prod(d if isinstance(d, int) else SYMBOLIC_EXTENT for d in shape)


def expanding_products(program: Program) -> set[str]:
    """Tensors a matrix product writes with more elements than each tensor it reads: attention's
    scores (S x S from S x D), a vocabulary's logits. The fusions exist to keep these in registers."""
    out = set()
    for s, _, _ in walk_stmts(program.body):
        if is_contraction(s):
            size = _numel(program.tensor(s.target.tensor).shape)
            if all(size > _numel(program.tensor(ld.tensor).shape) for ld in loads(s.expr)):
                out.add(s.target.tensor)
    return out


def _factors(e: Expr) -> list[Load] | None:
    """The loads a product multiplies (through nested products and casts, constants aside), or
    None if a factor is anything else."""
    if isinstance(e, Call) and e.op == "mul":
        parts = [_factors(a) for a in e.args]
        return None if any(p is None for p in parts) else [ld for p in parts for ld in p]  # type: ignore[union-attr]
    if isinstance(e, Const):
        return []
    ld = factor_load(e)
    return [ld] if ld is not None else None


def _iterators(ld: Load) -> set[str]:
    return {it for i in ld.indices for it in free_iters(i)}
