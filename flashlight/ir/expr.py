"""Expressions of the IR: constants, iterator values, loads and calls of pointwise operators.

Expressions are immutable trees. Index expressions are ordinary expressions over iterators;
:func:`affine_form` recognises the (quasi-)affine ones that the polyhedral view can represent
exactly. Builders (:func:`add`, :func:`mul`, ...) fold constants and keep integer index
arithmetic in a canonical affine form, so that equal indices print equally.

.. autoclass:: Const
.. autoclass:: Iter
.. autoclass:: Load
.. autoclass:: Call
.. autofunction:: affine_form
.. autofunction:: simplify_index
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from flashlight.ir import dtypes

# {{{ operator table

#: infix binary operators: op -> (symbol, precedence); higher binds tighter
INFIX = {
    "or": ("|", 1),
    "and": ("&", 2),
    "lt": ("<", 3), "le": ("<=", 3), "gt": (">", 3), "ge": (">=", 3), "eq": ("==", 3), "ne": ("!=", 3),
    "add": ("+", 4), "sub": ("-", 4),
    "mul": ("*", 5), "div": ("/", 5), "floordiv": ("//", 5), "mod": ("%", 5),
}
PREFIX = {"neg": ("-", 6), "not": ("~", 6)}
UNARY_FUNCS = (
    "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid", "erf",
    "abs", "sin", "cos", "floor", "ceil", "round", "isnan", "isinf", "reciprocal",
)
BINARY_FUNCS = ("max", "min", "pow", "atan2")
TERNARY_FUNCS = ("where", "fma")  # fma(a, b, c) = a * b + c rounded once
CASTS = dtypes.ALL
#: the least and greatest value of an operand over the current tile of a serial loop: they appear
#: only in a loop's tile test (``Loop.tile_test``), whose loop gives "the current tile" its meaning
TILE_BOUNDS = ("tile_lo", "tile_hi")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
LOGICAL = ("and", "or", "not")

ARITY: dict[str, int] = {
    **{op: 2 for op in INFIX}, **{op: 1 for op in PREFIX}, **{op: 1 for op in UNARY_FUNCS},
    **{op: 2 for op in BINARY_FUNCS}, **{op: 3 for op in TERNARY_FUNCS}, **{op: 1 for op in CASTS},
    **{op: 1 for op in TILE_BOUNDS},
}

# }}}


# {{{ nodes

class Expr:
    """Base class of expression nodes."""

    __slots__ = ()

    def __str__(self) -> str:
        from flashlight.ir.printer import format_expr

        return format_expr(self)


@dataclass(frozen=True, eq=False)
class Const(Expr):
    """A literal of a given dtype. Equality is by printed value, so that NaN equals NaN."""

    value: float | int | bool
    dtype: str

    def _key(self) -> tuple[str, str]:
        return (repr(self.value), self.dtype)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:  # dataclass would otherwise install its own repr-based one
        return Expr.__str__(self)


@dataclass(frozen=True)
class Iter(Expr):
    """The current value of a loop iterator (an ``i64``)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Load(Expr):
    """``tensor[indices]``. An index that is not quasi-affine makes the access indirect."""

    tensor: str
    indices: tuple[Expr, ...]

    def __str__(self) -> str:
        return Expr.__str__(self)


@dataclass(frozen=True)
class Call(Expr):
    """A pointwise operator applied to arguments; casts are calls named by their dtype."""

    op: str
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        arity = ARITY.get(self.op)
        if arity is None:
            raise ValueError(f"unknown operator {self.op!r}")
        if arity != len(self.args):
            raise ValueError(f"operator {self.op!r} takes {arity} arguments, got {len(self.args)}")

    def __str__(self) -> str:
        return Expr.__str__(self)

# }}}


# {{{ constructors with folding

def const(value: float | int | bool, dtype: str) -> Const:
    dtypes.check_dtype(dtype)
    if dtype == dtypes.BOOL:
        return Const(bool(value), dtype)
    if dtypes.is_float(dtype):
        return Const(float(value), dtype)
    return Const(int(value), dtype)


def index(value: int) -> Const:
    return Const(int(value), "i64")


def _is_index_expr(e: Expr) -> bool:
    return isinstance(e, Iter) or (isinstance(e, Const) and e.dtype == "i64") or (
        isinstance(e, Call) and e.op in ("add", "sub", "mul", "floordiv", "mod", "neg")
        and all(_is_index_expr(a) for a in e.args))


def _affine_or_call(op: str, a: Expr, b: Expr | None = None) -> Expr:
    args = (a,) if b is None else (a, b)
    e = Call(op, args)
    if all(_is_index_expr(x) for x in args):
        form = affine_form(e)
        if form is not None:
            return from_affine(*form)
    return e


def add(a: Expr, b: Expr) -> Expr:
    return _affine_or_call("add", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    return _affine_or_call("sub", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    return _affine_or_call("mul", a, b)


def neg(a: Expr) -> Expr:
    if isinstance(a, Const) and a.dtype != dtypes.BOOL:
        return Const(-a.value, a.dtype)
    return _affine_or_call("neg", a)


def floordiv(a: Expr, b: int) -> Expr:
    return Call("floordiv", (a, index(b)))


def mod(a: Expr, b: int) -> Expr:
    return Call("mod", (a, index(b)))


# operations IEEE 754 rounds correctly: on literals of one float dtype, evaluated in that dtype,
# they give the value a kernel would compute
_EXACT_ON_LITERALS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "sqrt": np.sqrt}
_LITERAL_FLOATS = {"f64": np.float64, "f32": np.float32}


def call(op: str, *args: Expr) -> Expr:
    """Build a call, folding casts of literals into typed literals, and correctly rounded
    arithmetic on float literals of one dtype into its value (``1.0 / sqrt(64.0)``: a scale traced
    with a symbolic head dimension, which the dimension's specialization leaves constant)."""
    if op in CASTS and isinstance(args[0], Const):
        return cast_const(args[0], op)
    if op in _EXACT_ON_LITERALS and all(isinstance(a, Const) for a in args) \
            and len({a.dtype for a in args}) == 1 and args[0].dtype in _LITERAL_FLOATS:  # type: ignore[union-attr]
        kind = _LITERAL_FLOATS[args[0].dtype]  # type: ignore[union-attr]
        with np.errstate(all="ignore"):  # IEEE's inf and nan, as the kernel would give
            value = _EXACT_ON_LITERALS[op](*(kind(a.value) for a in args))  # type: ignore[union-attr]
        return Const(float(value), args[0].dtype)  # type: ignore[union-attr]
    if op in ("add", "sub", "mul"):
        return {"add": add, "sub": sub, "mul": mul}[op](*args)
    if op == "neg":
        return neg(args[0])
    return Call(op, tuple(args))


def cast_const(c: Const, dtype: str) -> Const:
    v = c.value
    if dtypes.is_float(dtype):
        return Const(float(v), dtype)
    if dtype == dtypes.BOOL:
        return Const(bool(v), dtype)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"cannot cast {v} to {dtype}")
        v = int(v)  # C-style truncation, as torch does
    return Const(int(v), dtype)

# }}}


# {{{ traversal

def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, Call):
        return e.args
    return ()


def walk(e: Expr) -> Iterator[Expr]:
    """Pre-order traversal (a stack, not nested generators: a model's programs walk millions of
    nodes while they compile)."""
    stack = [e]
    while stack:
        x = stack.pop()
        yield x
        if isinstance(x, Call):
            stack.extend(reversed(x.args))
        elif isinstance(x, Load):
            stack.extend(reversed(x.indices))


def rebuild(e: Expr, kids: tuple[Expr, ...]) -> Expr:
    if isinstance(e, Load):
        return e if kids == e.indices else Load(e.tensor, kids)
    if isinstance(e, Call):
        return e if kids == e.args else call(e.op, *kids)
    return e


def rewrite(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Bottom-up rewrite: children first, then ``fn`` on the rebuilt node (None keeps it)."""
    kids = tuple(rewrite(c, fn) for c in children(e))
    node = rebuild(e, kids)
    out = fn(node)
    return node if out is None else out


def tree_size(e: Expr, memo: dict[int, int] | None = None) -> int:
    """Nodes of ``e`` as a tree (a subexpression used twice counts twice), in time linear in its
    distinct objects: the measure of what inlining duplicates."""
    memo = {} if memo is None else memo
    hit = memo.get(id(e))
    if hit is None:
        hit = memo[id(e)] = 1 + sum(tree_size(c, memo) for c in children(e))
    return hit


def free_iters(e: Expr) -> frozenset[str]:
    return frozenset(x.name for x in walk(e) if isinstance(x, Iter))


def loads(e: Expr) -> list[Load]:
    """The loads of ``e``, in pre-order (its own loop, not a filter over :func:`walk`: the most
    frequent walk of a compilation, 1.4x faster without a generator)."""
    out: list[Load] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Call):
            stack.extend(reversed(x.args))
        elif isinstance(x, Load):
            out.append(x)
            stack.extend(reversed(x.indices))
    return out


def substitute(e: Expr, mapping: Mapping[str, Expr]) -> Expr:
    """Replace iterators by expressions, simultaneously: only the iterators of ``e`` are replaced,
    never one that a rebuilt parent simplifies to (``1 - (1 - p)`` is ``p``, not substituted again)."""
    if not mapping:
        return e
    if isinstance(e, Iter):
        return mapping.get(e.name, e)
    kids = children(e)
    return rebuild(e, tuple(substitute(c, mapping) for c in kids)) if kids else e


def dtype_of(e: Expr, tensor_dtypes: Mapping[str, str]) -> str:
    if isinstance(e, Const):
        return e.dtype
    if isinstance(e, Iter):
        return "i64"
    if isinstance(e, Load):
        return tensor_dtypes[e.tensor]
    assert isinstance(e, Call)
    if e.op in CASTS:
        return e.op
    if e.op in COMPARISONS or e.op in LOGICAL or e.op in ("isnan", "isinf"):
        return dtypes.BOOL
    if e.op == "where":
        return dtype_of(e.args[1], tensor_dtypes)
    if len(e.args) > 1 and isinstance(e.args[0], Const) and not isinstance(e.args[1], Const):
        return dtype_of(e.args[1], tensor_dtypes)  # a literal takes its partner's type: 2 * x
    return dtype_of(e.args[0], tensor_dtypes)

def simplify_condition(e: Expr) -> Expr:
    """Drop ``& true`` / ``| false`` and move affine comparisons against 0 to ``a <= b`` form."""

    def fold(x: Expr) -> Expr | None:
        if not isinstance(x, Call):
            return None
        if x.op in ("and", "or"):
            unit = x.op == "and"
            a, b = x.args
            for p, q in ((a, b), (b, a)):
                if isinstance(p, Const) and p.dtype == "b1":
                    return q if bool(p.value) == unit else p
            return None
        if x.op in ("lt", "le", "gt", "ge", "eq", "ne") and isinstance(x.args[1], Const) \
                and x.args[1].dtype == "i64":
            form = affine_form(x.args[0])
            if form is None or not form[0]:
                return None
            pos = {k: v for k, v in form[0].items() if v > 0}
            neg = {k: -v for k, v in form[0].items() if v < 0}
            k = int(x.args[1].value) - form[1]  # pos - neg (op) k
            flip = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
            if not neg:  # pos (op) k
                out = Call(x.op, (from_affine(pos, 0), index(k)))
            elif not pos:  # -neg (op) k  <=>  neg (flip op) -k
                out = Call(flip[x.op], (from_affine(neg, 0), index(-k)))
            else:  # pos (op) neg + k, written with the smaller side first: neg + k (flip op) pos
                out = Call(flip[x.op], (from_affine(neg, k), from_affine(pos, 0)))
            return None if out == x else out
        return None

    return rewrite(e, fold)


def evaluate(e: Expr, env: Mapping[str, int]) -> int:
    """The integer value of an index expression (affine, floor division, modulo, min/max,
    comparisons, where) for iterator values ``env``."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Iter):
        return env[e.name]
    if not isinstance(e, Call):
        raise ValueError(f"cannot evaluate {e} as an integer")
    a = [evaluate(x, env) for x in e.args]
    ops = {"add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
           "neg": lambda: -a[0], "floordiv": lambda: a[0] // a[1], "mod": lambda: a[0] % a[1],
           "max": lambda: max(a), "min": lambda: min(a), "where": lambda: a[1] if a[0] else a[2],
           "le": lambda: a[0] <= a[1], "lt": lambda: a[0] < a[1], "ge": lambda: a[0] >= a[1],
           "gt": lambda: a[0] > a[1], "eq": lambda: a[0] == a[1], "ne": lambda: a[0] != a[1],
           "and": lambda: a[0] and a[1], "or": lambda: a[0] or a[1], "not": lambda: not a[0]}
    if e.op not in ops:
        raise ValueError(f"cannot evaluate {e.op} as an integer")
    return int(ops[e.op]())


# }}}


# {{{ affine forms

Affine = tuple[dict[str, int], int]


def affine_form(e: Expr) -> Affine | None:
    """``(coefficients, constant)`` if ``e`` is affine in iterators with integer coefficients."""
    if isinstance(e, Iter):
        return {e.name: 1}, 0
    if isinstance(e, Const):
        return ({}, int(e.value)) if e.dtype == "i64" else None
    if not isinstance(e, Call):
        return None
    if e.op == "neg":
        f = affine_form(e.args[0])
        return None if f is None else ({k: -v for k, v in f[0].items()}, -f[1])
    if e.op in ("add", "sub"):
        fa, fb = affine_form(e.args[0]), affine_form(e.args[1])
        if fa is None or fb is None:
            return None
        sign = 1 if e.op == "add" else -1
        coeffs = dict(fa[0])
        for k, v in fb[0].items():
            coeffs[k] = coeffs.get(k, 0) + sign * v
        return {k: v for k, v in coeffs.items() if v != 0}, fa[1] + sign * fb[1]
    if e.op == "mul":
        fa, fb = affine_form(e.args[0]), affine_form(e.args[1])
        if fa is None or fb is None:
            return None
        if not fa[0]:
            fa, fb = fb, fa
        if fb[0]:
            return None  # product of two iterators: not affine
        c = fb[1]
        return {k: v * c for k, v in fa[0].items() if v * c != 0}, fa[1] * c
    return None


def from_affine(coeffs: Mapping[str, int], constant: int) -> Expr:
    """Canonical expression: terms in the given order, positive terms first, then the constant."""
    terms = [(k, v) for k, v in coeffs.items() if v != 0]
    terms.sort(key=lambda kv: kv[1] < 0)  # stable: keeps order among positives and negatives
    out: Expr | None = None
    for name, c in terms:
        mag = Iter(name) if abs(c) == 1 else Call("mul", (index(abs(c)), Iter(name)))
        if out is None:
            out = mag if c > 0 else Call("neg", (mag,))
        else:
            out = Call("add" if c > 0 else "sub", (out, mag))
    if out is None:
        return index(constant)
    if constant > 0:
        out = Call("add", (out, index(constant)))
    elif constant < 0:
        out = Call("sub", (out, index(-constant)))
    return out


def affine_bounds(form: Affine, ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int] | None:
    """The least and greatest value of an affine form over a box of iterator ranges (inclusive),
    attained at its corners; None if an iterator has no range."""
    lo = hi = form[1]
    for name, c in form[0].items():
        if name not in ranges:
            return None
        a, b = ranges[name]
        lo += min(c * a, c * b)
        hi += max(c * a, c * b)
    return lo, hi


def _terms(e: Expr) -> tuple[dict[Expr, int], int] | None:
    """``e`` as an integer combination of *atoms* (iterators, and floor divisions or moduli by
    constants) plus a constant, if it is one."""
    if isinstance(e, Iter) or (isinstance(e, Call) and e.op in ("floordiv", "mod") and isinstance(e.args[1], Const)):
        return {e: 1}, 0
    if isinstance(e, Const):
        return ({}, int(e.value)) if e.dtype == "i64" else None
    if not isinstance(e, Call) or e.op not in ("neg", "add", "sub", "mul"):
        return None
    parts = [_terms(a) for a in e.args]
    if any(p is None for p in parts):
        return None
    if e.op == "neg":
        (t, c), = parts  # type: ignore[misc]
        return {k: -v for k, v in t.items()}, -c
    (ta, ca), (tb, cb) = parts  # type: ignore[misc]
    if e.op == "mul":
        if ta and tb:
            return None  # a product of two atoms
        (t, c), k = ((ta, ca), cb) if ta or not tb else ((tb, cb), ca)
        return {x: v * k for x, v in t.items() if v * k}, c * k
    sign = 1 if e.op == "add" else -1
    out = dict(ta)
    for x, v in tb.items():
        out[x] = out.get(x, 0) + sign * v
    return {x: v for x, v in out.items() if v}, ca + sign * cb


def _from_terms(terms: Mapping[Expr, int], constant: int) -> Expr:
    if all(isinstance(x, Iter) for x in terms):
        return from_affine({x.name: v for x, v in terms.items()}, constant)  # type: ignore[union-attr]
    out: Expr | None = None
    for x, v in sorted(terms.items(), key=lambda kv: kv[1] < 0):
        term = x if v == 1 else mul(index(v), x)
        out = term if out is None else add(out, term)
    if out is None:
        return index(constant)
    return add(out, index(constant)) if constant else out


def _atom_bounds(x: Expr, ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int] | None:
    if isinstance(x, Iter):
        return ranges.get(x.name)
    inner = _terms(x.args[0])  # type: ignore[union-attr]
    c = int(x.args[1].value)  # type: ignore[union-attr]
    b = None if inner is None else _term_bounds(inner, ranges)
    if x.op == "floordiv":  # type: ignore[union-attr]
        return None if b is None else (b[0] // c, b[1] // c)
    return b if b is not None and 0 <= b[0] and b[1] < c else (0, c - 1)


def _term_bounds(form: tuple[dict[Expr, int], int], ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int] | None:
    lo = hi = form[1]
    for x, c in form[0].items():
        b = _atom_bounds(x, ranges)
        if b is None:
            return None
        lo += min(c * b[0], c * b[1])
        hi += max(c * b[0], c * b[1])
    return lo, hi


def simplify_index(e: Expr, ranges: Mapping[str, tuple[int, int]]) -> Expr:
    """Simplify floor division and modulo by constants using iterator ranges ``[lo, hi]``.

    With ``e = c*q + r`` (``q`` the terms whose coefficients ``c`` divides, the atoms being
    iterators and inner divisions): ``e // c == q + r // c`` and ``e % c == r % c`` always, and
    ``r // c == 0``, ``r % c == r`` when ``0 <= r < c`` on the range. This undoes the
    linearise/delinearise pairs that reshapes produce: ``(8*b + h) // 2 % 4`` is ``h // 2`` for
    ``h`` in ``[0, 8)``.
    """

    def fold(x: Expr) -> Expr | None:
        if not (isinstance(x, Call) and x.op in ("floordiv", "mod")):
            return None
        inner, divisor = x.args
        if not isinstance(divisor, Const):
            return None
        c = int(divisor.value)
        if c == 1:
            return inner if x.op == "floordiv" else index(0)
        if isinstance(inner, Call) and inner.op == x.op and isinstance(inner.args[1], Const):
            c1 = int(inner.args[1].value)
            if x.op == "floordiv":  # (a // c1) // c == a // (c1*c)
                return fold(Call("floordiv", (inner.args[0], index(c1 * c)))) or floordiv(inner.args[0], c1 * c)
            if c1 % c == 0:  # (a % c1) % c == a % c when c divides c1
                return fold(Call("mod", (inner.args[0], divisor))) or mod(inner.args[0], c)
        form = _terms(inner)
        if form is None:
            return None
        q_terms = {k: v // c for k, v in form[0].items() if v % c == 0}
        r_terms = {k: v for k, v in form[0].items() if v % c != 0}
        q_const, r_const = divmod(form[1], c)
        rb = _term_bounds((r_terms, r_const), ranges)
        if rb is not None and 0 <= rb[0] and rb[1] < c:
            return _from_terms(q_terms, q_const) if x.op == "floordiv" else _from_terms(r_terms, r_const)
        if not (q_terms or q_const):
            return None
        rest = Call(x.op, (_from_terms(r_terms, r_const), divisor))
        if x.op == "mod":  # multiples of c vanish under % c
            return fold(rest) or rest
        return add(_from_terms(q_terms, q_const), fold(rest) or rest)  # the multiples of c leave the division

    return rewrite(e, fold)

# }}}
