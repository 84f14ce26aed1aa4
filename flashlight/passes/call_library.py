"""Call a library: a kernel that is a plain matrix product runs as the vendor's GEMM.

A projection that fuses with nothing (``x Wᵀ``, then at most a cast to the inputs' dtype) gains
nothing from a generated kernel: the vendor's GEMM (cuBLAS through ``torch.matmul``, as Inductor
calls it) is tuned for every shape and card. This pass marks such a kernel's product ``as library
matmul``; the code generator writes the call on strided views of the operands, nothing else.
Kernels where the passes fused anything into the product (an online reduction, a recomputed
contraction, an epilogue beyond a cast, a guard) are left generated: there the fusion is the point.

Recognised, in the final program: a kernel of grid loops around exactly a reduce loop holding one
unguarded statement ``acc[b.., m, n] += A * B`` and, after it, ``out[..] = acc[..]`` or a cast of
it, with ``acc`` in registers (or nothing after it, ``acc`` stored in the factors' dtype); ``A`` and ``B`` loads (or casts of loads to ``acc``'s dtype) of one
dtype, each index an iterator or a constant, each iterator once; one iterator ``m`` only ``A``
and ``acc`` use, one ``n`` only ``B`` and ``acc`` use, the reduced ``k`` in both factors, the
others batch dimensions of ``acc``; static sizes; ``out`` of the factors' dtype (the library's
product rounds once to it, as the cast does) or of ``acc``'s where the factors have that dtype.

Legality: the call computes, at every ``(b, m, n)``, the sum over ``k`` of ``A·B`` that the
statement accumulates, rounded once to ``out``'s dtype as the epilogue rounds it; only the order of
the additions differs (cuBLAS and the CPU's BLAS accumulate reduced-precision products in fp32),
which ``+=`` over a tile already allows: the tiled kernel folds its tiles in an order of its own.
The views address exactly the elements the loads and the store address: each view's stride along
an iterator is the sum of the tensor's strides where the index is that iterator, its offset the
constants' (the code generator derives both from the same indices).

Not in the default pipeline: whether the library beats the generated kernel on a card is measured
(``benchmarks/bench_models.py``, ``benchmarks/beyond_attention.py``) before it becomes the default.
Enable it by naming it at the end of the pipeline:
``flashlight.compile(fn, pipeline=DEFAULT_PIPELINE + ",call-library")``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir.expr import Call, Const
from flashlight.ir.nodes import LibraryCall, Loop, Node, Program, Proof, Stmt, grid_chain
from flashlight.ir.products import FLOATS, Roles, factor_load, matmul_roles
from flashlight.passes.declare import Pass

def library_kernel(program: Program, nest: Node) -> tuple[Stmt, Stmt, Roles] | str:
    """The product and its epilogue in a kernel the library computes, or why it is not one."""
    grid = grid_chain(nest)
    if not grid:
        return "no grid"
    if any(not isinstance(l.lower, Const) or not isinstance(l.upper, Const) for l in grid):
        return "its sizes vary"
    body = grid[-1].body
    if not (1 <= len(body) <= 2 and isinstance(body[0], Loop) and all(isinstance(x, Stmt) for x in body[1:])):
        return "it is not a product loop followed by at most one store"
    loop = body[0]
    if loop.kind != "reduce" or len(loop.body) != 1 or not isinstance(loop.body[0], Stmt):
        return "its reduce loop holds more than one unguarded statement"
    if not isinstance(loop.upper, Const) or not isinstance(loop.lower, Const):
        return "its sizes vary"
    product = loop.body[0]
    roles = matmul_roles(product, loop.iterator)
    if roles is None:
        return f"{product.name} is not a matrix product of two loads"
    acc = program.tensor(product.target.tensor)
    dtypes = {program.tensor(factor_load(x).tensor).dtype for x in product.expr.args}  # type: ignore[union-attr]
    if len(dtypes) != 1 or next(iter(dtypes)) not in FLOATS:
        return "its factors differ in dtype"
    (factor_dtype,) = dtypes
    if len(body) == 1:  # the product itself is what the kernel stores (for another kernel)
        if acc.storage == "local" or acc.dtype != factor_dtype:
            return f"{acc.name} is {acc.dtype} from {factor_dtype} factors"
        return product, product, roles
    epilogue = body[1]
    assert isinstance(epilogue, Stmt)
    if acc.storage != "local":
        return f"{acc.name} is stored for another kernel"
    read = epilogue.expr.args[0] if isinstance(epilogue.expr, Call) and epilogue.expr.op in FLOATS \
        else epilogue.expr
    out = program.tensor(epilogue.target.tensor)
    if epilogue.op != "=" or read != product.target or epilogue.target.indices != product.target.indices:
        return f"{epilogue.name} does more than store {acc.name}"
    if out.dtype != factor_dtype and not (out.dtype == acc.dtype == factor_dtype):
        return f"{out.name} is {out.dtype}, not the factors' {factor_dtype}"
    if out.storage == "local":
        return f"{out.name} stays in registers"
    return product, epilogue, roles


def call_library(program: Program) -> Program:
    """Mark each plain matrix product's kernel ``as library matmul`` (see the module docstring)."""
    body, proofs = [], []
    for k, nest in enumerate(program.body):
        found = library_kernel(program, nest)
        if isinstance(found, str):
            body.append(nest)
            continue
        product, epilogue, roles = found
        marked = _tag(nest, product.name)
        body.append(marked)
        stored = f"{epilogue.name} only stores it" if epilogue is not product else "the kernel stores it"
        proofs.append(Proof(
            f"kernel {k}: {product.name} as library matmul", True,
            f"{product.target.tensor} sums A·B over {roles.k} for rows {roles.m}, columns {roles.n}"
            f"{', batches ' + ', '.join(roles.batch) if roles.batch else ''}, and {stored}: "
            "the library's product is the same sum in another order, rounded once to "
            f"{program.tensor(epilogue.target.tensor).dtype} as the store rounds it"))
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _tag(node: Node, name: str) -> Node:
    if isinstance(node, Stmt):
        return replace(node, tag=LibraryCall("matmul")) if node.name == name else node
    return replace(node, body=tuple(_tag(c, name) for c in node.body))


@dataclass(frozen=True)
class CallLibrary(Pass):
    """Call a library: a kernel that is a plain matrix product runs as the vendor's GEMM."""

    name: ClassVar[str] = "call-library"

    def apply(self, program: Program) -> Program:
        return call_library(program)


__all__ = ["CallLibrary", "call_library", "library_kernel"]
