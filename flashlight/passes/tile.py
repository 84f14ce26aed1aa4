"""Tile every kernel: tile sizes for grid and serial loops, whole-extent tiles for block loops.

Which grid iterators get a tile larger than one: in a kernel with a contraction
(``acc += A * B`` summed over an iterator both factors share), the grid iterators that only one
factor uses are the M and N of a matrix product and are tiled; the others are batch dimensions
(one program each). A kernel without one tiles its innermost grid iterator, and also the one
before it when it is purely parallel. Block loops are rounded up to a power of two (masked at the
tail), at least 16 so that ``tl.dot`` applies. Of serial loops nested in one another only the
innermost is tiled (the others walk one point at a time): their tiles would multiply in registers;
except where the inner loops only reduce matrix products (a logit tile ``x Wᵀ`` summed over the
model dimension inside the loop over the vocabulary), whose accumulator holds a tile of each of
the two outer axes and no more. A serial loop that is a batch index of a product inside it (the
product's target and both factors read it: the rows of an MSA, for a shared bias's gradient)
walks one point at a time too, unless a statement in it reads a sum over it: tiled, it would
make the product a batched one, computed by broadcasting instead of as a product of two
matrices. A loop walked one point at a time is a scalar of the kernel, not an axis.
A statement's register tile is the product of the tiles of all its enclosing loops; where that
exceeds Triton's limit on a tensor's elements (2^20), tiles are halved, padding above an extent's
power of two first, then the largest grid or serial tile (block loops stay whole). A kernel has
one tile per iterator: where sibling loops over one iterator would be tiled differently, all of
them take the smallest.

Legality, checked with isl per kernel on the tiled schedule ``[kernel, phase, tile of each serial
loop, statement]`` (points of one tile and of different programs run at once): every dependence
must point strictly forward, except

* a reduction statement's dependences on itself through its target, since its combiner is
  associative and a tile folds as one block reduction;
* dependences through the online state (running reductions, their ``prev`` copies and the
  accumulators they rescale): the merge of the running state ``(y, z)`` is a monoid, so a tile
  can be folded as one block and merged (the FlashAttention argument).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.expr import Call
from flashlight.ir.isl_build import Term, TileOf, schedule_map
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, grid_chain, walk_loops, walk_stmts
from flashlight.ir.poly import PolyView
from flashlight.passes.declare import Pass, option
from flashlight.passes.dependences import deps_by_tensor, state_tensors, violations, witness, without_self_reductions
from flashlight.passes.tree import Extent, known_extent, loop_extent, map_stmts


MAX_TILE_ELEMENTS = 2 ** 20  # Triton's limit on the elements of one tensor
BLOCK_M = 64  # the tile of tiled grid iterators, unless the pipeline or the tuner says another


class TilingError(ValueError):
    pass


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def fit_tile(extent: Extent, size: int, minimum: int = 16) -> int:
    """A tile of about ``size`` for a loop of ``extent``: no more than the extent padded to a power of
    two, which a size parameter does not bound (its tile serves every length, tails masked)."""
    if isinstance(extent, str):
        return max(minimum, next_pow2(size))
    return max(minimum, min(next_pow2(max(extent, 1)), next_pow2(size)))


def _longer_than_one(extent: Extent) -> bool:
    return isinstance(extent, str) or extent > 1


def _strip_casts(e):
    while isinstance(e, Call) and e.op in E.CASTS:
        e = e.args[0]
    return e


def contraction_operands(stmt: Stmt, reduced: set[str]):
    """``(A, B, r)`` if ``stmt`` sums ``A * B`` over ``r``, an iterator both factors use, and
    both read memory (a factor that is a function of the iterators alone, ALiBi's ``j - i`` in a
    slope's gradient, weighs the terms: it is no matrix operand with rows of its own)."""
    if stmt.op != "+=" or not (isinstance(stmt.expr, Call) and stmt.expr.op == "mul"):
        return None
    a, b = stmt.expr.args
    if not (E.loads(a) and E.loads(b)):
        return None
    shared = E.free_iters(a) & E.free_iters(b) & reduced
    if len(shared) != 1:
        return None
    return a, b, next(iter(shared))


def tile(program: Program, block_m: int = BLOCK_M, block_n: int = 64, block_pointwise: int = 1024) -> Program:
    """Choose tile sizes for every kernel and prove the tiled schedule legal."""
    body, proofs = [], []
    view = PolyView.of(program)
    for k, nest in enumerate(program.body):
        deps = deps_by_tensor(view, {s.name for s, _, _ in walk_stmts((nest,))})
        tiled, proof = _tile_kernel(nest, k, block_m, block_n, block_pointwise, view, deps)
        body.append(tiled)
        proofs.append(proof)
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _tile_kernel(nest: Node, k: int, bm: int, bn: int, bp: int, view: PolyView,
                 deps: dict[str, isl.UnionMap]) -> tuple[Node, Proof]:
    grid = grid_chain(nest)
    grid_its = [l.iterator for l in grid]
    stmts = list(walk_stmts((nest,)))
    has_serial = any(l.mapping == "serial" for _, loops, _ in stmts for l in loops)
    has_block = any(l.mapping == "block" for _, loops, _ in stmts for l in loops)
    extent = {l.iterator: loop_extent(l) for l in grid}
    tiled: dict[str, int] = {}
    for s, loops, _ in stmts:
        inner = {l.iterator for l in loops if l.mapping in ("serial", "block")}
        c = contraction_operands(s, inner)
        if c is None:
            continue
        a, b, _ = c
        fa, fb = E.free_iters(a), E.free_iters(b)
        # the innermost grid iterator only A uses is M, the innermost only B uses is N; other
        # one-operand iterators are batch dimensions like the shared ones, and so is one that
        # indexes a dimension together with an inner loop's iterator (a chunk of the keys,
        # ``k[C c + j']``: not a dimension of the product of its own)
        mixed = {it for x in (a, b) for ld in E.loads(x) for ix in ld.indices
                 if E.free_iters(ix) & inner for it in E.free_iters(ix) - inner}
        for mine, other in ((fa, fb), (fb, fa)):
            own = [it for it in grid_its if it in mine and it not in other and it not in mixed
                   and _longer_than_one(extent[it])]
            if own:
                tiled[own[-1]] = bm
    if not tiled:
        candidates = [it for it in grid_its if _longer_than_one(extent[it])]
        if candidates:
            if has_serial or has_block:
                tiled[candidates[-1]] = bm
            elif len(candidates) >= 2:
                inner = fit_tile(extent[candidates[-1]], min(bp, 128))
                tiled[candidates[-1]] = inner
                tiled[candidates[-2]] = max(1, bp // inner)
            else:
                tiled[candidates[-1]] = bp
    sizes = {it: fit_tile(extent[it], size) for it, size in tiled.items()}

    def retile(node: Node) -> Node:
        if isinstance(node, Stmt):
            return node
        if isinstance(node, Guard):
            return replace(node, body=tuple(retile(c) for c in node.body))
        n = loop_extent(node)
        if node.mapping == "grid":
            t = sizes.get(node.iterator, 1)
        elif node.mapping == "serial" and not _only_products_inside(node):
            t = 1  # the tiles of nested serial loops multiply in registers: only the innermost is tiled
        elif node.mapping == "serial" and node.kind == "seq":
            t = 1  # it carries a dependence from each point to the next: walked one point at a time
        elif node.mapping == "serial" and _batch_of_products(node):
            t = 1  # tiled, it would make the products inside batched: one point, two matrices
        elif node.mapping == "serial":
            t = fit_tile(n, bn)
        else:
            t = fit_tile(n, known_extent(node))  # a block is the whole loop: its extent must be known
        return replace(node, tile=t, body=tuple(retile(c) for c in node.body))

    new, dots = _mark_matrix_products(_within_budget(_one_tile_per_iterator(retile(nest)), k))
    proof = _prove(new, k, view, deps)
    if dots:
        proof = replace(proof, reason=f"{proof.reason}; matrix products of two tiles: {', '.join(dots)}")
    return new, proof


def _only_products_inside(loop: Loop) -> bool:
    """Whether every serial loop nested in ``loop`` only reduces matrix products over its own
    iterator (nothing nested deeper): their register tile is their accumulator's, whatever the
    outer loop's tile."""
    for inner in (l for l in walk_loops(loop.body) if l.mapping == "serial"):
        for s, loops, _ in walk_stmts((inner,)):
            c = contraction_operands(s, {inner.iterator})
            if c is None or c[2] != inner.iterator or sum(l.mapping == "serial" for l in loops) != 1:
                return False
    return True


def _batch_of_products(loop: Loop) -> bool:
    """Whether a product inside ``loop`` has its iterator as a batch index: the product's target
    is indexed by it (each of its points is a product of its own, not a sum over it) and both
    factors read it, as the rows of an Evoformer's MSA are for the scores its pair bias's
    gradient recomputes. Tiled, such a loop makes the product a batched one, computed by
    broadcasting (rows x queries x keys x head dimensions in registers) instead of a matrix
    product of two tiles. A statement that sums over the loop (its target not indexed by it)
    makes no batch, and where a statement in the loop reads such a sum the loop is left as it is:
    that read sees the whole sum only if one tile holds the whole loop (fuse-reductions planned
    it so), which one point at a time would break."""
    it = loop.iterator

    def indexed(s: Stmt) -> bool:  # its target has a point per value of the loop's iterator
        return any(it in E.free_iters(ix) for ix in s.target.indices)

    stmts = list(walk_stmts(loop.body))
    sums = {s.target.tensor for s, _, _ in stmts if s.op != "=" and not indexed(s)}
    if any(ld.tensor in sums and ld.tensor != s.target.tensor for s, _, guards in stmts
           for e in (s.expr, *guards) for ld in E.loads(e)):
        return False
    for s, loops, _ in stmts:
        if not indexed(s):
            continue
        c = contraction_operands(s, {l.iterator for l in loops if l.kind == "reduce"})
        if c is not None and all(it in E.free_iters(x) for x in c[:2]):
            return True
    return False


MIN_DOT = 16  # the smallest side of a matrix product of tiles (tl.dot, wgmma)


def _mark_matrix_products(nest: Node) -> tuple[Node, list[str]]:
    """Mark ``acc[m,n] += A[m,r] * B[r,n]`` as a matrix product of two tiles (``dot r``) where, in
    the tiled kernel, the target spans exactly two vector axes M and N, each factor spans exactly
    its own one and the one reduced axis R, every side is at least ``MIN_DOT``, and each guard
    reads only M and N (it masks the result) or only one factor's axes (it masks that factor: the
causal mask of ``dK += dSᵀ q`` reads the key and the query, ``dS``'s axes). Exact: the product
    sums the same terms; only their order within the tile changes, which a ``+=`` reduction
    allows (associative, as the tiling proof says)."""
    tile = {l.iterator: l.tile or 1 for l in walk_loops((nest,))}
    # the vector axes of the kernel's tiles: a loop walked one point at a time is a scalar
    axes = {l.iterator for l in walk_loops((nest,)) if l.mapping == "block" or (l.tile or 1) > 1}
    marked: dict[str, str] = {}
    for s, loops, guards in walk_stmts((nest,)):
        r = _reduced_axis_of_product(s, loops, guards, axes, tile)
        if r is not None:
            marked[s.name] = r
    if not marked:
        return nest, []

    (marked_nest,) = map_stmts((nest,), lambda s: replace(s, dot=marked[s.name]) if s.name in marked else s)
    return marked_nest, [f"{n} over {r}" for n, r in marked.items()]


def _reduced_axis_of_product(s: Stmt, loops: tuple[Loop, ...], guards: tuple, axes: set[str],
                             tile: dict[str, int]) -> str | None:
    if s.op != "+=" or not (isinstance(s.expr, Call) and s.expr.op == "mul"):
        return None
    target = E.free_iters(s.target) & axes
    spanned = (E.free_iters(s.expr) | E.free_iters(s.target) | {l.iterator for l in loops}) & axes
    red = spanned - target
    if len(red) != 1 or len(target) != 2:
        return None
    r = next(iter(red))
    a_ax, b_ax = (E.free_iters(x) & axes for x in s.expr.args)
    if r not in a_ax or r not in b_ax or len(a_ax) != 2 or len(b_ax) != 2 or (a_ax | b_ax) - {r} != target:
        return None
    if min(tile[x] for x in a_ax | b_ax) < MIN_DOT:
        return None
    for g in guards:
        ga = E.free_iters(g) & axes
        if not ((r not in ga and ga <= target) or ga <= a_ax or ga <= b_ax):
            return None
    return r


def _one_tile_per_iterator(nest: Node) -> Node:
    """Give every loop over one iterator the smallest tile any of them chose. An iterator may be
    walked by several sibling serial loops of a kernel (phases fused over the same grid), and the
    rule above can tile them differently (one encloses another serial loop, one does not); but a
    kernel has one tile size per axis (the offsets ``o_i`` and tile counts of the codegen, the
    register budget below). The smallest keeps both the nested-serial rule and the budget."""
    tile: dict[str, int] = {}
    for l in walk_loops((nest,)):
        tile[l.iterator] = min(tile.get(l.iterator, l.tile or 1), l.tile or 1)
    return _with_tiles(nest, tile)


def _with_tiles(node: Node, tile: dict[str, int]) -> Node:
    """``node`` with every loop over ``it`` tiled ``tile[it]``."""
    if isinstance(node, Stmt):
        return node
    body = tuple(_with_tiles(c, tile) for c in node.body)
    return replace(node, tile=tile[node.iterator], body=body) if isinstance(node, Loop) else replace(node, body=body)


def _within_budget(nest: Node, k: int) -> Node:
    """Halve tiles until every statement's register tile, the product of the tiles of its enclosing
    loops, holds at most ``MAX_TILE_ELEMENTS``: whatever the number of tiled dimensions."""
    tile = {l.iterator: l.tile or 1 for l in walk_loops((nest,))}  # one tile per iterator in a kernel
    # the padded extent; a loop over a size parameter is never a block, and its tile pads nothing known
    whole = {l.iterator: next_pow2(n) if isinstance(n := loop_extent(l), int) else tile[l.iterator]
             for l in walk_loops((nest,))}
    floor = {it: 1 for it in tile}
    for l in walk_loops((nest,)):
        if l.mapping == "block":  # a block loop is kept whole inside a program
            floor[l.iterator] = whole[l.iterator]
    chains = {tuple(dict.fromkeys(l.iterator for l in loops)) for _, loops, _ in walk_stmts((nest,))}

    def elements(chain: tuple[str, ...]) -> int:
        n = 1
        for it in chain:
            n *= tile[it]
        return n

    shrunk = False
    for chain in sorted(chains, key=elements, reverse=True):
        while elements(chain) > MAX_TILE_ELEMENTS:
            free = [it for it in chain if tile[it] > floor[it]]
            if not free:
                raise TilingError(f"kernel {k}: the whole block loops {', '.join(chain)} alone hold "
                                  f"{elements(chain)} elements, over Triton's {MAX_TILE_ELEMENTS}")
            # padding beyond the extent is pure waste; then the largest tile
            it = max(free, key=lambda i: (tile[i] > whole[i], tile[i]))
            tile[it] //= 2
            shrunk = True
    return _with_tiles(nest, tile) if shrunk else nest


def _serial_paths(node: Node, path: list[Term]) -> list[tuple[Stmt, list[Term]]]:
    """Each statement under ``node`` with its place among serial loops: per enclosing serial
    loop, its tile and which child of the loop's body holds the statement (a loop nested inside
    runs whole before the siblings after it)."""
    if isinstance(node, Stmt):
        return [(node, path)]
    if isinstance(node, Loop) and node.mapping == "serial":
        return [row for c, child in enumerate(node.body)
                for row in _serial_paths(child, path + [TileOf(node.iterator, node.tile), c])]
    return [row for child in node.body for row in _serial_paths(child, path)]


def _prove(nest: Node, k: int, view: PolyView, deps: dict[str, isl.UnionMap]) -> Proof:
    state = state_tensors(nest)
    grid = grid_chain(nest)
    body = grid[-1].body if grid else (nest,)
    sched = isl.UnionMap("{ }")
    names = []
    rows = [(stmt, [k, p, *path]) for p, phase in enumerate(body) for stmt, path in _serial_paths(phase, [])]
    width = max((len(t) for _, t in rows), default=0)
    for pos, (stmt, terms) in enumerate(rows):
        terms = terms + [0] * (width - len(terms)) + [pos]
        sv = view.stmts[stmt.name]
        sched = sched.union(isl.UnionMap.from_map(schedule_map(stmt.name, sv.iterators, terms, sv.domain)))
        names.append(stmt.name)
    mine = isl.UnionSet("{ }")
    for n in names:
        mine = mine.union(isl.UnionSet.from_set(view.stmts[n].domain))
    strict = isl.UnionMap("{ }")
    for t, d in deps.items():
        if t not in state:
            strict = strict.union(without_self_reductions(nest, t, d))
    strict = strict.intersect_domain(mine).intersect_range(mine)
    bad = violations(strict, sched)
    tiles = ", ".join(dict.fromkeys(f"{l.iterator}:{l.tile}" for l in walk_loops((nest,)) if l.tile and l.tile > 1))
    if not bad.is_empty():
        raise TilingError(f"tiling kernel {k} ({tiles}) would violate {witness(bad)}")
    relaxed = ", ".join(sorted(state)) or "none"
    return Proof(f"tile kernel {k} ({tiles})", True,
                 "under [kernel, phase, tile, statement] every dependence points strictly forward, "
                 "except a reduction's dependences on itself (its combiner is associative) and those "
                 f"through the online state ({relaxed}), reordered within a tile because the merge of "
                 "the running state is a monoid", relation="∅")


@dataclass(frozen=True)
class Tile(Pass):
    """Tile every kernel: tile sizes for grid and serial loops, whole-extent tiles for block loops."""

    name: ClassVar[str] = "tile"
    block_m: int = option(BLOCK_M, "tile of the grid iterators that are tiled (the M and N of a contraction, else the "
                              "innermost) in a kernel with serial or block loops: query rows")
    block_n: int = option(64, "tile of serial loops (key columns); of serial loops nested in one another only "
                              "the innermost is tiled")
    block_pointwise: int = option(1024, "tile of a kernel without serial or block loops, split over its two "
                                        "innermost grid iterators when there are two")

    def apply(self, program: Program) -> Program:
        return tile(program, block_m=self.block_m, block_n=self.block_n, block_pointwise=self.block_pointwise)
