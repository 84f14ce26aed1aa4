"""Triton source from tiled, mapped IR: one ``@triton.jit`` kernel per top-level nest.

The kernel follows the IR's mapping, nothing else:

* ``@grid`` loops become one program axis (``tl.program_id(0)``, decomposed innermost-fastest so
  neighbouring programs share the tiles of the other operands); a grid loop with tile ``T > 1``
  becomes a vector axis of offsets ``o_x = pid_x * T + tl.arange(0, T)``;
* ``@serial`` loops become ``for`` loops over tiles, with loop-carried accumulators;
* ``@block`` loops become whole vector axes (``tl.arange`` over the padded extent).

Every value carries the axes it varies along (a subset of the kernel's axes, in one canonical
order); operators broadcast by inserting ``None`` dimensions. Local temporaries are registers;
reductions fold a tile with ``tl.sum``/``tl.max``/``tl.min`` after replacing points outside the
domain (tails, guards) by the identity, and a sum of a product of two tiles that share exactly
the reduced axis becomes ``tl.dot`` on the operands' own dtype with fp32 accumulation. An
online reduction updates ``acc = acc * rescale + tile`` (``max(acc + rescale, tile)``).
Expressions that do not vary inside a loop are emitted before it (so the Q tile of attention is
loaded once), and equal expressions are emitted once.
"""

from __future__ import annotations

import math
from dataclasses import replace

from flashlight.codegen.kernel_source import CodegenError, KernelSource
from flashlight.codegen.operators import TL_DTYPE, literal
from flashlight.codegen.kernel_state import Scope, Value
from flashlight.codegen.dot import MatrixProducts
from flashlight.codegen.expressions import Expressions
from flashlight.codegen.memory import MemoryAccess
from flashlight.codegen.statements import Statements, fold_helpers
from flashlight.codegen.tile_scan import TileScan
from flashlight.codegen.walks import assigned_again, is_affine, statements, statements_with_loops
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Call, Const, Expr, Iter
from flashlight.ir.nodes import Guard, Loop, Node, Program, Stmt

def generate(program: Program, strides: dict[str, tuple[int, ...]], target: str = "cuda",
             name_prefix: str = "flashlight", num_warps: int | None = None,
             num_stages: int | None = None) -> list[KernelSource]:
    """One kernel per top-level nest of a tiled, mapped program.

    ``num_warps``/``num_stages`` default to a choice by the kernel's register tiles.
    """
    if target not in ("cuda", "interpreter"):
        raise ValueError(f"unknown target {target!r}")
    out = []
    for k, nest in enumerate(program.body):
        kern = _Kernel(program, nest, f"{name_prefix}_{program.name}_k{k}", strides, target).build()
        warps = num_warps or (8 if kern.tile_elements > 32 * 1024 else 4)
        stages = num_stages or (3 if kern.serial else 2)
        out.append(replace(kern, num_warps=warps, num_stages=stages))
    return out


class _Kernel(Statements, MatrixProducts, TileScan, MemoryAccess, Expressions):
    # {{{ helpers

    def loop_bound(self, code: str) -> str:
        """A loop bound. Triton 3.6's interpreter converts a run-time bound with ``int`` of a
        one-element array, which numpy 2.4 refuses: interpreted kernels convert it themselves."""
        if self.target != "interpreter" or code.lstrip("-").isdigit():
            return code
        self.uses_index = True
        return f"_index({code})"

    # }}}

    # {{{ expressions

    # }}}

    # {{{ statements

    def build(self) -> KernelSource:
        top = Scope([], None)
        lines = top.lines
        grid_counts = []
        lines.append(f"pid = tl.program_id(0){'.to(tl.int64)' if self.wide else ''}")
        counts = {l.iterator: math.ceil(self.extent[l.iterator] / self.tile[l.iterator]) for l in self.grid}
        for k, l in enumerate(reversed(self.grid)):
            n = counts[l.iterator]
            grid_counts.append(n)
            var = f"pid_{l.iterator}" if self.tile[l.iterator] > 1 else l.iterator
            if l.launch is not None:  # reversed, interleaved with `group` outer indices
                others = math.prod(counts[x.iterator] for x in list(reversed(self.grid))[k + 1:])
                group = l.launch.group
                if others % group:
                    raise CodegenError(f"launch group {group} of {l.iterator} does not divide {others} outer programs")
                lines.append(f"{var} = {n - 1} - (pid % {n * group}) // {group}")
                lines.append(f"pid = (pid // {n * group}) * {group} + pid % {group}")
            else:
                lines.append(f"{var} = pid % {n}")
                lines.append(f"pid = pid // {n}")
            if self.tile[l.iterator] > 1:
                t = self.tile[l.iterator]
                lines.append(f"o_{l.iterator} = {var} * {t} + tl.arange(0, {t})")
                if self.needs_mask(l.iterator):
                    lines.append(f"m_{l.iterator} = o_{l.iterator} < {self.extent[l.iterator]}")
        for it in self.axes:
            if self.role[it] == "block":
                lines.append(f"o_{it} = tl.arange(0, {self.tile[it]})")
                if self.needs_mask(it):
                    lines.append(f"m_{it} = o_{it} < {self.extent[it]}")
        for phase in self.phases:
            self.emit_node(phase, top, ())
        grid = 1
        for n in grid_counts:
            grid *= n
        args = ", ".join(f"{p}_ptr" for p in self.params)
        header = ["import triton", "import triton.language as tl"]
        if self.uses_libdevice:
            header.append("from triton.language.extra import libdevice")
        helpers = fold_helpers(lines, self.target)
        if self.uses_index:
            helpers += ["", "", "def _index(x):  # not jitted: the interpreter runs it as Python",
                        "    data = getattr(getattr(x, 'handle', None), 'data', x)",
                        "    return int(data.reshape(-1)[0]) if hasattr(data, 'reshape') else int(data)"]
        src = "\n".join(header + helpers + ["", "", "@triton.jit", f"def {self.name}({args}):"]
                        + ["    " + line for line in lines]) + "\n"
        registers = 0  # elements held in registers: every register tile the kernel keeps
        for t in {s_.target.tensor for s_, _ in statements_with_loops(self.phases, ())}:
            reg = self.registers.get(t)
            if reg is not None:
                n = 1
                for a in reg.axes:
                    n *= self.tile[a]
                registers += n
        serial = any(self.role[a] == "serial" for a in self.axes)
        return KernelSource(self.name, src, tuple(self.params), grid, tile_elements=registers, serial=serial)

    def emit_node(self, node: Node, scope: Scope, guards: tuple[Expr, ...]) -> None:
        if isinstance(node, Stmt):
            self.emit_stmt(node, scope, guards)
        elif isinstance(node, Guard):
            # inside tiles proved full, every affine guard holds; inside tiles whose bounds prove a
            # data-dependent guard, it holds too: no mask code for them
            affine = is_affine(node.cond)
            dropped = (affine and self.full_tiles) or (not affine and self.drop_data_guards)
            extra = () if dropped else (node.cond,)
            for c in node.body:
                self.emit_node(c, scope, guards + extra)
        elif node.mapping == "block":
            for c in node.body:
                self.emit_node(c, scope, guards)
        elif node.mapping == "serial":
            self.emit_serial(node, scope, guards)
        else:
            raise CodegenError(f"unexpected {node.mapping} loop {node.iterator} inside a kernel")

    def emit_serial(self, loop: Loop, scope: Scope, guards: tuple[Expr, ...]) -> None:
        """One ``for`` over tiles per tile range (all tiles if the loop lists none); accumulators
        start before the first and are stored after the last."""
        it, t, n = loop.iterator, self.tile[loop.iterator], self.extent[loop.iterator]
        carried = [acc for acc in self.carried(loop) if acc.target.tensor not in self.open_accumulators]
        for acc in carried:  # loop-carried accumulators start at the identity
            self.init_accumulator(acc, scope)
            self.open_accumulators.add(acc.target.tensor)
        ranges = [(self.scalar(r.lower), self.scalar(r.upper), r.masked) for r in loop.ranges] or \
            [("0", str(math.ceil(n / t)), True)]
        self.tile_bounds = {b.operand: b for b in loop.bounds}  # precomputed per-tile bounds of guard data
        for lo, hi, masked in ranges:
            self.full_tiles = not masked
            # which data-dependent guards can be bounded over a tile; the probe's lines are dropped
            # (each loop below bounds its own tiles), invariant loads it hoists stay where they went
            probe = Scope([], scope, loop_iter=it, depth=scope.depth + 1)
            certain, possible = self.tile_predicate(loop, self.open_tile(loop, probe))
            self.full_tiles = False
            if possible is None:
                self.emit_tiles(loop, scope, guards, lo, hi, masked, False)
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
            if self.program.tensor(acc.target.tensor).storage != "local" \
                    and not assigned_again(self.phases, loop, acc.target):
                self.store(acc, self.registers[acc.target.tensor], scope, ())

    def open_tile(self, loop: Loop, scope: Scope) -> Scope:
        it = loop.iterator
        scope.lines.append(f"o_{it} = t_{it} * {self.tile[it]} + tl.arange(0, {self.tile[it]})")
        if self.needs_mask(it):
            scope.lines.append(f"m_{it} = o_{it} < {self.extent[it]}")
        return scope

    def emit_tiles(self, loop: Loop, scope: Scope, guards: tuple[Expr, ...], lo: str, hi: str,
                   masked: bool, test: bool, why: str = "") -> None:
        """One ``for`` over the tiles ``[lo, hi)`` of ``loop``; with ``test``, a tile runs the body
        only if its bounds say the data-dependent guards may hold somewhere in it."""
        it = loop.iterator
        written = {s.target.tensor for s in statements(loop)}
        inner = self.open_tile(loop, Scope([], scope, loop_iter=it, depth=scope.depth + 1))
        inner.written = written
        self.full_tiles = not masked
        possible = self.tile_predicate(loop, inner)[1] if test else None
        body = inner if possible is None else Scope([], inner, loop_iter=it, depth=inner.depth, branch=True)
        body.written = written
        for c in loop.body:
            self.emit_node(c, body, guards)
        if possible is not None:
            inner.lines.append(f"if {possible}:")
            inner.lines.extend("    " + x for x in body.lines or ["pass"])
        self.full_tiles = False
        notes = ([] if masked else ["every affine guard holds: no affine mask code"]) + ([why] if why else [])
        note = f"  # {'; '.join(notes)}" if notes else ""
        scope.lines.append(f"for t_{it} in range({self.loop_bound(lo)}, {self.loop_bound(hi)}):{note}")
        scope.lines.extend("    " + line for line in inner.lines)
        self.invalidate(written)

    def scalar(self, e: Expr) -> str:
        """A tile-range bound: grid iterators stand for the first point of the program's tile."""
        if isinstance(e, Const):
            return literal(e)
        if isinstance(e, Iter):
            it = e.name
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
        for s in statements(loop):
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

    # }}}
