"""Memory access: index expressions, pointers into global tensors, masked loads and stores.

Loop tails are masked (``m_x``: offsets below the extent), never padded; a read of a tensor
this kernel computes comes from its register where the value there is the one read.
"""

from __future__ import annotations

from flashlight.codegen.kernel_source import CodegenError
from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.codegen.operators import cast
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Stmt


class MemoryAccess(KernelState):
    """Uses ``value`` of expressions for non-affine indices and guards."""

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
        wide = self.is_wide(self.program.tensor(tensor))
        parts = []
        for v, st in zip(idx, self.strides[tensor]):
            if (isinstance(st, int) and st == 0) or v.code == "0":
                continue
            code = self.bcast(v, axes) if v.axes else v.code
            if wide and v.axes:
                code = f"({code}).to(tl.int64)"
            elif wide and not code.lstrip("-").isdigit():  # a loop counter: an int in the interpreter
                code = f"tl.full([], 0, tl.int64) + ({code})"
            if not isinstance(st, int):  # a stride that depends on a size parameter: (16 * S)
                st = self.size_code(st)
            parts.append(f"({code}) * {st}" if st not in (1, "1") else f"({code})")
        return f"{tensor}_ptr" + "".join(f" + {p}" for p in parts)

    def load(self, e: Load, scope: Scope, order: tuple[str, ...] | None = None) -> Value:
        """The tile ``e`` reads (laid out as ``order`` if given): from a register where this kernel
        computed it, else from memory, masked at the loops' tails (zero outside them)."""
        decl = self.program.tensor(e.tensor)
        reg = self.registers.get(e.tensor) if e.tensor in self.produced else None
        elsewhere = e.tensor in self.written and self.written[e.tensor] != e.indices
        if reg is not None and not (elsewhere and decl.storage != "local"):
            # computed in this kernel at this point: its value is in registers, laid out as asked
            if order is not None and reg.axes != order and set(reg.axes) == set(order):
                return Value(self.bcast(reg, order), order, reg.dtype, reg.zero_outside)
            return reg
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
        beyond = self.beyond_bounds(e, idx, axes)
        if beyond:
            parts = ([m.code] if m is not None else []) + beyond
            m = Value(" & ".join(f"({x})" for x in parts), axes, "b1")
        if m is None:
            return Value(f"tl.load({ptr})", axes, decl.dtype, frozenset(axes))
        other = "0" if decl.dtype != "b1" else "False"
        return Value(f"tl.load({ptr}, mask={m.code}, other={other})", axes, decl.dtype,
                     frozenset(axes))

    def beyond_bounds(self, e: Load, idx: list[Value], axes: tuple[str, ...]) -> list[str]:
        """Masks for indices that may run past their dimension inside the loops' extents: a chunk
        of the keys, ``k[512 c + j']``, whose last chunk is partial, or ``table[b, (64 u + c) // 16]``
        of interleaved chunks (split-reductions guards its statements, but a load happens before
        the guard applies: ``0 * garbage`` may be NaN, and a page read from garbage may be far
        outside its pool). An index other than a plain iterator or data is compared with its
        dimension unless interval arithmetic over the extents keeps it inside."""
        out = []
        shape = self.program.tensor(e.tensor).shape
        for ix, v, dim in zip(e.indices, idx, shape):
            if not v.axes or isinstance(ix, Iter) or E.loads(ix):
                continue  # a plain iterator has its extent's mask; an index read from data is the user's
            span = self._interval(ix)
            if span is None or isinstance(dim, str) or span[1] >= dim:
                out.append(f"{self.bcast(v, axes)} < {self.size(dim) if isinstance(dim, str) else dim}")
        return out

    def _interval(self, e: Expr) -> tuple[int, int] | None:
        """Bounds of an index over the loops' extents (interval arithmetic; None where an extent
        is a size parameter or the expression is not quasi-affine)."""
        if isinstance(e, Const):
            return int(e.value), int(e.value)
        if isinstance(e, Iter):
            n = self.extent.get(e.name)
            return (0, n - 1) if isinstance(n, int) else None
        if not isinstance(e, Call):
            return None
        parts = [self._interval(a) for a in e.args]
        if any(p is None for p in parts):
            return None
        if e.op == "add":
            return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]  # type: ignore[index]
        if e.op == "sub":
            return parts[0][0] - parts[1][1], parts[0][1] - parts[1][0]  # type: ignore[index]
        if e.op == "mul":
            corners = [a * b for a in parts[0] for b in parts[1]]  # type: ignore[union-attr]
            return min(corners), max(corners)
        if e.op in ("floordiv", "mod") and isinstance(e.args[1], Const) and int(e.args[1].value) > 0:
            c, (lo, hi) = int(e.args[1].value), parts[0]  # type: ignore[misc]
            return (lo // c, hi // c) if e.op == "floordiv" else ((lo, hi) if 0 <= lo and hi < c else (0, c - 1))
        return None

    def store(self, s: Stmt, v: Value, scope: Scope, guards: tuple[Expr, ...]) -> None:
        """Write ``v`` to the target of ``s`` where the tile is inside the extents and ``guards`` hold."""
        decl = self.program.tensor(s.target.tensor)
        if s.target.tensor not in self.params:
            self.params.append(s.target.tensor)
        idx = [self.index(i, scope) for i in s.target.indices]
        axes = self.order({a for x in idx for a in x.axes} | set(v.axes))
        ptr = self.pointer(s.target.tensor, idx, axes)
        val = self.bcast(v, axes) if v.axes else v.code
        if v.dtype != decl.dtype:
            val = cast(f"({val})", v.dtype, decl.dtype, self.target)
        masks = []
        m = self.mask_of(axes)
        if m is not None:
            masks.append(m.code)
        for g in guards:
            gv = self.value(g, scope)
            masks.append(self.bcast(gv, self.order(set(axes) | set(gv.axes))))
        mask = f", mask={' & '.join(f'({x})' for x in masks)}" if masks else ""
        if self.scatters(s):  # a scatter adds into memory: several points, of one tile or of other programs, may meet
            # an atomic takes its value and mask in the pointers' shape (a store broadcasts them)
            full = self.shape(axes)
            if v.axes != axes:
                val = f"tl.broadcast_to({val}, {full})"
            if masks:
                mask = f", mask=tl.broadcast_to({' & '.join(f'({x})' for x in masks)}, {full})"
            scope.lines.append(f"tl.atomic_add(tl.broadcast_to({ptr}, {full}), {val}{mask})")
        else:
            scope.lines.append(f"tl.store({ptr}, {val}{mask})")

