"""The run-time tile test of data-dependent guards, printed.

A guard such as ``doc[i] == doc[j]`` is no affine condition: isl cannot say which tiles it
holds in. The pass bound-guard-tiles gives the loop a test over interval bounds of the guards'
operands per tile (``Loop.tile_test``): ``possible`` is false only where the guards hold at no
point of the tile, ``certain`` true only where every data-dependent guard holds at every point.
This module prints it: ``tile_lo(x)``/``tile_hi(x)`` of a load become a minimum and maximum of the
loaded tile (or the per-tile bounds that hoist-tile-bounds precomputed, ``loop.bounds``), of an
iterator the first and last offset of its tile. Before the loop, a scan over the guard data
alone (``narrow``) finds the first and last tile where ``possible`` holds and the run of tiles
where ``certain`` holds: the loop then skips the tiles outside and runs those of the run without
guard code.
"""

from __future__ import annotations

import math

from flashlight.codegen.kernel_source import CodegenError
from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.codegen.operators import literal
from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import INFIX, TILE_BOUNDS, Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Loop, TileBound

SCAN_ELEMENTS = 1024  # guard data per step of a chunked scan of tile bounds


class NotChunkable(Exception):
    """A guard's data vary along more than the scanned loop: scan its tiles one at a time."""


class TileScan(KernelState):
    """A serial loop's tile test printed over a tile (or a chunk of tiles), and the scan that
    narrows the loop by it. Uses ``open_tile`` and ``loop_bound`` of the serial loops, ``value``, ``home``, ``index`` and
    ``pointer`` of expressions and memory access."""

    def narrow(self, loop: Loop, scope: Scope, lo: str, hi: str, runs: bool) -> tuple[str, str, str, str]:
        """A scan over the tiles' guard bounds only (no tile data) gives ``(first, last, run_lo,
        run_hi)``: the first and last tile where a data-dependent guard may hold bound the loop, so
        tiles outside are not even visited; with ``runs``, ``[run_lo, run_hi)`` are the tiles where
        the guards hold everywhere if those tiles are contiguous (as documents laid out one after
        another make them), else empty. The scan takes a chunk of tiles at a time (one load, bounds
        per tile by a row reduction) where the guard's data vary only along the loop; otherwise
        one tile at a time."""
        first, last = self.fresh("first"), self.fresh("last")
        sure = (self.fresh("sure_first"), self.fresh("sure_last"), self.fresh("sure_count")) if runs else None
        scope.lines.append(f"{first} = tl.full([], 0, tl.int32) + ({hi})")
        scope.lines.append(f"{last} = tl.full([], 0, tl.int32) + ({lo}) - 1")
        if sure:
            scope.lines.append(f"{sure[0]} = tl.full([], 0, tl.int32) + ({hi})")
            scope.lines.append(f"{sure[1]} = tl.full([], 0, tl.int32) + ({lo}) - 1")
            scope.lines.append(f"{sure[2]} = tl.full([], 0, tl.int32)")
        try:
            scope.lines.extend(self.scan_chunks(loop, scope, lo, hi, first, last, sure))
        except NotChunkable:
            scope.lines.extend(self.scan_tiles(loop, scope, lo, hi, first, last, sure))
        if not sure:
            return first, last, first, first
        run, run_lo, run_hi = self.fresh("run"), self.fresh("run_lo"), self.fresh("run_hi")
        scope.lines += [f"{run} = ({sure[2]} > 0) & ({sure[1]} - {sure[0]} + 1 == {sure[2]})",
                        f"{run_lo} = tl.where({run}, {sure[0]}, {first})",
                        f"{run_hi} = tl.where({run}, {sure[1]} + 1, {first})"]
        return first, last, run_lo, run_hi

    def scan_tiles(self, loop: Loop, scope: Scope, lo: str, hi: str, first: str, last: str,
                   sure: tuple[str, str, str] | None) -> list[str]:
        it, tiles = loop.iterator, self.tile_count(loop.iterator)
        pre = self.open_tile(loop, Scope([], scope, loop_iter=it, depth=scope.depth + 1))
        certain, possible = self.tile_predicate(loop, pre)
        lines = [f"for t_{it} in range({self.loop_bound(lo)}, {self.loop_bound(hi)}):  # bounds of the guard over each tile",
                 *("    " + x for x in pre.lines)]
        lines += track_tiles((first, last), possible, f"t_{it}", tiles, chunked=False)
        if sure:
            held = self.fresh("held")
            lines += [f"    {held} = ({possible}) & ({certain})"] + track_tiles(sure, held, f"t_{it}", tiles, chunked=False)
        return lines

    def scan_chunks(self, loop: Loop, scope: Scope, lo: str, hi: str, first: str, last: str,
                    sure: tuple[str, str, str] | None) -> list[str]:
        """Tiles ``c_it`` of a chunk are rows of a ``[chunk, tile]`` block of offsets; tile
        indices past the last tile are clamped to it, which repeats a real tile's bounds (they
        are not counted: ``ok`` is false past ``hi``)."""
        it, t, n = loop.iterator, self.tile[loop.iterator], self.extent[loop.iterator]
        tiles = self.tile_count(it)
        summarized = all(ld in self.tile_bounds for ld in self.guard_loads(loop))  # one pair of values a tile
        chunk = max(1, SCAN_ELEMENTS // (1 if summarized else t))
        if not isinstance(n, str):  # no larger than the tiles there are (a power of two, for tl.arange)
            chunk = min(chunk, 1 << (math.ceil(n / t) - 1).bit_length())
        if chunk == 1:
            raise NotChunkable
        pre = Scope([], scope, loop_iter=it, depth=scope.depth + 1)
        c, ok = f"c_{it}", self.fresh("ok")
        pre.lines.append(f"{c} = t_{it} * {chunk} + tl.arange(0, {chunk})")
        pre.lines.append(f"{ok} = ({c} >= ({lo})) & ({c} < ({hi}))")
        pre.lines.append(f"{c} = tl.minimum({c}, {tiles} - 1)" if isinstance(n, str)
                         else f"{c} = tl.minimum({c}, {int(tiles) - 1})")
        if not summarized:
            pre.lines.append(f"o_{it} = {c}[:, None] * {t} + tl.arange(0, {t})[None, :]")
            if self.needs_mask(it):
                pre.lines.append(f"m_{it} = o_{it} < {self.extent_code(it)}")
        self.chunked = it
        try:
            certain, possible = self.tile_predicate(loop, pre)
        finally:
            self.chunked = None
        pre.lines.append(f"{ok} = {ok} & ({possible})")
        lines = [f"for t_{it} in range({self.loop_bound(lo)} // {chunk}, ({self.loop_bound(hi)} + {chunk - 1}) // {chunk}):"
                 f"  # bounds of the guard over {chunk} tiles at a time",
                 *("    " + x for x in pre.lines)]
        lines += track_tiles((first, last), ok, c, tiles, chunked=True)
        if sure:
            held = self.fresh("held")
            lines += [f"    {held} = {ok} & ({certain})"] + track_tiles(sure, held, c, tiles, chunked=True)
        return lines

    def guard_loads(self, loop: Loop) -> list[Load]:
        """Loads along ``loop`` whose tile bounds the loop's tile test reads."""
        test = loop.tile_test
        exprs = () if test is None else (test.possible,) + (() if test.certain is None else (test.certain,))
        return [x.args[0] for e in exprs for x in E.walk(e) if isinstance(x, Call) and x.op in TILE_BOUNDS
                and isinstance(x.args[0], Load) and loop.iterator in E.free_iters(x.args[0])]

    def tile_predicate(self, loop: Loop, scope: Scope, with_certain: bool = True) -> tuple[str | None, str | None]:
        """``(certain, possible)``: the loop's tile test (bound-guard-tiles) printed as scalars of
        the current tile (vectors over the tiles of a chunk), None where the test has no such part."""
        test = loop.tile_test
        if test is None:
            return None, None
        possible = f"({self.tile_code(test.possible, scope)})"
        if test.certain is None or not with_certain:
            return None, possible
        return f"({self.tile_code(test.certain, scope)})", possible

    def tile_code(self, e: Expr, scope: Scope) -> str:
        """A tile test's expression: ``tile_lo``/``tile_hi`` of an operand are its bounds over the
        current tile; casts are the exact ones (bound-guard-tiles keeps no other), left to Triton's
        promotion."""
        if isinstance(e, Const):
            return literal(e)
        if isinstance(e, Iter):
            if e.name in self.axes:
                raise CodegenError(f"a tile test reads iterator {e.name} of a tiled loop outside tile_lo/tile_hi")
            return self.size(e.name) if e.name in self.program.params else e.name
        if not isinstance(e, Call):
            raise CodegenError(f"a tile test reads {e} outside tile_lo/tile_hi")
        if e.op in TILE_BOUNDS:
            return self.interval(e.args[0], scope)[e.op == "tile_hi"]
        if e.op in E.CASTS:
            return self.tile_code(e.args[0], scope)
        a = [self.tile_code(x, scope) for x in e.args]
        if e.op == "neg":
            return f"(-{a[0]})"
        if e.op == "not":
            return f"~({a[0]})"
        sym = INFIX.get(e.op, ("",))[0]
        if e.op in ("add", "sub"):
            return f"({a[0]} {sym} {a[1]})"
        if e.op in ("and", "or"):
            return f"({a[0]}) {sym} ({a[1]})"
        if e.op in E.COMPARISONS:
            return f"{a[0]} {sym} {a[1]}"
        raise CodegenError(f"operator {e.op} has no place in a tile test")

    def interval(self, e: Expr, scope: Scope) -> tuple[str, str]:
        """Scalar bounds of an iterator or a load over the current tile (for each tile of a chunk)."""
        if isinstance(e, Iter):
            x = e.name
            if x not in self.axes:
                x = self.size(x) if x in self.program.params else x
                return x, x
            t = self.tile[x]
            if x == self.chunked:  # a vector: the bounds of each tile of the chunk
                return f"(c_{x} * {t})", f"(c_{x} * {t} + {t - 1})"
            base = {"grid": f"pid_{x}", "serial": f"t_{x}"}.get(self.role[x])
            if base is None:
                n = self.extent[x]
                return "0", f"({self.size(n)} - 1)" if isinstance(n, str) else str(n - 1)
            return f"({base} * {t})", f"({base} * {t} + {t - 1})"
        if not isinstance(e, Load):
            raise CodegenError(f"tile bounds of {e}: only of an iterator or a load")
        if e in self.tile_bounds:
            return self.precomputed_interval(self.tile_bounds[e], scope)
        if e.tensor in self.produced:
            raise CodegenError(f"a tile test bounds {e}, which this kernel writes")
        hit = self.cache.get(("interval", e))
        if hit is not None and scope.inside(hit[1]):
            return hit[0]  # type: ignore[return-value]
        v = self.value(e, scope)
        if not v.axes:
            return v.code, v.code
        big = "float('inf')" if dtypes.is_float(v.dtype) else str(2**31 - 1 if v.dtype != "i64" else 2**62)
        m = self.mask_of(v.axes)
        lo = v.code if m is None else f"tl.where({m.code}, {v.code}, {big})"
        hi = v.code if m is None else f"tl.where({m.code}, {v.code}, -{big})"
        if self.chunked in v.axes:  # rows are the tiles of the chunk: reduce each row
            if v.axes != (self.chunked,):
                raise NotChunkable
            lo, hi = f"tl.min({lo}, axis=1)", f"tl.max({hi}, axis=1)"
        for k in reversed(range(len(v.axes) if self.chunked not in v.axes else 0)):
            lo, hi = f"tl.min({lo}, axis={k})", f"tl.max({hi}, axis={k})"
        home = self.home(e, scope, set())
        lv, hv = self.fresh("lo"), self.fresh("hi")
        home.lines += [f"{lv} = {lo}", f"{hv} = {hi}"]
        self.cache[("interval", e)] = ((lv, hv), home, frozenset())  # type: ignore[assignment]
        return lv, hv

    def precomputed_interval(self, b: TileBound, scope: Scope) -> tuple[str, str]:
        """The bounds of ``b.operand`` over the current tile (or each tile of a chunk), read from
        the tensors that hoist-tile-bounds filled: their last index is the tile (``j // tile``)."""
        hit = self.cache.get(("interval", b.operand))
        if hit is not None and scope.inside(hit[1]):
            return hit[0]  # type: ignore[return-value]
        (it,) = E.free_iters(b.lower.indices[-1])
        tile = f"c_{it}" if self.chunked == it else f"t_{it}"
        out = []
        for ld in (b.lower, b.upper):
            idx = [self.index(i, scope) for i in ld.indices[:-1]] + [Value(tile, (), "i32")]
            if any(v.axes for v in idx[:-1]):
                raise CodegenError(f"tile bounds {ld} vary inside a program")
            if ld.tensor not in self.params:
                self.params.append(ld.tensor)
            var = self.fresh("lo" if ld is b.lower else "hi")
            scope.lines.append(f"{var} = tl.load({self.pointer(ld.tensor, idx, ())})")
            out.append(var)
        self.cache[("interval", b.operand)] = ((out[0], out[1]), scope, frozenset())  # type: ignore[assignment]
        return out[0], out[1]


def track_tiles(names: tuple[str, ...], cond: str, index: str, tiles: str, chunked: bool) -> list[str]:
    """Lines (in a scan's loop body) that lower ``names[0]`` to the first and raise ``names[1]`` to
    the last tile index where ``cond`` holds, and add the number of such tiles to ``names[2]`` if
    given; a chunked scan folds a vector of tiles per step."""
    def fold(op: str, x: str) -> str:
        return f"tl.{op}({x}, axis=0)" if chunked else x
    lines = [f"    {names[0]} = tl.minimum({names[0]}, {fold('min', f'tl.where({cond}, {index}, {tiles})')})",
             f"    {names[1]} = tl.maximum({names[1]}, {fold('max', f'tl.where({cond}, {index}, -1)')})"]
    if len(names) > 2:
        lines.append(f"    {names[2]} = {names[2]} + {fold('sum', f'tl.where({cond}, 1, 0)')}")
    return lines
