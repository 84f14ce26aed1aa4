"""Serial loops: a ``@serial`` loop becomes Python ``for`` loops over its tiles.

One ``for`` per tile range the tile pass listed (tiles where every affine guard holds run
without affine mask code), split further by the loop's tile test of data-dependent guards
(bound-guard-tiles; printed by :mod:`flashlight.codegen.tile_scan`). Reductions whose target
does not vary along the loop carry an accumulator: it starts at the combiner's identity before
the first tile and is stored after the last, unless the loop lists it as superseded (the NaN
fixup after it stores it).
"""

from __future__ import annotations

from flashlight.codegen.kernel_source import CodegenError
from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.codegen.operators import TL_DTYPE, literal
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Call, Const, Expr, Iter
from flashlight.ir.nodes import Loop, Stmt, walk_stmts

# converts a run-time loop bound under the interpreter (see SerialLoops.loop_bound)
INDEX_HELPER = ["", "", "def _index(x):  # not jitted: the interpreter runs it as Python",
                "    data = getattr(getattr(x, 'handle', None), 'data', x)",
                "    return int(data.reshape(-1)[0]) if hasattr(data, 'reshape') else int(data)"]


class SerialLoops(KernelState):
    """Uses ``emit_node`` of the skeleton for loop bodies, ``tile_predicate`` and ``narrow`` of
    the tile scan, ``store`` and ``invalidate`` for accumulators."""

    def loop_bound(self, code: str) -> str:
        """A loop bound. Triton 3.6's interpreter converts a run-time bound with ``int`` of a
        one-element array, which numpy 2.4 refuses: interpreted kernels convert it themselves."""
        if self.target != "interpreter" or code.lstrip("-").isdigit():
            return code
        self.uses_index = True
        return f"_index({code})"

    def emit_serial(self, loop: Loop, scope: Scope, guards: tuple[Expr, ...]) -> None:
        """One ``for`` over tiles per tile range (all tiles if the loop lists none); accumulators
        start before the first and are stored after the last."""
        it = loop.iterator
        carried = [acc for acc in self.carried(loop) if acc.target.tensor not in self.open_accumulators]
        for acc in carried:  # loop-carried accumulators start at the identity
            self.init_accumulator(acc, scope)
            self.open_accumulators.add(acc.target.tensor)
        ranges = [(self.scalar(r.lower), self.scalar(r.upper), r.masked) for r in loop.ranges] or \
            [("0", self.tile_count(it), True)]
        self.tile_bounds = {b.operand: b for b in loop.bounds}  # precomputed per-tile bounds of guard data
        for lo, hi, masked in ranges:
            self.full_tiles = not masked
            self.inside_extent = {it} if not masked else set()
            # the loop's tile test (bound-guard-tiles), printed once to place what it reads: the probe's
            # lines are dropped (each loop below bounds its own tiles), invariant loads it hoists stay
            probe = Scope([], scope, loop_iter=it, depth=scope.depth + 1)
            certain, possible = self.tile_predicate(loop, self.open_tile(loop, probe))
            self.full_tiles, self.inside_extent = False, set()
            if possible is None:
                self.emit_tiles(loop, scope, guards, lo, hi, masked, False)
                continue
            if masked and any(not r.masked for r in loop.ranges):
                # the masked tiles beside full ones are the few at a boundary (a diagonal, the
                # tail): each is tested, not scanned for a run (which would copy the body twice)
                self.emit_tiles(loop, scope, guards, lo, hi, masked, True)
                continue
            # data-dependent guards, bounded over each tile at run time: a scan over the guard data
            # finds the first and last tile where they may hold (tiles outside are never visited)
            # and the run of tiles where they hold everywhere, which needs no guard code.
            first, last, run_lo, run_hi = self.narrow(loop, scope, lo, hi, certain is not None)
            if certain is None:  # no tile is ever free of guard code: test each tile, skip where they cannot hold
                self.emit_tiles(loop, scope, guards, first, f"{last} + 1", masked, True)
                continue
            # The tiles around the run apply the guards without a per-tile test: a test inside the
            # loop stops Triton from pipelining its loads (document masks on the H100: 0.29 ms
            # without, 0.34 ms with), and a tile where the guards hold nowhere is still correct
            # under them (it adds nothing), only wasted.
            self.emit_tiles(loop, scope, guards, first, run_lo, masked, False)
            self.drop_data_guards = True
            self.emit_tiles(loop, scope, guards, run_lo, run_hi, masked, False, "every data-dependent guard holds")
            self.drop_data_guards = False
            self.emit_tiles(loop, scope, guards, run_hi, f"{last} + 1", masked, False)
        self.tile_bounds = {}
        for acc in carried:  # a global accumulator is stored once it is complete
            self.open_accumulators.discard(acc.target.tensor)
            # a superseded accumulator is stored by the NaN fixup after the loop (supersede-stores)
            if self.program.tensor(acc.target.tensor).storage != "local" and acc.target.tensor not in loop.superseded:
                self.store(acc, self.registers[acc.target.tensor], scope, ())

    def open_tile(self, loop: Loop, scope: Scope) -> Scope:
        it = loop.iterator
        if it not in self.axes:  # one point a tile: the iterator's value
            scope.lines.append(f"{it} = t_{it}")
            return scope
        scope.lines.append(f"o_{it} = t_{it} * {self.tile[it]} + tl.arange(0, {self.tile[it]})")
        if self.needs_mask(it):
            scope.lines.append(f"m_{it} = o_{it} < {self.extent_code(it)}")
        return scope

    def emit_tiles(self, loop: Loop, scope: Scope, guards: tuple[Expr, ...], lo: str, hi: str,
                   masked: bool, test: bool, why: str = "") -> None:
        """One ``for`` over the tiles ``[lo, hi)`` of ``loop``; with ``test``, a tile runs the body
        only if its bounds say the data-dependent guards may hold somewhere in it."""
        it = loop.iterator
        written = {s.target.tensor for s, _, _ in walk_stmts((loop,))}
        self.inside_extent = {it} if not masked else set()  # full tiles have no tail to mask
        inner = self.open_tile(loop, Scope([], scope, loop_iter=it, depth=scope.depth + 1))
        inner.written = written
        self.full_tiles = not masked
        possible = self.tile_predicate(loop, inner, with_certain=False)[1] if test else None
        body = inner if possible is None else Scope([], inner, loop_iter=it, depth=inner.depth, branch=True)
        body.written = written
        for c in loop.body:
            self.emit_node(c, body, guards)
        if possible is not None:
            inner.lines.append(f"if {possible}:")
            inner.lines.extend("    " + x for x in body.lines or ["pass"])
        self.full_tiles, self.inside_extent = False, set()
        notes = ([] if masked else ["every affine guard holds: no affine mask code"]) + ([why] if why else [])
        note = f"  # {'; '.join(notes)}" if notes else ""
        scope.lines.append(f"for t_{it} in range({self.loop_bound(lo)}, {self.loop_bound(hi)}):{note}")
        scope.lines.extend("    " + line for line in inner.lines)
        self.invalidate(written)
        # a register laid out along the loop's tiles held the last tile's values: past the loop a
        # read of that tensor is a read of memory (another range's loop reads other tiles)
        # (a loop of one point a tile has no axis: a register it wrote at an index of the
        # iterator held its last point's values)
        per_point = {s.target.tensor for s, _, _ in walk_stmts((loop,))
                     if any(it in E.free_iters(ix) for ix in s.target.indices)} if it not in self.axes else set()
        for tensor in [t for t, r in self.registers.items() if it in r.axes or t in per_point]:
            del self.registers[tensor]
            self.written.pop(tensor, None)

    def scalar(self, e: Expr) -> str:
        """A tile-range bound: grid iterators stand for the first point of the program's tile."""
        if isinstance(e, Const):
            return literal(e)
        if isinstance(e, Iter):
            it = e.name
            if it in self.program.params:
                return self.size(it)
            return f"(pid_{it} * {self.tile[it]})" if it in self.axes else it
        assert isinstance(e, Call)
        if e.op == "floordiv" and isinstance(e.args[0], Iter) and isinstance(e.args[1], Const) \
                and self.tile.get(e.args[0].name) == e.args[1].value and e.args[0].name in self.axes:
            return f"pid_{e.args[0].name}"  # the tile index of the program
        a = [self.scalar(x) for x in e.args]
        infix = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%", "le": "<=",
                 "lt": "<", "ge": ">=", "gt": ">", "eq": "==", "and": "&", "or": "|"}
        if e.op in infix:
            return f"({a[0]} {infix[e.op]} {a[1]})"
        if e.op == "neg":
            return f"(-{a[0]})"
        if e.op in ("max", "min"):
            return f"{'tl.maximum' if e.op == 'max' else 'tl.minimum'}({a[0]}, {a[1]})"
        if e.op == "where":
            return f"tl.where({a[0]}, {a[1]}, {a[2]})"
        raise CodegenError(f"tile range bound {e} has no scalar form")

    def carried(self, loop: Loop) -> list[Stmt]:
        """Reductions in ``loop`` whose target does not vary with it: their accumulators carry."""
        seen, out = set(), []
        for s, _, _ in walk_stmts((loop,)):
            if s.is_reduction and loop.iterator not in E.free_iters(s.target) and s.target.tensor not in seen:
                seen.add(s.target.tensor)
                out.append(s)
        return out

    def init_accumulator(self, s: Stmt, scope: Scope) -> None:
        axes = self.target_axes(s)
        dt = self.program.tensor(s.target.tensor).dtype
        ident = literal(E.const(COMBINERS[s.op].identity(dt), dt))
        var = f"r_{s.target.tensor}"
        scope.lines.append(f"{var} = tl.full({self.shape(axes)}, {ident}, {TL_DTYPE[dt]})")
        self.registers[s.target.tensor] = Value(var, axes, dt)
