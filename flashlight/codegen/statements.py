"""Statements: an assignment (to a register, to memory or both), or a reduction: a tile folded
along the reduced axes (``tl.sum``/``_nanmax``/...) after points outside the domain (tails,
guards) are replaced by the combiner's identity, then combined into its accumulator
(``acc = acc * rescale + tile`` for an online sum) or assigned. A fold scale
(scale-after-fold) multiplies the folded tile.
"""

from __future__ import annotations

from flashlight.codegen.kernel_source import CodegenError
from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.codegen.operators import TL_DTYPE, cast, literal, pointwise
from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr
from flashlight.ir.nodes import Stmt

# Triton's fold of a whole axis for each combiner's reduction (NaN-propagating max and min, as torch's
# amax/amin, are helpers this module writes); integers and booleans have no NaN to propagate
_REDUCE = {"sum": "tl.sum", "max": "_nanmax", "min": "_nanmin", "prod": "_product"}
_REDUCE_EXACT = {"max": "tl.max", "min": "tl.min"}


class Statements(KernelState):
    """Uses ``value`` of expressions, ``store`` of memory access and ``contract`` of matrix
    products."""

    def emit_stmt(self, s: Stmt, scope: Scope, guards: tuple[Expr, ...]) -> None:
        if s.is_reduction:
            self.emit_reduction(s, scope, guards)
        else:
            self.emit_assignment(s, scope, guards)
        self.written[s.target.tensor] = s.target.indices

    def emit_assignment(self, s: Stmt, scope: Scope, guards: tuple[Expr, ...]) -> None:
        decl = self.program.tensor(s.target.tensor)
        taxes = self.target_axes(s)
        v = self.value(s.expr, scope)
        if guards and not self.read_only_under(s.target.tensor, guards):
            if decl.storage == "local":
                raise CodegenError(f"{s.name}: a guarded assignment to a register read elsewhere")
        elif s.target.tensor in self.read_here:  # where a guard fails, nobody reads it
            self.assign(s.target.tensor, v, taxes, decl.dtype, scope)
        if decl.storage != "local":
            self.store(s, v, scope, guards)

    def emit_reduction(self, s: Stmt, scope: Scope, guards: tuple[Expr, ...]) -> None:
        decl = self.program.tensor(s.target.tensor)
        if self.scatters(s):
            self.emit_scatter(s, scope, guards)
            return
        taxes = self.target_axes(s)
        stmt_axes = self.order(set(taxes) | {a for a in self.axes_of_stmt(s)})
        red = tuple(a for a in stmt_axes if a not in taxes)
        tile = self.contract(s, red, taxes, scope, guards)
        if tile is None:
            tile = self.fold(s, red, scope, guards)
        if s.target.tensor in self.open_accumulators:
            self.accumulate(s, tile, scope)
        else:
            if s.scale is not None:
                raise CodegenError(f"{s.name}: an online reduction outside its loop")
            if s.target.tensor in self.read_here or decl.storage == "local":
                self.assign(s.target.tensor, tile, taxes, decl.dtype, scope)
            if decl.storage != "local":
                self.store(s, tile, scope, ())

    def emit_scatter(self, s: Stmt, scope: Scope, guards: tuple[Expr, ...]) -> None:
        """``out[idx[q], r] += v[q, r]``: each point adds its value into memory with an atomic
        add, masked by the tails and guards (the target was written before, by the statement that
        copies the scatter's base)."""
        decl = self.program.tensor(s.target.tensor)
        if s.op != "+=" or s.scale is not None or decl.storage == "local" or s.target.tensor in self.read_here:
            raise CodegenError(f"{s.name}: only a sum scatters, into memory no statement of its kernel reads")
        if s.target.tensor in self.written:  # the program stored the base: every thread's store lands first
            scope.lines.append("tl.debug_barrier()")
        self.store(s, self.value(s.expr, scope), scope, guards)

    def fold(self, s: Stmt, red: tuple[str, ...], scope: Scope, guards: tuple[Expr, ...]) -> Value:
        """The tile of ``s``'s expression folded along the reduced axes ``red``."""
        dt = self.program.tensor(s.target.tensor).dtype
        expr = s.expr
        v = self.value(expr, scope)
        # the folded tile spans the value's axes, the reduced ones and those its guards read
        guard_axes = {a for g in guards for a in E.free_iters(g) if a in self.axes}
        full = self.order(set(v.axes) | set(red) | guard_axes)
        code = self.bcast(v, full)
        if v.axes != full:  # a value constant along a reduced axis still counts once per point
            # (tl.full for a Python literal: broadcast_to takes tensors only, fuzz seeds 3099, 5026806)
            code = f"tl.full({self.shape(full)}, {code}, {TL_DTYPE[v.dtype]})" if isinstance(expr, Const) \
                else f"tl.broadcast_to({code}, {self.shape(full)})"
        v = Value(code, full, v.dtype)
        valid = self.validity(red, guards, scope, v.axes)
        ident = literal(E.const(COMBINERS[s.op].identity(dt), dt))
        code = v.code if valid is None else f"tl.where({valid}, {v.code}, {ident})"
        axes = v.axes
        reduce = COMBINERS[s.op].reduce
        fold = _REDUCE[reduce] if dtypes.is_float(v.dtype) else _REDUCE_EXACT.get(reduce, _REDUCE[reduce])
        for a in reversed(red):
            k = axes.index(a)
            code = f"{fold}({code}, axis={k})"
            axes = axes[:k] + axes[k + 1:]
        if s.fold_scale is not None:  # scale-after-fold: the fold, then the scale
            code = f"{code} * {literal(s.fold_scale)}"
        return Value(code, axes, dt)

    def accumulate(self, s: Stmt, tile: Value, scope: Scope) -> None:
        """Combine ``tile`` into the open accumulator of ``s``, rescaled first if ``s`` is online."""
        acc = self.registers[s.target.tensor]
        old = acc.code
        if s.scale is not None:
            sc = self.bcast(self.value(s.scale, scope), acc.axes)
            old = f"{acc.code} * {sc}" if s.op == "+=" else f"{acc.code} + {sc}"
        fold = pointwise(COMBINERS[s.op].combine, [old, self.bcast(tile, acc.axes)], [acc.dtype] * 2, self.target)
        scope.lines.append(f"{acc.code} = {fold}")
        self.invalidate({s.target.tensor})

    def validity(self, red: tuple[str, ...], guards: tuple[Expr, ...], scope: Scope,
                 axes: tuple[str, ...]) -> str | None:
        """Where a tile over ``axes`` is inside the domain: the reduced axes' tails and the guards."""
        parts = []
        m = self.mask_of(tuple(a for a in axes if a in red))
        if m is not None:
            parts.append(self.bcast(m, axes))
        for g in guards:
            gv = self.value(g, scope)
            parts.append(self.bcast(gv, axes))
        if not parts:
            return None
        return " & ".join(f"({p})" for p in parts)

    def assign(self, tensor: str, v: Value, axes: tuple[str, ...], dt: str, scope: Scope) -> None:
        """Hold ``v`` in the register of ``tensor``, laid out over ``axes`` with dtype ``dt``."""
        var = f"r_{tensor}"
        code = v.code
        if v.dtype != dt:
            code = cast(f"({code})", v.dtype, dt, self.target)
        if v.axes != axes:
            # adding zeros broadcasts tensors and Python literals alike
            code = f"tl.zeros({self.shape(axes)}, {TL_DTYPE[dt]}) + {self.bcast(Value(code, v.axes, dt), axes)}"
        scope.lines.append(f"{var} = {code}")
        self.invalidate({tensor})
        self.registers[tensor] = Value(var, axes, dt, v.zero_outside if v.axes == axes else frozenset())

    def invalidate(self, tensors: set[str]) -> None:
        """Forget cached expressions that read ``tensors``: their registers were just reassigned."""
        for key in [k for k, (_, _, reads) in self.cache.items() if reads & tensors]:
            del self.cache[key]


def fold_helpers(lines: list[str], target: str) -> list[str]:
    """Source of the fold helpers (``_product``, ``_nanmax``, ``_nanmin``) that ``lines`` call."""
    helpers: list[str] = []
    for name, combine in (("_product", "a * b"),
                          ("_nanmax", "tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)"),
                          ("_nanmin", "tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)")):
        if not any(f"{name}(" in line for line in lines):
            continue
        if target == "interpreter" and name != "_product":
            # the interpreter calls a tl.reduce combine in Python once per element (minutes for
            # a 16x16x16 tile); numpy's max and a NaN count are the same fold
            fold = "tl.max" if name == "_nanmax" else "tl.min"
            helpers += ["", "", "@triton.jit", f"def {name}(x, axis: tl.constexpr):",
                        f"    return tl.where(tl.max((x != x).to(tl.int32), axis) > 0, float('nan'), {fold}(x, axis))"]
            continue
        helpers += ["", "", "@triton.jit", f"def {name}_combine(a, b):", f"    return {combine}",
                    "", "", "@triton.jit", f"def {name}(x, axis):", f"    return tl.reduce(x, axis, {name}_combine)"]
    return helpers
