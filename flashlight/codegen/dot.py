"""Matrix products: a sum over ``r`` of a product of two tiles, the statement the tile pass
marked ``as dot over r``, as ``tl.dot`` on the operands' own dtype with fp32 accumulation.
"""

from __future__ import annotations

from flashlight.codegen.kernel_source import CodegenError
from flashlight.codegen.kernel_state import KernelState, Scope, Value
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Load
from flashlight.ir.nodes import Stmt


class MatrixProducts(KernelState):
    """Uses ``value`` and ``home`` of expressions and ``load`` of memory access."""

    def contract(self, s: Stmt, red: tuple[str, ...], taxes: tuple[str, ...], scope: Scope,
                 guards: tuple[Expr, ...]) -> Value | None:
        """``sum_r A * B`` as ``tl.dot``: the statement the tile pass marked ``as dot over r``."""
        if s.dot is None:
            return None
        r = s.dot
        a_expr, b_expr = s.expr.args  # type: ignore[attr-defined]
        a_ax = self.order({x for x in E.free_iters(a_expr) if x in self.axes})
        b_ax = self.order({x for x in E.free_iters(b_expr) if x in self.axes})
        if red != (r,) or len(a_ax) != 2 or len(b_ax) != 2 or set(a_ax + b_ax) - {r} != set(taxes):
            raise CodegenError(f"{s.name} is marked 'as dot over {r}' but is no product of two tiles here")
        m_ax = next(x for x in a_ax if x != r)
        n_ax = next(x for x in b_ax if x != r)
        g_axes = [self.order(E.free_iters(g) & set(self.axes)) for g in guards]
        on_out = [g for g, ga in zip(guards, g_axes) if r not in ga and set(ga) <= {m_ax, n_ax}]
        # a guard of the summed axis alone masks the factor that eager masked: a computed one
        # (``where(mask, 0, dS)``), not a loaded input (``0 * v`` is eager's too); a computed
        # factor may be NaN where the guard fails (a row of dS whose statistics are NaN), and
        # 0 * NaN would bring it back, so where both are computed both are masked
        computed = [not isinstance(strip_upcast(x, self.program.dtypes), Load) for x in (a_expr, b_expr)]
        summed_only = [g for g, ga in zip(guards, g_axes) if g not in on_out and set(ga) <= {r}]
        on_a = [g for g, ga in zip(guards, g_axes) if g not in on_out and set(ga) <= set(a_ax)
                and (g not in summed_only or computed[0] or not computed[1])]
        on_b = [g for g, ga in zip(guards, g_axes) if g not in on_out and set(ga) <= set(b_ax)
                and (g not in on_a or (g in summed_only and computed[1]))]
        both = [g for g in on_a if g in on_b]
        if len(on_out) + len(on_a) + len(on_b) - len(both) != len(guards):
            raise CodegenError(f"{s.name} is marked 'as dot over {r}' but a guard masks neither a factor nor the result")
        a_in, b_in = strip_upcast(a_expr, self.program.dtypes), strip_upcast(b_expr, self.program.dtypes)
        da, db = E.dtype_of(a_in, self.program.dtypes), E.dtype_of(b_in, self.program.dtypes)
        acc = "f64" if E.dtype_of(s.expr, self.program.dtypes) == "f64" else "f32"  # the sum's precision
        # (Triton's interpreter multiplies 16-bit floats wrongly: give it exact fp32 operands.)
        if da != db or da not in ("bf16", "f16", acc) or acc == "f64" or self.target == "interpreter":
            a_in = a_expr if E.dtype_of(a_expr, self.program.dtypes) == acc else E.call(acc, a_expr)
            b_in = b_expr if E.dtype_of(b_expr, self.program.dtypes) == acc else E.call(acc, b_expr)
            da = db = acc
        A = self.operand(a_in, (m_ax, r), scope)
        B = self.operand(b_in, (r, n_ax), scope)
        zero = "0.0"
        a_code, b_code = A.code, B.code
        if self.needs_mask(r):
            if r not in A.zero_outside:
                a_code = f"tl.where({self.bcast(Value('m_' + r, (r,), 'b1'), (m_ax, r))}, {a_code}, {zero})"
            if r not in B.zero_outside:
                b_code = f"tl.where({self.bcast(Value('m_' + r, (r,), 'b1'), (r, n_ax))}, {b_code}, {zero})"
        for g in on_a:
            gv = self.value(g, scope)
            a_code = f"tl.where({self.bcast(gv, (m_ax, r))}, {a_code}, {zero})"
        for g in on_b:
            gv = self.value(g, scope)
            b_code = f"tl.where({self.bcast(gv, (r, n_ax))}, {b_code}, {zero})"
        if a_code != A.code:
            var = self.fresh("a")
            scope.lines.append(f"{var} = {a_code}")
            a_code = var
        if b_code != B.code:
            var = self.fresh("b")
            scope.lines.append(f"{var} = {b_code}")
            b_code = var
        precision = ', input_precision="ieee"' if da == "f32" else ""
        out = Value(f"tl.dot({a_code}, {b_code}{precision})", (m_ax, n_ax), acc)
        order = self.order({m_ax, n_ax})
        if order != (m_ax, n_ax):
            out = Value(f"tl.trans({out.code})", order, acc)
        for g in on_out:  # elements outside the guard hold the identity
            gv = self.value(g, scope)
            out = Value(f"tl.where({self.bcast(gv, order)}, {out.code}, 0.0)", order, acc)
        return out

    def operand(self, e: Expr, order: tuple[str, ...], scope: Scope) -> Value:
        """A dot operand laid out as ``order``; loads are emitted in that layout directly."""
        if isinstance(e, Load) and self.program.tensor(e.tensor).storage != "local":
            key = (e, order)
            hit = self.cache.get(key)
            if hit is not None and scope.inside(hit[1]):
                return hit[0]
            home = self.home(e, scope, set())
            v = self.load(e, home, order)
            var = self.fresh("t")
            home.lines.append(f"{var} = {v.code}")
            v = Value(var, order, v.dtype, v.zero_outside)
            self.cache[key] = (v, home, frozenset())
            return v
        v = self.value(e, scope)
        if v.axes != order:
            v = Value(self.bcast(v, order), order, v.dtype, v.zero_outside)
        return v


def strip_upcast(e: Expr, dt: dict[str, str]) -> Expr:
    """``f32(x)`` of a bf16/f16 ``x`` is exact: a dot can take ``x`` and accumulate in fp32."""
    if isinstance(e, Call) and e.op == "f32" and E.dtype_of(e.args[0], dt) in ("bf16", "f16"):
        return e.args[0]
    return e
