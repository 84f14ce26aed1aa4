"""The algebraic lemma behind the online rewrite, checked symbolically with sympy.

A reduction ``z = ⊕_j F(x_j, y)`` that reads the final value ``y`` of another reduction can be
computed in the same loop as ``y`` if

(a) ``⊕`` has a partner ``⊗`` that distributes over it: ``(+, ×)`` or ``(max, +)``;
(b) ``F`` separates: ``F(x, y) = G(x) ⊗ H(y)``, checked as
    ``F(x,y) ⊗ F(x0,y0) ≡ F(x,y0) ⊗ F(x0,y)`` (RedFuser's test);
(c) ``H`` is invertible, so the running accumulator is repaired at each step by
    ``c = H(y_new) ⊗ H(y_old)^-1``, obtained as one simplified expression
    ``F(x0, y_new) ⊘ F(x0, y_old)`` that must not depend on ``x0``.

Then ``z_k = (z_{k-1} ⊗ c_k) ⊕ F(x_k, y_k)`` is, by distributivity, ``⊕_{j<=k} G(x_j) ⊗ H(y_k)``
at every step, and equals ``z`` at the last. Subexpressions of ``F`` that do not involve ``y``
become opaque symbols (they are the ``x``); float casts are rounding, the identity in exact
arithmetic. ``sum(tanh(x - max(x)))`` fails (b), so it is not fused.

.. autofunction:: online_lemma
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import sympy as sp
from sympy.core.function import AppliedUndef

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Call, Const, Expr, Iter, Load

_SYMBOL = {"mul": "*", "add": "+"}  # how a partner operation is written in the lemma


class NotSeparable(Exception):
    pass


@dataclass(frozen=True)
class Lemma:
    combiner: str
    partner: str
    F: str        # F with opaque symbols, as sympy prints it
    c: sp.Expr    # the rescale factor in the symbols y_old_<k>, y_new_<k>
    running: tuple[Load, ...]
    # opaque functions of the running values in F and c: name -> their IR expression
    functions: tuple[tuple[str, Expr], ...] = ()

    def statement(self) -> str:
        ys = ", ".join(str(y) for y in self.running)
        check = ("F(x,y)*F(x0,y0) - F(x,y0)*F(x0,y) == 0" if self.partner == "*"
                 else "F(x,y)+F(x0,y0) - F(x,y0)-F(x0,y) == 0")
        where = "".join(f"; {name}({ys}) = {e}" for name, e in self.functions)
        return (f"F = {self.F} separates over ({self.combiner[:-1]}, {self.partner}) in y = {ys} "
                f"[{check}]; rescale c = {self.c}{where}")


class _ToSympy:
    def __init__(self, running: tuple[Load, ...]) -> None:
        self.running = running
        self.opaque: dict[Expr, sp.Symbol] = {}
        self.y = [sp.Symbol(f"y{k}", real=True) for k in range(len(running))]
        # subexpressions of the running values alone without a symbolic form (``where(y == -inf,
        # 0, y)``): opaque functions h_k(y), enough to separate F, and named by their IR template
        self.functions: dict[Expr, sp.Function] = {}

    def _opaque_function(self, e: Expr) -> sp.Expr:
        fn = self.functions.get(e)
        if fn is None:
            fn = self.functions[e] = sp.Function(f"h{len(self.functions)}", real=True)
        return fn(*[self.y[k] for k, y in enumerate(self.running) if y in E.loads(e)])

    def __call__(self, e: Expr) -> sp.Expr:
        if e in self.running:
            return self.y[self.running.index(e)]
        if not any(ld in self.running for ld in E.loads(e)):
            if isinstance(e, Const) and not isinstance(e.value, bool):
                return sp.nsimplify(e.value) if abs(e.value) != float("inf") else (
                    sp.oo if e.value > 0 else -sp.oo)
            sym = self.opaque.get(e)
            if sym is None:
                sym = self.opaque[e] = sp.Symbol(f"x{len(self.opaque)}", real=True)
            return sym
        if not isinstance(e, Call):
            raise NotSeparable(f"{e} reads the running value through an index")
        try:
            return self._call(e)
        except NotSeparable:
            if self._of_running_values_only(e):
                return self._opaque_function(e)
            raise

    def _of_running_values_only(self, e: Expr) -> bool:
        rest = E.rewrite(e, lambda x: E.const(0.0, "f32") if x in self.running else None)
        return not E.free_iters(rest) and not E.loads(rest)

    def _call(self, e: Call) -> sp.Expr:
        a = [self(x) for x in e.args]
        op = e.op
        if op in dtypes.FLOATS:
            return a[0]  # rounding: the identity in exact arithmetic
        table = {
            "add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
            "div": lambda: a[0] / a[1], "neg": lambda: -a[0], "exp": lambda: sp.exp(a[0]),
            "exp2": lambda: sp.Integer(2) ** a[0], "log": lambda: sp.log(a[0]),
            "pow": lambda: a[0] ** a[1], "reciprocal": lambda: 1 / a[0], "sqrt": lambda: sp.sqrt(a[0]),
            "tanh": lambda: sp.tanh(a[0]), "sigmoid": lambda: 1 / (1 + sp.exp(-a[0])),
            "max": lambda: sp.Max(a[0], a[1]), "min": lambda: sp.Min(a[0], a[1]),
        }
        if op not in table:
            raise NotSeparable(f"{op} of the running value has no symbolic form")
        return table[op]()


def online_lemma(F: Expr, running: tuple[Load, ...], combiner: str) -> Lemma | None:
    """The lemma for ``z combiner= F`` with ``running`` the loads of the other reductions."""
    try:
        return prove_online(F, running, combiner)
    except NotSeparable:
        return None


def prove_online(F: Expr, running: tuple[Load, ...], combiner: str) -> Lemma:
    """The lemma, or :class:`NotSeparable` saying which condition fails."""
    rescale = COMBINERS[combiner].partner
    if rescale is None:
        raise NotSeparable(f"{combiner} has no distributive partner")
    partner = _SYMBOL[rescale]
    conv = _ToSympy(running)
    f = conv(F)
    xs = list(conv.opaque.values())
    x0 = {x: sp.Symbol(f"{x.name}_0", real=True) for x in xs}
    y0 = {y: sp.Symbol(f"{y.name}_0", real=True) for y in conv.y}

    def at(expr: sp.Expr, xmap: Mapping, ymap: Mapping) -> sp.Expr:
        return expr.xreplace({**xmap, **ymap})

    same_x = {x: x for x in xs}
    same_y = {y: y for y in conv.y}
    if partner == "*":
        residue = at(f, same_x, same_y) * at(f, x0, y0) - at(f, same_x, y0) * at(f, x0, same_y)
    else:
        residue = at(f, same_x, same_y) + at(f, x0, y0) - at(f, same_x, y0) - at(f, x0, same_y)
    if not _is_zero(residue):
        raise NotSeparable(f"F = {f} does not separate as G(x) {partner} H(y)")
    y_old = {y: sp.Symbol(f"y_old_{k}", real=True) for k, y in enumerate(conv.y)}
    y_new = {y: sp.Symbol(f"y_new_{k}", real=True) for k, y in enumerate(conv.y)}
    if partner == "*":
        c = sp.powsimp(sp.expand_power_exp(at(f, x0, y_new) / at(f, x0, y_old)), force=True)
        if c.free_symbols & set(x0.values()):
            c = sp.simplify(c)
    else:
        c = sp.simplify(at(f, x0, y_new) - at(f, x0, y_old))
    if c.free_symbols & set(x0.values()) or c.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise NotSeparable(f"the rescale {c} depends on x")
    if partner == "*" and not _positive(c):
        raise NotSeparable(f"H may vanish: the rescale {c} is not an exponential, so H(y)^-1 may not exist")
    used = {a.func for a in f.atoms(AppliedUndef)}
    functions = tuple((fn.__name__, e) for e, fn in conv.functions.items() if fn in used)
    return Lemma(combiner, partner, str(f), c, running, functions)


def _positive(c: sp.Expr) -> bool:
    """An exponential of something: finite and strictly positive wherever its argument is finite."""
    return isinstance(c, sp.exp) or (isinstance(c, sp.Pow) and c.base.is_Number and c.base > 0)


def _is_zero(e: sp.Expr) -> bool:
    """Symbolic zero test, after a quick numeric refutation at random points."""
    rng = random.Random(0)
    syms = sorted(e.free_symbols, key=lambda s: s.name)
    for _ in range(3):
        point = {s: sp.Float(rng.uniform(-2.0, 2.0)) for s in syms}
        try:
            val = complex(e.xreplace(point).evalf())
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if abs(val) > 1e-9 * (1 + abs(val)):
            return False
    e = sp.expand(sp.powsimp(sp.expand(e), force=True))
    if e == 0:
        return True
    return sp.simplify(e) == 0


def to_ir(lemma: Lemma, y_old: list[Expr], y_new: list[Expr], dtype: str) -> Expr:
    """The rescale factor as an IR expression over the old and new running values."""
    sym = {}
    for k in range(len(y_old)):
        sym[sp.Symbol(f"y_old_{k}", real=True)] = y_old[k]
        sym[sp.Symbol(f"y_new_{k}", real=True)] = y_new[k]
    templates = dict(lemma.functions)

    def conv(e: sp.Expr) -> Expr:
        if e in sym:
            return sym[e]
        if isinstance(e, AppliedUndef) and e.func.__name__ in templates:
            template = templates[e.func.__name__]
            reads = [y for y in lemma.running if y in E.loads(template)]
            values = dict(zip(reads, (conv(a) for a in e.args)))
            return E.rewrite(template, lambda x: values.get(x))  # type: ignore[arg-type]
        if e.is_Number:
            return E.const(float(e), dtype)
        if isinstance(e, sp.exp):
            return E.call("exp", conv(e.args[0]))
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if base == 2:
                return E.call("exp2", conv(ex))
            if ex == -1:
                return E.call("div", E.const(1.0, dtype), conv(base))
            return E.call("pow", conv(base), conv(ex))
        if isinstance(e, sp.Add):
            pos = [t for t in e.args if not _negative(t)]
            neg = [t for t in e.args if _negative(t)]
            out = conv(pos[0]) if pos else None
            for t in pos[1:]:
                out = E.call("add", out, conv(t))
            for t in neg:
                out = E.call("sub", out, conv(-t)) if out is not None else E.call("neg", conv(-t))
            return out  # type: ignore[return-value]
        if isinstance(e, sp.Mul):
            num = [t for t in e.args if not (isinstance(t, sp.Pow) and t.args[1] == -1)]
            den = [t.args[0] for t in e.args if isinstance(t, sp.Pow) and t.args[1] == -1]
            if num and num[0] == -1:
                return E.call("neg", conv(sp.Mul(*num[1:], *[1 / d for d in den])))
            out = conv(num[0]) if num else E.const(1.0, dtype)
            for t in num[1:]:
                out = E.call("mul", out, conv(t))
            for t in den:
                out = E.call("div", out, conv(t))
            return out
        raise NotSeparable(f"cannot express {e} in the IR")

    return conv(lemma.c)


def _negative(t: sp.Expr) -> bool:
    return t.could_extract_minus_sign()


# {{{ abstract evaluation: literals known, every load an unknown finite real

UNKNOWN = object()  # a finite real we know nothing else about


# an undetermined value that may be infinite or NaN: a ``where`` on an unknown condition with a
# non-finite branch (``where(mask, 0, -inf)``), and anything computed from one. Unlike UNKNOWN it
# decides nothing: ``0 * x`` is NaN for an infinite x, and ``-inf - x`` is NaN for x = -inf (fuzz
# seeds 7226696, 7320082: a -inf mask read twice, or multiplied).
_MAYBE_NONFINITE = object()


# a finite real known to be at least some positive bound (a load of an input that carries the
# fact, a softmax's saved row sum): like UNKNOWN, except that it is not 0, so ``0 / x`` is 0
_NONZERO = object()


def abstract_eval(e: Expr, at_least: Mapping[str, float] | None = None) -> object:
    """Evaluate with loads and iterators as unknown finite reals; UNKNOWN where undetermined.
    ``at_least``: tensors whose finite values are known to be at least a bound (an input's fact)."""
    value = _abstract(e, at_least or {})
    return UNKNOWN if value in (_MAYBE_NONFINITE, _NONZERO) else value


def _abstract(e: Expr, at_least: Mapping[str, float]) -> object:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Load) and at_least.get(e.tensor, 0.0) >= 1.0:
        return _NONZERO
    if isinstance(e, (Load, Iter)):
        return UNKNOWN
    assert isinstance(e, Call)
    args = [_abstract(a, at_least) for a in e.args]
    op = e.op
    if op in E.CASTS and dtypes.is_float(op) and args[0] is _NONZERO:
        return _NONZERO  # a bound of at least 1 survives rounding to any float format
    if op == "div" and args[1] is _NONZERO and isinstance(args[0], float) and args[0] == 0:
        return 0.0
    args = [UNKNOWN if a is _NONZERO else a for a in args]
    if op == "where":
        c, a, b = args
        if c is not UNKNOWN and c is not _MAYBE_NONFINITE:
            return a if c else b
        if a is not UNKNOWN and b is not UNKNOWN and same_value(a, b):
            return a
        return _MAYBE_NONFINITE if any(x is _MAYBE_NONFINITE or _nonfinite(x) for x in (a, b)) else UNKNOWN
    if op in ("add", "sub", "mul", "div", "neg", "exp", "exp2") and any(
            isinstance(a, float) and math.isnan(a) for a in args):
        return math.nan  # NaN absorbs every operand
    if any(a is _MAYBE_NONFINITE for a in args):
        return _MAYBE_NONFINITE
    if op in E.CASTS:
        x = args[0]
        return x if (x is UNKNOWN or dtypes.is_float(op)) else UNKNOWN
    if all(a is not UNKNOWN for a in args):
        return _concrete(op, args)
    # one side unknown but finite: infinities and zeros still decide some results
    if op in ("add", "sub"):  # a finite unknown does not change an infinity
        x, y = args
        if x is not UNKNOWN and isinstance(x, float) and math.isinf(x):
            return x
        if y is not UNKNOWN and isinstance(y, float) and math.isinf(y):
            return y if op == "add" else -y
        return UNKNOWN
    if op == "mul":
        if any(a is not UNKNOWN and a == 0 and not isinstance(a, bool) for a in args):
            return 0.0
        return UNKNOWN
    if op in ("max", "min"):
        known = [a for a in args if a is not UNKNOWN]
        if known and op == "max" and known[0] == -math.inf:
            return UNKNOWN
        if known and op == "max" and known[0] == math.inf:
            return math.inf
        if known and op == "min" and known[0] == -math.inf:
            return -math.inf
        return UNKNOWN
    return UNKNOWN


def _nonfinite(x: object) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def same_value(a: object, b: object) -> bool:
    return repr(a) == repr(b)


def _concrete(op: str, args: list) -> object:
    a = args[0]
    try:
        if op == "add":
            return a + args[1]
        if op == "sub":
            return a - args[1]
        if op == "mul":
            return a * args[1]
        if op == "div":
            return a / args[1]
        if op == "neg":
            return -a
        if op in ("exp", "exp2"):
            base = math.e if op == "exp" else 2.0
            return 0.0 if a == -math.inf else (math.inf if a == math.inf else base ** a)
        if op == "max":
            return max(a, args[1])
        if op == "min":
            return min(a, args[1])
        if op == "not":
            return not a
    except (OverflowError, ZeroDivisionError):
        return UNKNOWN
    return UNKNOWN

# }}}


@functools.lru_cache(maxsize=None)
def exchange_lemma(n: int = 3) -> str:
    """The exchange of sums, checked with sympy on ``n x n`` sums of undetermined terms:
    ``Σ_j F(j) Σ_d X(d) Y(j,d) == Σ_d X(d) Σ_j F(j) Y(j,d)`` (finite sums commute and products
    distribute over them; ``F`` may not depend on ``d`` nor ``X`` on ``j``). Raises if sympy
    disagrees, which would be a bug of this module, not of a program."""
    F, X, Y = sp.Function("F"), sp.Function("X"), sp.Function("Y")
    js, ds = range(n), range(n)
    left = sum(F(j) * sum(X(d) * Y(j, d) for d in ds) for j in js)
    right = sum(X(d) * sum(F(j) * Y(j, d) for j in js) for d in ds)
    if sp.expand(left - right) != 0:
        raise AssertionError("the exchange of sums does not hold")
    return (f"Σ_j F(i,j) Σ_d X(i,d) Y(j,d) = Σ_d X(i,d) Σ_j F(i,j) Y(j,d) "
            f"[sympy: expanded difference 0 over {n} x {n} terms]")
