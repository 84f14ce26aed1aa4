"""What one kernel knows while it is written: its axes, the layout of values along them, the
scopes lines go into, and facts about the statements of its nest.

The kernel class (:mod:`flashlight.codegen.triton`) combines this state with one mixin per part
of the code: expressions, memory access, statements, matrix products, serial loops, the run-time
tile scan and the skeleton. The mixins share the state below and call each other's methods.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from functools import cached_property

from flashlight.codegen.kernel_source import CodegenError
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Loop, Node, Program, Stmt, TensorDecl, TileBound, grid_chain, scatters, walk_loops, walk_stmts

INT32_LIMIT = 2**31 - 1

# a tensor's strides: numbers, or expressions of the size parameters (``16 * S``) where the
# layout depends on them
Strides = dict[str, tuple["int | Expr", ...]]

# names a kernel defines itself: a size parameter (a kernel argument) may not be one of them
_KERNEL_NAMES = re.compile(r"(pid|tl|triton|libdevice|range|float|int|_.*|(pid|o|m|t|c|r)_.*|.*_ptr|"
                           r"(v|a|b|t|lo|hi|first|last|sure_first|sure_last|sure_count|run|run_lo|run_hi|held|ok)\d+)")


@dataclass
class Value:
    """Code of a value, the kernel axes it varies along (in the kernel's order) and its dtype."""
    code: str
    axes: tuple[str, ...]
    dtype: str
    zero_outside: frozenset[str] = frozenset()  # axes beyond whose bounds the value is 0


@dataclass
class Scope:
    """The lines of one block of the kernel (its body, a loop's body, one arm of a test)."""
    lines: list[str]
    parent: Scope | None
    loop_iter: str | None = None          # serial iterator introduced by this scope
    written: set[str] = field(default_factory=set)  # registers assigned inside this loop
    depth: int = 0
    branch: bool = False                  # one arm of a run-time tile test inside a loop

    def inside(self, outer: Scope) -> bool:
        """Whether this scope is ``outer`` or nested in it (so it sees what ``outer`` defined)."""
        scope: Scope | None = self
        while scope is not None:
            if scope is outer:
                return True
            scope = scope.parent
        return False


class KernelState:
    def __init__(self, program: Program, nest: Node, name: str, strides: Strides, target: str) -> None:
        self.program, self.nest, self.name, self.strides, self.target = program, nest, name, strides, target
        for p in program.params:
            if keyword.iskeyword(p) or _KERNEL_NAMES.fullmatch(p):
                raise CodegenError(f"size parameter {p} has the name of a variable of the kernel")
        self.grid: list[Loop] = grid_chain(nest)
        self.phases: tuple[Node, ...] = self.grid[-1].body if self.grid else (nest,)
        self.tile: dict[str, int] = {}
        self.extent: dict[str, int | str] = {}  # a number, or the size parameter the loop runs to
        self.sizes: set[str] = set()  # size parameters the kernel reads (its int arguments)
        self.role: dict[str, str] = {}
        self.axes: list[str] = []
        for l in self.grid:
            self.add_axis(l, "grid")
        for m in ("serial", "block"):
            for l in walk_loops(self.phases):
                if l.mapping == m:
                    self.add_axis(l, m)
        for l in walk_loops(self.phases):
            if l.mapping not in ("serial", "block"):
                raise CodegenError(f"loop {l.iterator} has no mapping; run fuse-reductions and tile first")
        self.params: list[str] = []
        self.registers: dict[str, Value] = {}
        self.written: dict[str, tuple[Expr, ...]] = {}  # tensors whose statements were emitted: where
        self.counter = 0
        self.cache: dict[tuple, tuple[Value, Scope, frozenset[str]]] = {}
        self.wide = any(self.is_wide(t) for t in program.tensors if t.storage == "global")
        self.uses_libdevice = False
        self.uses_index = False
        self.open_accumulators: set[str] = set()
        self.full_tiles = False
        self.inside_extent: set[str] = set()  # serial iterators whose current tiles are proved full
        self.drop_data_guards = False
        self.chunked: str | None = None  # the serial iterator a guard-bounds scan takes in chunks
        self.tile_bounds: dict[Load, TileBound] = {}  # of the serial loop being emitted

    def add_axis(self, l: Loop, role: str) -> None:
        it = l.iterator
        n: int | str
        if isinstance(l.upper, Const):
            n = int(l.upper.value)
        elif isinstance(l.upper, Iter) and l.upper.name in self.program.params:
            n = l.upper.name
        else:
            raise CodegenError(f"loop {it} runs to {l.upper}: only a number or a size parameter")
        if l.tile is None:
            raise CodegenError(f"loop {it} is not tiled; run the tile pass first")
        if it in self.role and (self.role[it] != role or self.extent[it] != n):
            raise CodegenError(f"iterator {it} has two roles in one kernel")
        if it in self.tile and self.tile[it] != l.tile:
            raise CodegenError(f"iterator {it} has two tiles in one kernel ({self.tile[it]} and {l.tile})")
        self.extent[it], self.tile[it], self.role[it] = n, l.tile, role
        # a grid or serial loop walked one point at a time is a scalar (its iterator's value), not
        # an axis of length one: a product of two tiles inside it stays a product of two matrices
        if it not in self.axes and (role == "block" or l.tile > 1):
            self.axes.append(it)

    # {{{ axes and the layout of values along them

    def fresh(self, base: str = "v") -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def order(self, axes: set[str] | frozenset[str]) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in axes)

    def bcast(self, v: Value, to: tuple[str, ...]) -> str:
        """The code of ``v`` laid out along ``to``: transposed where its axes are in another order,
        with ``None`` dimensions inserted for the axes it does not vary along."""
        if v.axes == to or not v.axes:
            return v.code
        if list(v.axes) != [a for a in to if a in v.axes]:
            perm = sorted(range(len(v.axes)), key=lambda k: to.index(v.axes[k]))
            code = f"tl.trans({v.code})" if len(v.axes) == 2 else f"tl.permute({v.code}, {tuple(perm)})"
            v = Value(code, tuple(v.axes[k] for k in perm), v.dtype)
        if v.axes == to:
            return v.code
        code = v.code if v.code.isidentifier() else f"({v.code})"
        return f"{code}[{', '.join(':' if a in v.axes else 'None' for a in to)}]"

    def shape(self, axes: tuple[str, ...]) -> str:
        return "[" + ", ".join(str(self.tile[a]) for a in axes) + "]"

    def needs_mask(self, it: str) -> bool:
        """Whether the tiles of ``it`` have a tail: always, for an extent known only at launch, but
        never in a tile range proved full (tile-ranges: its tiles lie inside the loop's bounds)."""
        if it in self.inside_extent:
            return False
        n = self.extent[it]
        return isinstance(n, str) or n % self.tile[it] != 0

    def size(self, name: str) -> str:
        """A size parameter read by the kernel: it becomes an argument."""
        self.sizes.add(name)
        return name

    def extent_code(self, it: str) -> str:
        n = self.extent[it]
        return self.size(n) if isinstance(n, str) else str(n)

    def tile_count(self, it: str) -> str:
        """The number of tiles of ``it``: a number, or an expression of its size parameter."""
        n, t = self.extent[it], self.tile[it]
        if not isinstance(n, str):
            return str(-(-n // t))
        return self.size(n) if t == 1 else f"(({self.size(n)} + {t - 1}) // {t})"

    def is_wide(self, decl: TensorDecl) -> bool:
        """Offsets into ``decl`` need 64 bits. A shape of size parameters is taken to fit in 32:
        the runtime refuses sizes that would not (it checks every call)."""
        return all(isinstance(d, int) for d in decl.shape) and decl.numel > INT32_LIMIT

    def size_code(self, e: Expr) -> str:
        """An integer expression of size parameters (a stride such as ``16 * S``)."""
        if isinstance(e, Const):
            return str(int(e.value))
        if isinstance(e, Iter) and e.name in self.program.params:
            return self.size(e.name)
        if isinstance(e, Call) and e.op in ("add", "sub", "mul", "floordiv"):
            sym = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//"}[e.op]
            return f"({self.size_code(e.args[0])} {sym} {self.size_code(e.args[1])})"
        raise CodegenError(f"{e} is no expression of the size parameters")

    def offsets(self, it: str) -> Value:
        if it in self.axes:
            return Value(f"o_{it}", (it,), "i32")
        if it in self.program.params:  # an index or a guard that reads a size
            return Value(self.size(it), (), "i32")
        return Value(f"{it}", (), "i32")

    def mask_of(self, axes: tuple[str, ...]) -> Value | None:
        """The points of a tile over ``axes`` inside the loops' extents (None: all of them)."""
        parts = [a for a in axes if self.needs_mask(a)]
        if not parts:
            return None
        code = " & ".join(self.bcast(Value(f"m_{a}", (a,), "b1"), axes) for a in parts)
        return Value(f"({code})" if len(parts) > 1 else code, axes, "b1")

    # }}}

    # {{{ facts about the statements of the nest

    @cached_property
    def produced(self) -> set[str]:
        """Tensors this kernel writes: reads of them inside the kernel come from registers."""
        return {s.target.tensor for s, _, _ in walk_stmts(self.phases)}

    @cached_property
    def read_here(self) -> set[str]:
        """Tensors some statement of this kernel reads, in its expression or its guards (a ReLU's
        backward tests the recomputed product it masks by)."""
        return {ld.tensor for s, _, g in walk_stmts(self.phases)
                for e in (s.expr, s.scale, *g) if e is not None for ld in E.loads(e)}

    @cached_property
    def guards_of(self) -> dict[str, tuple[Expr, ...]]:
        return {s.name: g for s, _, g in walk_stmts(self.phases)}

    @cached_property
    def stmt_block_axes(self) -> dict[str, set[str]]:
        return {s.name: {l.iterator for l in loops if l.iterator in self.axes}
                for s, loops, _ in walk_stmts(self.phases)}

    def read_only_under(self, tensor: str, guards: tuple[Expr, ...]) -> bool:
        """Every statement reading ``tensor`` in this kernel runs under ``guards`` (or stronger)."""
        for s, _, _ in walk_stmts(self.phases):
            if any(ld.tensor == tensor for ld in E.loads(s.expr) + (E.loads(s.scale) if s.scale else [])):
                if not set(guards) <= set(self.guards_of[s.name]):
                    return False
        return True

    def target_axes(self, s: Stmt) -> tuple[str, ...]:
        return self.order({a for i in s.target.indices for a in E.free_iters(i) if a in self.axes})

    @cached_property
    def loops_of(self) -> dict[str, tuple[Loop, ...]]:
        return {s.name: tuple(self.grid) + loops for s, loops, _ in walk_stmts(self.phases)}

    def scatters(self, s: Stmt) -> bool:
        """Whether ``s`` adds into elements its points may share (atomically): see :func:`scatters`."""
        return scatters(s, self.loops_of[s.name])

    def axes_of_stmt(self, s: Stmt) -> set[str]:
        its = E.free_iters(s.expr) | E.free_iters(s.target)
        return {a for a in its if a in self.axes} | self.stmt_block_axes.get(s.name, set())

    # }}}
