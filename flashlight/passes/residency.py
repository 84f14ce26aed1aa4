"""Register residency, an analysis: which temporaries of a kernel can live in the registers of
one program. fuse-reductions reads it to admit only kernels whose inner tiles stay out of
memory, and contract-buffers to mark them ``local``; the argument why registers suffice is
contract-buffers'.

A temporary qualifies when nothing outside the kernel touches it and every access indexes it with
the same plain iterators, each mapped the same way at every access: a grid iterator (the program
owns that slice), a block iterator (the slice lies whole inside the program) or the same serial
loop (the value lives for one iteration of that loop, as the score tile ``s[i, j]`` does).
"""

from __future__ import annotations

from flashlight.ir import expr as E
from flashlight.ir.expr import Const, Iter
from flashlight.ir.nodes import Loop, Node, Program, tensors_touched, walk_stmts


def local_temps(program: Program, nest: Node) -> set[str]:
    """Temporaries of ``nest`` that can live in registers."""
    inside: dict[str, list[tuple[tuple, dict[str, Loop]]]] = {}
    for stmt, loops, guards in walk_stmts((nest,)):
        ctx = {l.iterator: l for l in loops}
        exprs = [stmt.expr, *guards] + ([stmt.scale] if stmt.scale is not None else [])
        for ld in [stmt.target] + [ld for e in exprs for ld in E.loads(e)]:
            inside.setdefault(ld.tensor, []).append((ld.indices, ctx))
    outside = set().union(*(tensors_touched(other) for other in program.body if other is not nest))
    local = set()
    for t, accesses in inside.items():
        decl = program.tensor_map.get(t)
        if decl is None or decl.role != "temp" or t in outside:
            continue
        if any(isinstance(i, Const) and decl.shape[k] != 1 for idx, _ in accesses for k, i in enumerate(idx)):
            continue  # a constant index into a dimension of several elements: not a register slice
        if _consistent(accesses):
            local.add(t)
    return local


def _consistent(accesses: list[tuple[tuple, dict[str, Loop]]]) -> bool:
    first = accesses[0][0]
    if not all(isinstance(i, Iter) or (isinstance(i, Const) and i.value == 0) for i in first):
        return False
    for idx, ctx in accesses:
        if idx != first:
            return False
    ref_ctx = accesses[0][1]
    for i in first:
        if isinstance(i, Const):  # a unit dimension
            continue
        ref = ref_ctx.get(i.name)  # type: ignore[union-attr]
        if ref is None or ref.mapping is None:
            return False
        for _, ctx in accesses:
            l = ctx.get(i.name)  # type: ignore[union-attr]
            if l is None or l.mapping != ref.mapping:
                return False
            if ref.mapping == "serial" and l is not ref:
                return False
            if ref.mapping == "block" and l.upper != ref.upper:
                return False
    return True
