"""Order launches: the query tiles with the most work go first (``launch heaviest-first group G``).

The tile ranges of a serial loop can grow along a tiled grid iterator: under a causal mask the
query tile ``t`` visits ``t + 1`` key tiles. Launched in index order, the heaviest programs start
last and the GPU idles on a tail of them. This pass finds, per kernel, the fastest-varying tiled
grid iterator along which the work of the serial loops (the number of key tiles of their tile
ranges, evaluated for each tile of the iterator) grows monotonically and strictly overall, and
marks it to be launched in reverse, interleaved with ``group`` consecutive indices of the grid
loops outside it (heads), whose keys and values then stay in L2 while their heaviest tiles run.

Causal attention on the H100 (B4 H16 S4096 D64, 64x64 tiles) by group: 1 (each head in turn)
0.488 ms, 4 0.483, 8 0.467, 16 0.460, 32 0.452; prefix LM 0.468, 0.461, 0.463, 0.436, 0.437.
16 heads' keys and values at S4096 D64 bf16 are 16 MB, well inside the 50 MB L2; ``group`` is
the largest divisor of the outer programs' count up to ``GROUP`` (a divisor, so that the order
is a permutation of the programs).

A grid that depends on a size parameter has no tile count to weigh: its work is weighed at
sample sizes (``WEIGHED_AT``, every parameter at each), and the order is chosen only where the work
grows at every one of them; which sizes were weighed is said. Outer programs whose count is a size
get no interleaving (``group`` 1: no divisor is known before launch).

Legality: the programs of a grid loop are independent (the loop is parallel, which the passes
that mapped it to the grid proved), so any order of launching them computes the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.nodes import HeaviestFirst, Loop, Node, Program, Proof, grid_chain, walk_loops
from flashlight.passes.declare import Pass, option
from flashlight.passes.tree import loop_extent

GROUP = 16  # outer grid indices (heads) interleaved with the reversed tiles
WEIGHED_AT = (256, 1000, 4096)  # sizes at which a parametric grid's work per tile is weighed


def order_launches(program: Program, group: int = GROUP) -> Program:
    """Launch each kernel's tiles heaviest first where its serial loops' work grows along a tiled
    grid iterator."""
    if group < 1:
        raise ValueError(f"order-launches: group must be at least 1, got {group}")
    body: list[Node] = []
    proofs: list[Proof] = []
    for nest in program.body:
        ordered, proof = _order_nest(nest, group)
        body.append(ordered)
        proofs += [proof] if proof is not None else []
    if not proofs:
        return program
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _order_nest(nest: Node, group: int) -> tuple[Node, Proof | None]:
    grid = grid_chain(nest)
    if not grid:
        return nest, None
    ranged = [l for l in walk_loops(grid[-1].body) if l.ranges]
    sizes = sorted({e for e in map(loop_extent, grid) if isinstance(e, str)} |
                   {p for l in ranged for r in l.ranges for p in E.free_iters(r.lower) | E.free_iters(r.upper)
                    if p not in {x.iterator for x in grid}})
    samples = [dict.fromkeys(sizes, n) for n in WEIGHED_AT] if sizes else [{}]
    for k in reversed(range(len(grid))):  # the fastest-varying iterator first
        g = grid[k]
        if not g.tile or g.tile == 1 or not ranged:
            continue
        works = [_work_per_tile(g, grid, ranged, at) for at in samples]
        if any(w is None or not (w[-1] > w[0] and all(a <= b for a, b in zip(w, w[1:]))) for w in works):
            continue
        counts = [_tiles(x, {}) for x in grid[:k]]
        outer = math.prod(counts) if None not in counts else 1  # type: ignore[arg-type]
        chosen = max(d for d in range(1, min(outer, group) + 1) if outer % d == 0)
        ordered = _set_launch(nest, g.iterator, HeaviestFirst(chosen))
        grow = "; ".join(f"grow from {w[0]} to {w[-1]}" + (" at " + ", ".join(f"{p}={n}" for p, n in at.items())
                                                           if at else "")
                         for w, at in zip(works, samples))  # type: ignore[index]
        return ordered, Proof(
            f"launch the tiles of {g.iterator} heaviest first, {chosen} outer indices interleaved", True,
            f"the serial loops' key tiles per tile of {g.iterator} {grow}; "
            f"the programs of the parallel grid loop {g.iterator} are independent, so their order "
            "does not change the result")
    return nest, None


def _work_per_tile(g: Loop, grid: list[Loop], ranged: list[Loop], sizes: dict[str, int]) -> list[int] | None:
    """Tiles visited by the serial loops for each tile of ``g`` (other grid indices at 0), with the
    size parameters at ``sizes``."""
    work = []
    try:
        for t in range(_tiles(g, sizes)):  # type: ignore[arg-type]
            env = {x.iterator: 0 for x in grid} | sizes
            env[g.iterator] = t * g.tile  # type: ignore[operator]
            work.append(sum(max(0, E.evaluate(r.upper, env) - E.evaluate(r.lower, env))
                            for l in ranged for r in l.ranges))
    except (ValueError, KeyError, TypeError):  # a range that reads something other than grid iterators
        return None
    return work


def _tiles(l: Loop, sizes: dict[str, int]) -> int | None:
    """The tile count of a grid loop: None for a size parameter not in ``sizes``."""
    extent = loop_extent(l)
    n = sizes.get(extent) if isinstance(extent, str) else extent
    return None if n is None else math.ceil(n / (l.tile or 1))


def _set_launch(nest: Node, iterator: str, launch: HeaviestFirst) -> Node:
    if not isinstance(nest, Loop):
        return nest
    if nest.iterator == iterator:
        return replace(nest, launch=launch)
    return replace(nest, body=tuple(_set_launch(c, iterator, launch) for c in nest.body))


@dataclass(frozen=True)
class OrderLaunches(Pass):
    """Order launches: the query tiles with the most work go first (``launch heaviest-first group G``)."""

    name: ClassVar[str] = "order-launches"
    group: int = option(GROUP, "outer grid indices (heads) interleaved with the reversed tiles, whose keys and "
                               "values stay in L2; the largest divisor of the outer programs' count up to it")

    def apply(self, program: Program) -> Program:
        return order_launches(program, group=self.group)
