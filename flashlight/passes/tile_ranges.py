"""Tile ranges: which tiles of a serial loop hold work, and which of them need no mask.

For a serial loop over ``j`` (tile ``BN``) in a kernel whose grid iterators have tiles ``T``,
isl computes, as sets parameterised by the grid tile indices ``t``:

* ``nonempty(t) = { jt : some instance of a statement in the loop lies in tile (t, jt) }``
  (the union of the statements' domains, mapped to tiles);
* ``full(t) = nonempty(t) \\ { jt : some point of the tile, inside the loop bounds, is outside a
  statement's domain, or the tile reaches past the loop's extent }``: in these tiles every affine
  guard holds and there is no tail, so no mask code is needed for them (a data-dependent guard,
  which isl over-approximates, is bounded per tile at run time). The tail tile is masked even
  where no guard cuts it: for an extent known only at launch, every tile would otherwise carry
  the tail's mask;
* ``masked(t) = nonempty(t) \\ full(t)``.

Each set that is, for every ``t`` (and size), the interval between its least and greatest tile
becomes one range (isl checks it); any other is split into convex pieces. The bounds
``min jt``/``max jt`` become (piecewise quasi-affine) functions of ``t``, written back in the IR
as expressions of the grid iterators (``i // 64``): the kernel loops over those ranges only.

Legality: skipped tiles hold no instance; full tiles satisfy every guard; the ranges partition
``nonempty``, so every instance still runs exactly once. Visiting full tiles before masked ones reorders tiles, which
is legal because no dependence links two different tiles except through the online state,
whose merge is commutative and associative (checked with isl: strict dependences across tiles
must be empty; otherwise the loop keeps one masked range in its natural order).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.ir.isl_build import (affine_map, box, constant, empty, is_affine_condition, isl_name, param_box,
                                     tile_map, tiles_differ)
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, TileRange, grid_chain, walk_stmts
from flashlight.ir.poly import PolyView
from flashlight.passes.declare import Pass
from flashlight.passes.dependences import deps_by_tensor, state_tensors, without_self_reductions, witness
from flashlight.passes.tree import loop_extent, with_grid_body


def tile_ranges(program: Program) -> Program:
    """Annotate every tiled serial loop with the tile ranges that hold instances."""
    view = PolyView.of(program)
    body, proofs = [], []
    for k, nest in enumerate(program.body):
        deps = deps_by_tensor(view, {s.name for s, _, _ in walk_stmts((nest,))})
        grid = grid_chain(nest)
        if not grid:
            body.append(nest)
            continue
        phases = list(grid[-1].body)
        for p, phase in enumerate(phases):
            if isinstance(phase, Loop) and phase.mapping == "serial" and phase.tile:
                ranged, decisions = _ranges(phase, grid, view, deps, nest, k)
                phases[p] = ranged
                proofs += decisions
        body.append(with_grid_body(nest, len(grid), tuple(phases)))
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _tile_context(params: list[str], grid: list[Loop]) -> isl.Set:
    """The grid's tile indices: below the tile count of a known extent, and for a size parameter
    ``tile * t < S`` (ranges then hold for every size)."""
    extents = [loop_extent(g) for g in grid]
    known = [(p, n, g.tile) for p, n, g in zip(params, extents, grid) if isinstance(n, int)]
    varying = [(p, n, g.tile) for p, n, g in zip(params, extents, grid) if not isinstance(n, int)]
    ctx = param_box([p for p, _, _ in known], [-(-n // t) for _, n, t in known])  # type: ignore[operator]
    if varying:
        ctx = ctx & param_box(*map(list, zip(*varying)))  # type: ignore[arg-type]
    return ctx


def _ranges(loop: Loop, grid: list[Loop], view: PolyView, deps: dict[str, isl.UnionMap], nest: Node,
            k: int) -> tuple[Loop, list[Proof]]:
    j, bn, n = loop.iterator, loop.tile, loop_extent(loop)
    placed = list(walk_stmts((loop,)))
    stmts = [s for s, _, _ in placed]
    if any(isinstance(x, Loop) and x.mapping == "serial" for x in _inner_loops(loop)):
        return loop, []  # nested serial loops keep every tile
    gits = [g.iterator for g in grid]
    params = [f"t_{g}" for g in gits]
    dims = gits + [j]
    bounds = box(dims, [loop_extent(g) for g in grid] + [n])
    to_tiles = tile_map(dims, [g.tile for g in grid] + [bn], params, ["jt"])
    union = empty(None, dims)
    bad = empty(None, ["jt"], params)
    for s, loops, guards in placed:
        sv = view.stmts[s.name]
        proj = _project(sv, dims)
        union = union.union(proj)
        blocks = {l.iterator for l in loops if l.mapping == "block"}
        # data-dependent guards are over-approximated here and bounded per tile at run time
        if any(E.free_iters(g) & blocks for g in guards if is_affine_condition(g)):
            bad = bad.union(bounds.apply(to_tiles))
        else:
            bad = bad.union(bounds.subtract(proj).apply(to_tiles))
    bad = bad.union(_past_extent(params, bn, n))
    nonempty = union.apply(to_tiles).coalesce()
    full = nonempty.subtract(bad).coalesce()
    masked = nonempty.subtract(full).coalesce()
    ctx = _tile_context(params, grid)
    crossing = _crossing_dependence(stmts, nest, deps, view, loop)
    if crossing is not None:
        full = empty(None, ["jt"], params)
        masked = nonempty
    to_ir: dict[str, Expr] = {t: (E.floordiv(Iter(g.iterator), g.tile) if g.tile > 1 else Iter(g.iterator))
                              for g, t in zip(grid, params)}
    ranges: list[TileRange] = []
    for s, is_masked in ((full, False), (masked, True)):
        pieces = _intervals(s, ctx)
        if pieces is None:
            return loop, []  # strided pieces: keep every tile
        for lo, hi in pieces:
            ranges.append(TileRange(_ast_to_ir(lo, ctx, to_ir), _ast_to_ir(hi, ctx, to_ir), is_masked))
    new = replace(loop, ranges=tuple(ranges))
    if all(isinstance(loop_extent(x), int) for x in (*grid, loop)):
        visited, with_mask, total = _count(ranges, grid, bn, n)  # type: ignore[arg-type]
        counted = (f"visits {visited} of {total} tiles (all query tiles, one point of the other grid "
                   f"dimensions), {with_mask} of them with mask code; ")
    else:
        counted = "ranges as functions of the sizes, for every size; "
    proof = Proof(
        f"tile ranges of kernel {k}, loop {j}", True,
        counted +
        "skipped tiles hold no instance, full tiles lie inside the bounds and satisfy every guard (isl), tiles are visited out "
        "of order only through the online state, whose merge commutes",
        relation=f"nonempty = {nonempty}; full = {full}")
    if crossing is None:
        return new, [proof]
    return new, [proof, Proof(
        f"visit the full tiles of kernel {k}, loop {j} first", False,
        "a dependence outside the online state links two tiles, so the tiles keep their natural order, "
        "in one masked range", relation=str(crossing), witness=witness(isl.UnionMap.from_map(crossing)))]


def _intervals(tiles: isl.Set, ctx: isl.Set) -> list[tuple[isl.PwAff, isl.PwAff]] | None:
    """``tiles`` as ranges ``[lo, hi)`` of tile indices (piecewise functions of the grid tiles and
    sizes; empty where undefined): one range if, for every value of the parameters, the set is
    the interval between its least and greatest tile (isl checks it), else one per convex piece
    (None if a piece is strided)."""
    if tiles.is_empty():
        return []
    lo, hi = tiles.dim_min(0), tiles.dim_max(0)
    var = isl.PwAff.var_on_domain(isl.LocalSpace.from_space(tiles.get_space()), isl.dim_type.set, 0)
    between = lo.add_dims(isl.dim_type.in_, 1).le_set(var) & var.le_set(hi.add_dims(isl.dim_type.in_, 1))
    if between.intersect_params(ctx).is_equal(tiles.intersect_params(ctx)):
        return [(_total(lo, ctx, 0), _total(hi.add(_const(ctx, 1)), ctx, 0))]
    out = []
    for piece in tiles.make_disjoint().get_basic_sets():
        if piece.dim(isl.dim_type.div):
            return None
        piece_set = isl.Set.from_basic_set(piece)
        out.append((_total(piece_set.dim_min(0), ctx, 0), _total(piece_set.dim_max(0).add(_const(ctx, 1)), ctx, 0)))
    return out


def _past_extent(params: list[str], tile: int, extent: int | str) -> isl.Set:
    """The tiles ``jt`` of the loop that reach past its extent (the tail tile, if any)."""
    names = params + ([extent] if isinstance(extent, str) else [])
    bound = isl_name(extent) if isinstance(extent, str) else str(extent)
    return isl.Set(f"[{', '.join(map(isl_name, names))}] -> {{ [jt] : {tile} * jt + {tile} > {bound} }}")


def _inner_loops(node: Node):
    for c in node.body if not isinstance(node, Stmt) else ():
        if isinstance(c, Loop):
            yield c
        if not isinstance(c, Stmt):
            yield from _inner_loops(c)


def _project(sv, dims: list[str]) -> isl.Set:
    return sv.domain.apply(affine_map(sv.name, sv.iterators, dims))


def _const(ctx: isl.Set, value: int) -> isl.PwAff:
    return constant(ctx.get_space().get_var_names(isl.dim_type.param), value)


def _total(pa: isl.PwAff, ctx: isl.Set, value: int) -> isl.PwAff:
    """``pa`` where it is defined, ``value`` elsewhere in the context (an empty range there)."""
    return pa.union_max(_const(ctx, value).intersect_params(ctx)).gist_params(ctx)


def _ast_to_ir(pa: isl.PwAff, ctx: isl.Set, params: dict[str, Expr]) -> Expr:
    build = isl.AstBuild.from_context(ctx)
    return _convert(build.expr_from_pw_aff(pa), params)


def _convert(e: isl.AstExpr, params: dict[str, Expr]) -> Expr:
    t = e.get_type()
    if t == isl.ast_expr_type.int:
        return E.index(e.get_val().to_python())
    if t == isl.ast_expr_type.id:
        name = e.get_id().get_name()
        return params[name] if name in params else Iter(name)  # else a size parameter of the program
    op = e.get_op_type()
    args = [_convert(e.get_op_arg(k), params) for k in range(e.get_op_n_arg())]
    T = isl.ast_expr_op_type
    if op == T.add:
        return E.add(*args)
    if op == T.sub:
        return E.sub(*args)
    if op == T.mul:
        return E.mul(*args)
    if op == T.minus:
        return E.neg(args[0])
    if op in (T.fdiv_q, T.pdiv_q):
        return E.Call("floordiv", tuple(args))
    if op in (T.pdiv_r, T.zdiv_r):
        return E.Call("mod", tuple(args))
    if op in (T.max, T.min):
        out = args[0]
        for a in args[1:]:
            out = E.call("max" if op == T.max else "min", out, a)
        return out
    if op in (T.select, T.cond):
        return E.call("where", *args)
    cmp = {T.le: "le", T.lt: "lt", T.ge: "ge", T.gt: "gt", T.eq: "eq"}
    if op in cmp:
        return E.call(cmp[op], *args)
    if op in (T.and_, T.and_then):
        return E.call("and", *args)
    if op in (T.or_, T.or_else):
        return E.call("or", *args)
    raise ValueError(f"isl expression {e.to_C_str()} has no IR form")


def _crossing_dependence(stmts: list[Stmt], nest: Node, deps: dict[str, isl.UnionMap], view: PolyView,
                         loop: Loop) -> isl.Map | None:
    """A dependence, other than through the online state, that links two different tiles of the
    loop (None if there is none: then the tiles may be visited in any order)."""
    state = state_tensors(nest)
    names = {s.name for s in stmts}
    for t, d in deps.items():
        if t in state:
            continue
        rel = without_self_reductions(nest, t, d)
        maps: list[isl.Map] = []
        rel.foreach_map(maps.append)
        for m in maps:
            src, dst = m.get_tuple_name(isl.dim_type.in_), m.get_tuple_name(isl.dim_type.out)
            if src not in names or dst not in names:
                continue
            a = view.stmts[src].iterators.index(loop.iterator)
            b = view.stmts[dst].iterators.index(loop.iterator)
            na, nb = m.dim(isl.dim_type.in_), m.dim(isl.dim_type.out)
            across = tiles_differ(src, na, a, dst, nb, b, loop.tile)
            if not m.intersect(across).is_empty():
                return m.intersect(across)
    return None


def _count(ranges: list[TileRange], grid: list[Loop], bn: int, n: int) -> tuple[int, int, int]:
    """Tiles visited and masked, summed over the grid's tiled dimensions (others at 0)."""
    tiled = [g for g in grid if g.tile and g.tile > 1]
    counts = [-(-loop_extent(g) // g.tile) for g in tiled]
    visited = masked = 0
    total = -(-n // bn)
    points = [()]
    for c in counts:
        points = [p + (t,) for p in points for t in range(c)]
    for p in points:
        env = {g.iterator: 0 for g in grid}
        env.update({g.iterator: t * g.tile for g, t in zip(tiled, p)})
        for r in ranges:
            width = max(0, E.evaluate(r.upper, env) - E.evaluate(r.lower, env))
            visited += width
            masked += width if r.masked else 0
    return visited, masked, total * len(points)


@dataclass(frozen=True)
class TileRanges(Pass):
    """Tile ranges: which tiles of a serial loop hold work, and which of them need no mask."""

    name: ClassVar[str] = "tile-ranges"

    def apply(self, program: Program) -> Program:
        return tile_ranges(program)
