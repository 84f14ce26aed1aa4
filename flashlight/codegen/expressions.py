"""Expressions: a value of the IR as code over the kernel's axes.

Every value carries the axes it varies along; operators broadcast their operands to the union
(``None`` dimensions). An expression is emitted once, in the outermost open scope where it has
its value (loop invariants are hoisted: the Q tile of attention is loaded once), and reused
while that scope is open and the registers it reads are unchanged.
"""

from __future__ import annotations

from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.codegen.operators import LIBDEVICE, TL_DTYPE, cast, literal, pointwise
from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load


class Expressions(KernelState):
    """Uses ``load`` of memory access."""

    def value(self, e: Expr, scope: Scope) -> Value:
        """``e`` as seen from ``scope``: emitted once, into its home scope, then reused while that
        scope is open and the registers it reads are unchanged (``invalidate``)."""
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

    def call(self, e: Call, scope: Scope) -> Value:
        """A cast or a pointwise operator, on its operands broadcast to the union of their axes."""
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
            x = xs[0]
            if isinstance(e.args[0], Const):  # a Python literal has no .to: make it a tensor of its dtype first
                x = f"tl.full([], {x}, {TL_DTYPE[src.dtype]})"
            return Value(cast(x, src.dtype, op, self.target), axes, op,
                         frozenset() if isinstance(e.args[0], Const) else src.zero_outside)
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
