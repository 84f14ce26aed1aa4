"""Hoist tile bounds: per-tile minima and maxima of a guard's data, computed once, before the kernel.

A data-dependent guard (``doc[b,i] == doc[b,j]`` of a document mask) cannot become a domain, so
the code generator bounds it per tile at run time: a scan over the tiles of the serial loop finds
the first and last tile where it may hold (the loop visits only those) and the run of tiles where
it holds everywhere (which run without guard code). Each program scans the guard's data along the
loop: at 4 x 16 heads x 4096 keys with 64-row query tiles, 4096 programs each read all 4096
document ids of their batch, 18-21% of the kernel's time on the H100. Where the operand along the
loop reads no grid iterator except untiled ones (``doc[b, j]``: the batch), its bounds over a key
tile are the same in every program of that batch, so this pass computes them once, in a nest of
their own placed just before the kernel::

    for b in 0:B parallel tile 1 @grid, jt in 0:T parallel tile TT @grid
      for ju in 0:BN reduce tile BN @block
        if BN*jt + ju < n                         (only when BN does not divide n)
          doc_lo[b,jt] min= doc[b,BN*jt + ju]
          doc_hi[b,jt] max= doc[b,BN*jt + ju]

and annotates the serial loop with ``bounds [doc[b,j] in doc_lo[b,j // BN]:doc_hi[b,j // BN]]``;
the scan then reads two values per tile instead of ``BN``.

Legality. The annotation adds no computation to the loop; it states a fact that the code generator
may use: for every ``j`` of tile ``jt``, ``doc_lo[b, jt] <= doc[b, j] <= doc_hi[b, jt]``. The nest
makes it true, since ``min`` and ``max`` over the points of a tile are exact for integers (no
rounding, no NaN: other dtypes are refused). It stays true up to the loop when nothing writes the
operand's tensor in between: the nest runs immediately before the kernel, and isl checks that no
statement of the kernel writes an element of that tensor. The nest writes fresh tensors that only
the annotation reads. Refused (and kept as a per-program scan) where the operand is not an affine
access, reads a tiled grid iterator (its bounds differ per program) or a block iterator, where
one program alone would read each row of bounds (the extra kernel would save nothing), or where the
loop is short (``MIN_EXTENT``: a scan of a few steps costs less than launching a kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Iter, Load
from flashlight.ir.isl_build import is_affine_condition, isl_name, universe
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, TensorDecl, TileBound, grid_chain, walk_stmts
from flashlight.ir.poly import PolyView
from flashlight.passes.declare import Pass, option
from flashlight.passes.tile import next_pow2
from flashlight.passes.tree import fresh_tensor_name, with_grid_body


BOUNDS_TILE = 64  # tiles of bounds per program of the bounds kernel
# A loop shorter than this is scanned by each program in one or two steps, which costs less than
# launching one more kernel (about 34 us of CPU time with Triton 3.6). Measured on the H100,
# document masks with and without the pass: S=1024 0.157 vs 0.125 ms, S=2048 0.152 vs 0.172,
# S=4096 0.207 vs 0.253, S=16384 0.644 vs 0.917 (benchmarks/RESULTS.md, run 15).
MIN_EXTENT = 2048


def hoist_tile_bounds(program: Program, min_extent: int = MIN_EXTENT) -> Program:
    """Compute per-tile bounds of data-dependent guard operands once, before each kernel
    (for serial loops of at least ``min_extent`` points)."""
    view = PolyView.of(program)
    tensors, body, proofs = list(program.tensors), [], []
    for nest in program.body:
        grid = grid_chain(nest)
        phases = list(grid[-1].body) if grid else []
        before: list[Node] = []
        for p, phase in enumerate(phases):
            if not (isinstance(phase, Loop) and phase.mapping == "serial" and phase.tile):
                continue
            bounds = []
            for operand in _guard_operands(phase):
                refusal = _refusal(program, view, nest, grid, phase, operand, min_extent)
                what = f"hoist tile bounds of {operand} for loop {phase.iterator}"
                if refusal is not None:
                    proofs.append(Proof(what, False, refusal))
                    continue
                dt = program.tensor(operand.tensor).dtype
                lo = fresh_tensor_name(program.replace(tensors=tuple(tensors)), f"{operand.tensor}_lo")
                hi = fresh_tensor_name(program.replace(tensors=tuple(tensors)), f"{operand.tensor}_hi")
                nest_, bound, shape = _bounds_nest(program, grid, phase, operand, lo, hi)
                tensors += [TensorDecl(lo, dt, shape, "temp"), TensorDecl(hi, dt, shape, "temp")]
                before.append(nest_)
                bounds.append(bound)
                proofs.append(Proof(
                    what, True,
                    f"{lo}/{hi} hold the minimum and maximum of {operand} over each tile of {phase.tile} "
                    f"(exact for {dt}), computed just before the kernel; no statement of the kernel writes "
                    f"{operand.tensor} (isl: its writes to {operand.tensor} are empty), so the bounds hold "
                    f"in the loop; {_sharing(grid, operand)} programs read each row of bounds",
                    relation=f"kernel writes to {operand.tensor} = {{ }}"))
            if bounds:
                phases[p] = replace(phase, bounds=phase.bounds + tuple(bounds))
        body += before + [with_grid_body(nest, len(grid), tuple(phases))]
    if not proofs:
        return program
    return program.replace(tensors=tuple(tensors), body=tuple(body)).with_proofs(*proofs)


def _guard_operands(loop: Loop) -> list[Load]:
    """Loads along ``loop`` in the data-dependent guards that every statement of it runs under
    (the guards the code generator bounds per tile), in a deterministic order."""
    placed = list(walk_stmts((loop,)))
    if not placed:
        return []
    common = set.intersection(*(set(g) for _, _, g in placed))
    out: list[Load] = []
    for g in sorted(common, key=str):
        if is_affine_condition(g):
            continue  # affine: a domain, handled by tile-ranges
        for ld in E.loads(g):
            if loop.iterator in E.free_iters(ld) and ld not in out:
                out.append(ld)
    return out


def _refusal(program: Program, view: PolyView, nest: Node, grid: list[Loop], loop: Loop,
             operand: Load, min_extent: int) -> str | None:
    dt = program.tensor(operand.tensor).dtype
    if not (dtypes.is_int(dt) or dt == dtypes.BOOL):
        return f"{operand.tensor} is {dt}: per-tile bounds are exact only for integers"
    if any(E.affine_form(i) is None for i in operand.indices):
        return f"{operand} is not an affine access"
    if not (isinstance(loop.lower, E.Const) and loop.lower.value == 0 and isinstance(loop.upper, E.Const)):
        return f"loop {loop.iterator} does not run from 0 to a constant"
    untiled = {g.iterator for g in grid if g.tile == 1}
    for it in E.free_iters(operand) - {loop.iterator}:
        if it not in untiled:
            return f"{operand} reads {it}, which is not an untiled grid iterator: its bounds differ per program"
    if int(loop.upper.value) < min_extent:  # type: ignore[union-attr]
        return f"loop {loop.iterator} has fewer than {min_extent} points: each program scans them faster than a kernel launches"
    if _sharing(grid, operand) < 2:
        return "one program reads each row of bounds: a kernel computing them first saves nothing"
    written = isl.UnionMap("{ }")
    for s, _, _ in walk_stmts((nest,)):
        written = written.union(view.stmts[s.name].writes)
    decl = program.tensor(operand.tensor)
    whole = isl.UnionSet.from_set(universe(decl.name, [f"o{d}" for d in range(len(decl.shape))]))
    if not written.intersect_range(whole).is_empty():
        return f"the kernel writes {operand.tensor}: bounds computed before it could be stale"
    return None


def _sharing(grid: list[Loop], operand: Load) -> int:
    """How many programs of the kernel read one row of bounds of ``operand``."""
    its = E.free_iters(operand)
    return math.prod(-(-int(g.upper.value) // g.tile) for g in grid if g.iterator not in its)  # type: ignore[union-attr]


def _bounds_nest(program: Program, grid: list[Loop], loop: Loop, operand: Load, lo: str,
                 hi: str) -> tuple[Loop, TileBound, tuple[int, ...]]:
    """The nest computing ``lo``/``hi`` per tile of ``loop``, the annotation, and their shape."""
    j, bn, n = loop.iterator, int(loop.tile), int(loop.upper.value)  # type: ignore[arg-type, union-attr]
    tiles = -(-n // bn)
    rows = [g for g in grid if g.iterator in E.free_iters(operand)]
    jt, ju = _fresh_iter(f"{j}t", program), _fresh_iter(f"{j}u", program)
    point = E.add(E.mul(E.index(bn), Iter(jt)), Iter(ju))
    value = E.substitute(operand, {j: point})
    row_idx = tuple(Iter(g.iterator) for g in rows)
    stmts: list[Node] = [Stmt(f"{lo}_min", Load(lo, row_idx + (Iter(jt),)), "min=", value),
                         Stmt(f"{hi}_max", Load(hi, row_idx + (Iter(jt),)), "max=", value)]
    inner: tuple[Node, ...] = tuple(stmts)
    if n % bn:
        inner = (Guard(E.call("lt", point, E.index(n)), inner),)
    node: Node = Loop(ju, E.index(0), E.index(bn), "reduce", inner, bn, "block")
    node = Loop(jt, E.index(0), E.index(tiles), "parallel", (node,), min(BOUNDS_TILE, next_pow2(tiles)), "grid")
    for g in reversed(rows):
        node = Loop(g.iterator, g.lower, g.upper, "parallel", (node,), 1, "grid")
    tile_of_j = E.floordiv(Iter(j), bn)
    bound = TileBound(operand, Load(lo, row_idx + (tile_of_j,)), Load(hi, row_idx + (tile_of_j,)))
    shape = tuple(int(g.upper.value) for g in rows) + (tiles,)  # type: ignore[union-attr]
    return node, bound, shape  # type: ignore[return-value]


def _fresh_iter(base: str, program: Program) -> str:
    used = {l for s in program.statements() for l in E.free_iters(s.expr) | E.free_iters(s.target)}
    name_ = base
    while name_ in used or isl_name(name_) != name_:
        name_ += "_"
    return name_


@dataclass(frozen=True)
class HoistTileBounds(Pass):
    """Hoist tile bounds: per-tile minima and maxima of a guard's data, computed once, before the kernel."""

    name: ClassVar[str] = "hoist-tile-bounds"
    min_extent: int = option(MIN_EXTENT, "shortest serial loop, in points, whose per-tile bounds get a kernel of "
                                         "their own; each program scans a shorter one faster than a kernel "
                                         "launches")

    def apply(self, program: Program) -> Program:
        return hoist_tile_bounds(program, min_extent=self.min_extent)
