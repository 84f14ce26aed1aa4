"""The source of a kernel marked ``as library matmul``: ``torch.matmul`` on strided views.

call-library decided that the kernel is a plain matrix product; this writes the call. Each
operand becomes a view ``(batch.., rows, cols)`` of its tensor: its stride along an iterator is
the sum of the tensor's strides where its index is that iterator (0 for a batch iterator it does
not use: a broadcast), its offset the constants' indices times their strides. The result goes
into a view of the output the same way (with ``out=`` where that view is contiguous, else copied
into it). On CUDA ``torch.matmul`` is cuBLAS; on the CPU, the CPU's BLAS.
"""

from __future__ import annotations

from flashlight.codegen.kernel_source import CodegenError, KernelSource
from flashlight.codegen.kernel_state import Strides
from flashlight.ir.expr import Const, Iter, Load
from flashlight.ir.nodes import LibraryCall, Loop, Node, Program, Stmt, fresh_name, grid_chain, walk_stmts
from flashlight.ir.products import factor_load, matmul_roles


def library_product(nest: Node) -> Stmt | None:
    """The statement of a kernel marked for the library, if any."""
    return next((s for s, _, _ in walk_stmts((nest,)) if isinstance(s.tag, LibraryCall)), None)


def generate_library(program: Program, nest: Node, name: str, strides: Strides) -> KernelSource:
    """A module defining ``name(tensors...)`` that computes the kernel with ``torch.matmul``."""
    product = library_product(nest)
    assert product is not None
    body = grid_chain(nest)[-1].body
    loop, epilogue = body[0], (body[1] if len(body) > 1 else product)  # no store: the product is the output
    if not isinstance(loop, Loop) or not isinstance(epilogue, Stmt):
        raise CodegenError(f"{name}: a library kernel is a product loop and at most one store")
    roles = matmul_roles(product, loop.iterator)
    if roles is None:
        raise CodegenError(f"{name}: {product.name} is marked 'as library matmul' but is no matrix product")
    extent = {l.iterator: int(l.upper.value) - int(l.lower.value)  # type: ignore[union-attr]
              for l in (*grid_chain(nest), loop)}
    a, b = (factor_load(x) for x in product.expr.args)  # type: ignore[union-attr]
    if roles.m not in {i.name for i in a.indices if isinstance(i, Iter)}:  # type: ignore[union-attr]
        a, b = b, a
    out = epilogue.target
    params = list(dict.fromkeys([a.tensor, b.tensor, out.tensor]))  # type: ignore[union-attr]
    lines = ["import torch", "", "", f"def {name}({', '.join(params)}):"]
    lhs, rhs, dst = (fresh_name(base, params) for base in ("lhs", "rhs", "dst"))
    lines.append(f"    {lhs} = {_view(a, (*roles.batch, roles.m, roles.k), extent, strides)}")  # type: ignore[arg-type]
    lines.append(f"    {rhs} = {_view(b, (*roles.batch, roles.k, roles.n), extent, strides)}")  # type: ignore[arg-type]
    lines.append(f"    {dst} = {_view(out, (*roles.batch, roles.m, roles.n), extent, strides)}")
    if _contiguous(out, (*roles.batch, roles.m, roles.n), extent, strides):
        lines.append(f"    torch.matmul({lhs}, {rhs}, out={dst})")
    else:
        lines.append(f"    {dst}.copy_(torch.matmul({lhs}, {rhs}))")
    source = "\n".join(lines) + "\n"
    return KernelSource(name, source, tuple(params), grid=1, library=True)


def _layout(ld: Load, dims: tuple[str, ...], extent: dict[str, int], strides: Strides) -> tuple[list, list, int]:
    tensor_strides = strides[ld.tensor]
    per: dict[str, int] = {d: 0 for d in dims}
    offset = 0
    for ix, st in zip(ld.indices, tensor_strides):
        if not isinstance(st, int):
            raise CodegenError(f"{ld.tensor}: a library call needs numeric strides")
        if isinstance(ix, Iter):
            per[ix.name] = per.get(ix.name, 0) + st
        elif isinstance(ix, Const):
            offset += int(ix.value) * st
    return [extent[d] for d in dims], [per[d] for d in dims], offset


def _view(ld: Load, dims: tuple[str, ...], extent: dict[str, int], strides: Strides) -> str:
    sizes, steps, offset = _layout(ld, dims, extent, strides)
    start = f"{ld.tensor}.storage_offset()" + (f" + {offset}" if offset else "")
    return f"torch.as_strided({ld.tensor}, {tuple(sizes)}, {tuple(steps)}, {start})"


def _contiguous(ld: Load, dims: tuple[str, ...], extent: dict[str, int], strides: Strides) -> bool:
    sizes, steps, offset = _layout(ld, dims, extent, strides)
    want, acc = [], 1
    for n in reversed(sizes):
        want.append(acc)
        acc *= n
    return offset == 0 and steps == list(reversed(want))
