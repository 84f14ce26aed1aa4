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
from flashlight.codegen.operators import LIBDEVICE, TL_DTYPE, literal, pointwise
from flashlight.codegen.kernel_state import INT32_LIMIT, Scope, Value
from flashlight.codegen.dot import MatrixProducts
from flashlight.codegen.statements import Statements, fold_helpers
from flashlight.codegen.tile_scan import TileScan
from flashlight.codegen.walks import assigned_again, is_affine, statements, statements_with_loops
from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
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


class _Kernel(Statements, MatrixProducts, TileScan):
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

    def value(self, e: Expr, scope: Scope) -> Value:
        if isinstance(e, Const):
            return Value(literal(e), (), e.dtype)
        if isinstance(e, Iter):
            return self.offsets(e.name)
        key = (e,)
        hit = self.cache.get(key)
        if hit is not None and scope.inside(hit[1]):
            return hit[0]
        reads: set[str] = set()
        home = self.home(e, scope, reads)
        if isinstance(e, Load):
            v = self.load(e, home)
        else:
            v = self.call(e, home)
        if not v.code.isidentifier():
            var = self.fresh()
            home.lines.append(f"{var} = {v.code}")
            v = Value(var, v.axes, v.dtype, v.zero_outside)
        self.cache[key] = (v, home, frozenset(reads))
        return v

    def home(self, e: Expr, scope: Scope, reads: set[str]) -> Scope:
        """The outermost open scope in which ``e`` has its value: hoists loop invariants."""
        its = E.free_iters(e)
        regs = {ld.tensor for ld in E.loads(e) if ld.tensor in self.produced}
        reads.update(regs)
        s: Scope | None = scope
        chain = []
        while s is not None:
            chain.append(s)
            s = s.parent
        for s in chain:  # innermost first: stop at the first scope the expression varies in
            if s.branch and isinstance(e, Load) and e.tensor not in self.produced:
                continue  # both arms load the same tiles: load them once, unconditionally (pipelined)
            if (s.loop_iter is not None and s.loop_iter in its) or (s.written & regs):
                return s
        return chain[-1]

    def index(self, e: Expr, scope: Scope) -> Value:
        """An integer index expression (affine ones are emitted inline)."""
        form = E.affine_form(e)
        if form is None:
            v = self.value(e, scope)
            return Value(f"({v.code}).to(tl.int64)" if self.wide else v.code, v.axes, v.dtype)
        coeffs, c = form
        axes = self.order({k for k in coeffs if k in self.axes})
        terms = []
        for k, a in coeffs.items():
            off = self.bcast(self.offsets(k), axes)
            terms.append(off if a == 1 else f"{a} * {off}")
        if c or not terms:
            terms.append(str(c))
        return Value(" + ".join(terms).replace("+ -", "- "), axes, "i32")

    def pointer(self, tensor: str, idx: list[Value], axes: tuple[str, ...]) -> str:
        """``tensor_ptr + i0 * s0 + ...``. Offsets of a tensor with more than 2**31 - 1 elements are
        formed in 64 bits: an int32 block offset times a stride would wrap around."""
        wide = self.program.tensor(tensor).numel > INT32_LIMIT
        parts = []
        for v, st in zip(idx, self.strides[tensor]):
            if st == 0 or v.code == "0":
                continue
            code = self.bcast(v, axes) if v.axes else v.code
            if wide and v.axes:
                code = f"({code}).to(tl.int64)"
            elif wide and not code.lstrip("-").isdigit():  # a loop counter: an int in the interpreter
                code = f"tl.full([], 0, tl.int64) + ({code})"
            parts.append(f"({code}) * {st}" if st != 1 else f"({code})")
        return f"{tensor}_ptr" + "".join(f" + {p}" for p in parts)

    def load(self, e: Load, scope: Scope, order: tuple[str, ...] | None = None) -> Value:
        decl = self.program.tensor(e.tensor)
        reg = self.registers.get(e.tensor) if e.tensor in self.produced else None
        elsewhere = e.tensor in self.written and self.written[e.tensor] != e.indices
        if reg is not None and not (elsewhere and decl.storage != "local"):
            return reg  # computed in this kernel at this point: its value is in registers
        if e.tensor in self.produced and (decl.storage == "local" or (e.tensor in self.written and not elsewhere)):
            raise CodegenError(f"{e.tensor} is read before this kernel writes it")
        # an input, a buffer this kernel writes later (an in-place update such as the empty-row
        # fixup), or one it wrote at other points (c[i - 1] of a walked loop): read memory.
        # fuse-reductions and tile proved that no program reads what another writes, and what
        # one writes earlier in program order is in memory before it reads it
        if e.tensor not in self.params:
            self.params.append(e.tensor)
        idx = [self.index(i, scope) for i in e.indices]
        axes = order or self.order({a for v in idx for a in v.axes})
        ptr = self.pointer(e.tensor, idx, axes)
        if not axes:
            return Value(f"tl.load({ptr})", (), decl.dtype)
        m = self.mask_of(axes)
        if m is None:
            return Value(f"tl.load({ptr})", axes, decl.dtype, frozenset(axes))
        other = "0" if decl.dtype != "b1" else "False"
        return Value(f"tl.load({ptr}, mask={m.code}, other={other})", axes, decl.dtype,
                      frozenset(axes))

    def call(self, e: Call, scope: Scope) -> Value:
        op = e.op
        args = [self.value(a, scope) for a in e.args]
        dt = E.dtype_of(e, self.program.dtypes)
        axes = self.order({a for v in args for a in v.axes})
        xs = [self.bcast(v, axes) for v in args]
        if op in dtypes.ALL:
            src = args[0]
            if src.dtype == op:
                return src
            if op == "b1":
                return self.boolean(f"({xs[0]} != 0)", axes)
            if src.dtype == "b1":  # via a select: the interpreter cannot convert int1 to 16-bit floats
                one, zero = ("1.0", "0.0") if dtypes.is_float(op) else ("1", "0")
                return Value(f"tl.where({xs[0]}, {one}, {zero}).to({TL_DTYPE[op]})", axes, op)
            return Value(f"{xs[0]}.to({TL_DTYPE[op]})", axes, op, src.zero_outside)
        code = pointwise(op, xs, [v.dtype for v in args], self.target)
        if op in LIBDEVICE and self.target == "cuda":
            self.uses_libdevice = True
        return self.boolean(code, axes) if dt == "b1" else Value(code, axes, dt)

    def boolean(self, code: str, axes: tuple[str, ...]) -> Value:
        """A computed boolean. Triton's interpreter gives a comparison's result its operands' dtype
        (holding numpy bools), so a scalar one splatted to a block becomes floats, and ``mask & it``
        fails: a select re-makes such a scalar as int1."""
        if self.target == "interpreter" and not axes:
            code = f"tl.where({code}, True, False)"
        return Value(code, axes, "b1")

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

    def store(self, s: Stmt, v: Value, scope: Scope, guards: tuple[Expr, ...]) -> None:
        decl = self.program.tensor(s.target.tensor)
        if s.target.tensor not in self.params:
            self.params.append(s.target.tensor)
        idx = [self.index(i, scope) for i in s.target.indices]
        axes = self.order({a for x in idx for a in x.axes} | set(v.axes))
        ptr = self.pointer(s.target.tensor, idx, axes)
        val = self.bcast(v, axes) if v.axes else v.code
        if v.dtype != decl.dtype:
            val = f"({val}).to({TL_DTYPE[decl.dtype]})"
        masks = []
        m = self.mask_of(axes)
        if m is not None:
            masks.append(m.code)
        for g in guards:
            gv = self.value(g, scope)
            masks.append(self.bcast(gv, self.order(set(axes) | set(gv.axes))))
        mask = f", mask={' & '.join(f'({x})' for x in masks)}" if masks else ""
        scope.lines.append(f"tl.store({ptr}, {val}{mask})")

    # }}}
