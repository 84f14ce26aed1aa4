"""A reference interpreter for the IR in numpy: the oracle that pass-level tests compare against.

.. autofunction:: interpret
.. autofunction:: numpy_dtype
.. autofunction:: to_numpy
.. autofunction:: round_bf16

Semantics, exactly as the tree says (see :mod:`flashlight.ir.nodes`):

* The body runs in order. A ``Loop`` evaluates its bounds once, on entry, at the current point
  and runs its body for each value of its iterator in ``[lower, upper)``, in increasing order,
  whatever its kind, tile or mapping. A ``Guard`` runs its body where its condition holds.
  A ``Stmt`` evaluates its target's indices, its expression and its scale, reads the target
  element and writes the combined value: ``=`` overwrites; ``+=``, ``*=``, ``max=``, ``min=``
  fold; with a scale, ``t = t*scale + expr`` for ``+=`` and ``t = max(t + scale, expr)`` for
  ``max=``. A fold scale ``c`` multiplies each fold of ``expr``: the interpreter folds one instance
  at a time, so it folds ``expr * c``.
* Initial contents: every element of a tensor that some reduction statement targets starts at
  that combiner's identity (:meth:`flashlight.ir.combiners.Combiner.identity`) for the tensor's dtype;
  every other temporary and output starts as NaN (floats), 0 (integers) or false (``b1``), so
  that reading data that was never written shows up in floating-point results.
* Values are numpy scalars and every expression node has the static dtype that
  :func:`flashlight.ir.expr.dtype_of` gives it. Arithmetic happens in that dtype: operands of
  another dtype are first converted to it, ``f32``/``f64``/integers use numpy's arithmetic of that
  type (integers wrap around), ``f16`` and ``bf16`` compute in ``f32`` and round the result to
  their precision after every operation, as PyTorch does on CPU. ``bf16`` values are stored as
  ``float32`` rounded to bfloat16 (round to nearest even on the upper 16 bits; NaN stays NaN).
* Operators: ``div`` is true division, ``floordiv`` and ``mod`` floor (Python semantics, like
  ``torch.floor_divide`` and ``torch.remainder``), ``max``/``min`` propagate NaN (like
  ``torch.maximum``), ``round`` rounds half to even, ``erf`` uses :func:`math.erf`. Floating-point
  division by zero gives inf or NaN and integer division by zero gives 0 (numpy's behaviour),
  without warnings. Casts are calls named by a dtype; float to integer truncates toward zero,
  anything to ``b1`` tests for non-zero. ``&``, ``|`` and ``~`` are logical (their operands are
  converted to ``b1``, the type of their result); on ``b1``, ``+``/``*`` and ``max``/``min`` are
  ``|``/``&``.
  Floating-point-only operators (``div``, ``exp``, ``sqrt``, ...) applied to integers are
  rejected: the IR types them as integers, which has no sensible meaning.
* Operands that cannot affect a result are not evaluated: the unselected branch of ``where``
  and the right operand of ``&`` or ``|`` once the left one decides. So a masked load
  such as ``where(j < n, x[j], 0.0)`` never indexes out of bounds.
* Every load and store is bounds-checked (no negative wrap-around): an index out of range raises
  :class:`IndexError` naming the statement (or guard, or loop bound), the tensor and the point.
* The facts that loops state are checked where they are claimed, and a false one raises
  :class:`ValueError`: per-tile bounds of guard data (``bounds [...]``) at every point, and tile
  ranges (``tiles [...]``): every tile of the loop where a statement instance runs lies in a
  listed range, and in a tile of a ``full`` range every affine guard inside holds; and the tile
  test (``test [possible P; certain C]``): no statement instance runs in a tile where ``P`` is
  false, every data-dependent guard inside holds in a tile where ``C`` is true
  (:mod:`flashlight.ir.claims`). ``tile_lo(x)``/``tile_hi(x)`` are the least and greatest value of
  ``x`` over the points of the current tile; anywhere but in a tile test they are an error.

Execution is element by element through closures compiled once per call; programs in tests
are small (thousands of statement instances), for which this takes milliseconds.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping

import numpy as np

from flashlight.ir import dtypes
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.claims import Box, LoopClaims, point_text as _point
from flashlight.ir.expr import CASTS, COMPARISONS, TILE_BOUNDS, Call, Const, Expr, Iter, Load, dtype_of, loads
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.nodes import Given, Guard, Loop, Node, Program, Stmt, TensorDecl, bind_sizes, dims_at, walk_stmts

# {{{ dtypes and conversions

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": np.float32,
    "i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8, "u8": np.uint8,
    "b1": np.bool_,
}

#: dtypes that compute in f32 and round after every operation
_HALF = ("f16", "bf16")


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds values of an IR dtype (``bf16`` is held in ``float32``)."""
    return np.dtype(_NUMPY_DTYPES[dtypes.check_dtype(dtype)])


def round_bf16(values: np.ndarray | float) -> np.ndarray:
    """Round to bfloat16 (nearest, ties to even), returned as ``float32``; NaN stays NaN."""
    a = np.asarray(values, dtype=np.float32)
    u = a.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    quiet_nan = (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
    out = np.where(np.isnan(a), quiet_nan, rounded).astype(np.uint32)
    return out.view(np.float32)


def _round_bf16_scalar(x: np.generic) -> np.float32:
    """:func:`round_bf16` of one value; identical results, faster on scalars."""
    u = int(np.float32(x).view(np.uint32))
    if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
        u |= 0x00400000  # NaN: keep it a (quiet) NaN once the low bits are gone
    else:
        u += 0x7FFF + ((u >> 16) & 1)
    return np.uint32(u & 0xFFFF0000).view(np.float32)


def to_numpy(values: np.ndarray | float | int | bool, dtype: str) -> np.ndarray:
    """Convert to the numpy representation of an IR dtype (a new array).

    Float to integer truncates toward zero; ``bf16`` is ``float32`` rounded to bfloat16.
    """
    a = np.asarray(values)
    with np.errstate(all="ignore"):
        if dtype == "bf16":
            return round_bf16(a.astype(np.float32))
        return a.astype(numpy_dtype(dtype), copy=True)


Value = np.generic
Env = dict[str, np.int64]
Eval = Callable[[Env], Value]


def _converter(src: str, dst: str) -> Callable[[Value], Value] | None:
    """Scalar conversion from ``src`` to ``dst`` values; None when there is nothing to do."""
    if src == dst:
        return None
    if dst == "bf16":
        return _round_bf16_scalar
    target = _NUMPY_DTYPES[dst]
    return lambda x: x.astype(target)


def _const_value(c: Const) -> Value:
    return to_numpy(c.value, c.dtype)[()]


# }}}


# {{{ operators

def _sigmoid(x: Value) -> Value:
    return np.reciprocal(1 + np.exp(-x))


def _rsqrt(x: Value) -> Value:
    return np.reciprocal(np.sqrt(x))


def _erf(x: Value) -> Value:
    return type(x)(math.erf(float(x)))


def _fma(a: Value, b: Value, c: Value) -> Value:
    """``a * b + c`` with one rounding to the operands' type (a product of two floats is exact in
    float64, so only the sum rounds, then the narrowing: exact for all but ties)."""
    t = type(a) if isinstance(a, np.floating) else np.float64
    return t(np.float64(a) * np.float64(b) + np.float64(c))


def _identity(x: Value) -> Value:
    return x


def _false(x: Value) -> Value:
    return np.False_


#: arithmetic on floats (in the dtype of the result; f16/bf16 lifted to f32 first)
_FLOAT_OPS: dict[str, Callable[..., Value]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": np.floor_divide, "mod": np.remainder, "neg": operator.neg,
    "max": np.maximum, "min": np.minimum, "pow": np.power, "atan2": np.arctan2,
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2,
    "log1p": np.log1p, "sqrt": np.sqrt, "rsqrt": _rsqrt, "tanh": np.tanh, "sigmoid": _sigmoid,
    "erf": _erf, "abs": np.abs, "sin": np.sin, "cos": np.cos, "floor": np.floor, "ceil": np.ceil,
    "round": np.rint, "reciprocal": np.reciprocal, "fma": _fma,
}

#: arithmetic on integers; operators missing here are only defined on floats
_INT_OPS: dict[str, Callable[..., Value]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "floordiv": operator.floordiv, "mod": operator.mod, "neg": operator.neg,
    "max": np.maximum, "min": np.minimum, "pow": operator.pow, "abs": np.abs,
    "floor": _identity, "ceil": _identity, "round": _identity,
}

#: arithmetic on b1 (``and``/``or`` are compiled separately, short-circuiting)
_BOOL_OPS: dict[str, Callable[..., Value]] = {
    "add": np.logical_or, "mul": np.logical_and, "max": np.logical_or, "min": np.logical_and,
    "not": np.logical_not,
}

_COMPARE_OPS: dict[str, Callable[[Value, Value], Value]] = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "eq": operator.eq, "ne": operator.ne,
}


def _operator(op: str, dtype: str) -> Callable[..., Value] | None:
    """The scalar function of ``op`` on values of ``dtype``, rounding for f16/bf16."""
    if dtype == dtypes.BOOL:
        return _BOOL_OPS.get(op)
    if dtypes.is_int(dtype):
        return _INT_OPS.get(op)
    fn = _FLOAT_OPS.get(op)
    if fn is None or dtype not in _HALF:
        return fn
    f32 = np.float32
    if dtype == "f16":
        f16 = np.float16
        return lambda *args: f16(fn(*(f32(a) for a in args)))
    return lambda *args: _round_bf16_scalar(fn(*args))  # bf16 values are float32 already


def _combiner(op: str, dtype: str, where: str) -> Callable[..., Value]:
    """``(t, v) -> folded`` for a reduction combiner, in ``dtype``."""
    fold = _operator(COMBINERS[op].combine, dtype)
    if fold is None:
        raise TypeError(f"{where}: {op} is not defined on {dtype}")
    return fold


def _online_combiner(op: str, dtype: str, where: str) -> Callable[[Value, Value, Value], Value]:
    """``(t, v, scale) -> folded`` for an online reduction: rescale ``t``, then fold ``v``."""
    fold = _combiner(op, dtype, where)
    rescale = COMBINERS[op].partner
    partner = _operator(rescale, dtype) if rescale is not None else None
    if partner is None:
        raise TypeError(f"{where}: {op} on {dtype} cannot be rescaled")
    # t*scale + v for +=, max(t + scale, v) for max=
    return lambda t, v, scale: fold(partner(t, scale), v)


# }}}


# {{{ compilation

class _Machine(LoopClaims):
    """Storage of one run and the compiler of a program into closures over it."""

    def __init__(self, program: Program, arrays: dict[str, np.ndarray], sizes: Mapping[str, int] | None = None):
        self.program = program
        self.arrays = arrays
        self.sizes = dict(sizes or {})  # the size parameters, bound by the inputs' shapes
        self.dtypes = program.dtypes
        self.instances = 0  # statement instances run so far: tells which tiles held work
        self.full_tiles: list[str] = []  # the claims of the enclosing loops now in a tile stated full
        self.certain_tiles: list[str] = []  # the claims of the enclosing loops' tile tests now certain
        self.around: list[Loop] = []  # while compiling: the loops around the node being compiled
        self.extents: dict[str, tuple[int, int]] = {}  # while running: the bounds of each loop entered
        self.tile_box: Box | None = None  # while compiling a tile test: the points of its tile

    # {{{ expressions

    def dtype(self, e: Expr, where: str) -> str:
        try:
            return dtype_of(e, self.dtypes)
        except KeyError as err:
            raise ValueError(f"{where}: load of undeclared tensor {err.args[0]!r}") from None

    def expr(self, e: Expr, where: str, dtype: str | None = None) -> Eval:
        """A closure evaluating ``e``; converted to ``dtype`` when one is given."""
        fn = self._expr(e, where)
        conv = None if dtype is None else _converter(self.dtype(e, where), dtype)
        if conv is None:
            return fn
        return lambda env: conv(fn(env))

    def _expr(self, e: Expr, where: str) -> Eval:
        if isinstance(e, Const):
            value = _const_value(e)
            return lambda env: value
        if isinstance(e, Iter):
            name = e.name

            def iterator(env: Env) -> Value:
                try:
                    return env[name]
                except KeyError:
                    raise ValueError(f"{where}: iterator {name!r} is not bound") from None

            return iterator
        if isinstance(e, Load):
            return self._load(e, where)
        assert isinstance(e, Call), e
        return self._call(e, where)

    def index(self, ref: Load, where: str) -> Callable[[Env], tuple[int, ...]]:
        """A closure computing the bounds-checked index tuple of ``ref``."""
        decl = self.program.tensor_map.get(ref.tensor)
        if decl is None:
            raise ValueError(f"{where}: access to undeclared tensor {ref.tensor!r}")
        if len(ref.indices) != len(decl.shape):
            raise ValueError(f"{where}: {ref.tensor} has {len(decl.shape)} dimensions, "
                             f"indexed with {len(ref.indices)}: {ref}")
        fns = tuple(self.expr(i, where) for i in ref.indices)
        shape = dims_at(decl.shape, self.sizes)

        def index(env: Env) -> tuple[int, ...]:
            idx = tuple(int(f(env)) for f in fns)
            for i, n in zip(idx, shape):
                if not 0 <= i < n:
                    raise IndexError(f"{where}: index {list(idx)} of {ref} is out of bounds for "
                                     f"{ref.tensor} with shape {list(shape)} at {_point(env)}")
            return idx

        return index

    def _load(self, e: Load, where: str) -> Eval:
        index = self.index(e, where)
        arr = self.arrays[e.tensor]
        return lambda env: arr[index(env)]

    def _call(self, e: Call, where: str) -> Eval:
        op = e.op
        arg_dtypes = [self.dtype(a, where) for a in e.args]
        if op in CASTS:
            return self.expr(e.args[0], where, op)
        if op in TILE_BOUNDS:
            return self.tile_bound(e, where)
        if op in COMPARISONS:
            cmp = _COMPARE_OPS[op]
            a, b = (self.expr(x, where) for x in e.args)
            return lambda env: cmp(a(env), b(env))
        if op in ("isnan", "isinf"):
            a = self.expr(e.args[0], where)
            if not dtypes.is_float(arg_dtypes[0]):
                return lambda env: _false(a(env))
            test = np.isnan if op == "isnan" else np.isinf
            return lambda env: test(a(env))
        result = self.dtype(e, where)
        if op == "where":
            c = self.expr(e.args[0], where)
            a, b = (self.expr(x, where, result) for x in e.args[1:])
            return lambda env: a(env) if c(env) else b(env)
        if op in ("and", "or"):
            a, b = (self.expr(x, where, result) for x in e.args)
            if op == "and":
                return lambda env: b(env) if a(env) else np.False_
            return lambda env: np.True_ if a(env) else b(env)
        fn = _operator(op, result)
        if fn is None:
            hint = "; cast to a floating-point dtype first" if dtypes.is_int(result) else ""
            raise TypeError(f"{where}: {op} is not defined on {result} values, in {e}{hint}")
        args = tuple(self.expr(x, where, result) for x in e.args)
        if len(args) == 1:
            (a,) = args
            return lambda env: fn(a(env))
        if len(args) == 3:
            a, b, c = args
            return lambda env: fn(a(env), b(env), c(env))
        a, b = args
        return lambda env: fn(a(env), b(env))

    # }}}

    # {{{ nodes

    def body(self, body: tuple[Node, ...]) -> Callable[[Env], None]:
        nodes = tuple(self.node(n) for n in body)

        def run(env: Env) -> None:
            for n in nodes:
                n(env)

        return run

    def node(self, node: Node) -> Callable[[Env], None]:
        if isinstance(node, Stmt) and isinstance(node.tag, Given):
            return lambda env: None  # a fact about an input, which already holds its value
        if isinstance(node, Stmt):
            return self.stmt(node)
        if isinstance(node, Guard):
            cond = self.expr(node.cond, f"guard {node.cond}")
            inner = self.body(node.body)
            affine = not loads(node.cond)  # tile ranges state facts about affine guards only
            data = not is_affine_condition(node.cond)  # a tile test's certain part, about the others

            def guard(env: Env) -> None:
                if cond(env):
                    inner(env)
                elif affine and self.full_tiles:
                    raise ValueError(f"{self.full_tiles[-1]} claims every guard holds, but {node.cond} "
                                     f"fails at {_point(env)}")
                elif data and self.certain_tiles:
                    raise ValueError(f"{self.certain_tiles[-1]} claims every data-dependent guard holds, "
                                     f"but {node.cond} fails at {_point(env)}")

            return guard
        assert isinstance(node, Loop), node
        where = f"bound of loop {node.iterator}"
        lower, upper = self.expr(node.lower, where), self.expr(node.upper, where)
        name = node.iterator
        self.around.append(node)
        try:
            inner = self.body(node.body)
        finally:
            self.around.pop()
        i64 = np.int64
        # the per-tile bounds a loop states are facts: checked at every point, as they are claimed
        facts = [tuple(self.expr(e, f"tile bound of loop {name}") for e in (b.operand, b.lower, b.upper))
                 + (b,) for b in node.bounds]
        body = self.ranged_body(node, inner) if node.ranges else inner
        body = self.tested_body(node, body) if node.tile_test is not None else body

        def loop(env: Env) -> None:
            start, stop = int(lower(env)), int(upper(env))
            self.extents[name] = (start, stop)
            for v in range(start, stop):
                env[name] = i64(v)
                for x, lo, hi, b in facts:
                    if not lo(env) <= x(env) <= hi(env):
                        raise ValueError(f"tile bound {b.operand} in {b.lower}:{b.upper} does not hold at {_point(env)}")
                body(env)
            env.pop(name, None)

        return loop

    def stmt(self, s: Stmt) -> Callable[[Env], None]:
        run = self._stmt(s)

        def counted(env: Env) -> None:
            self.instances += 1
            run(env)

        return counted

    def _stmt(self, s: Stmt) -> Callable[[Env], None]:
        where = f"statement {s.name}"
        index = self.index(s.target, where)
        dtype = self.dtypes[s.target.tensor]
        arr = self.arrays[s.target.tensor]
        if s.fold_scale is not None and s.op not in ("max=", "min="):
            raise ValueError(f"{where}: only max= and min= fold, then scale")
        # the fold of one instance is its value: folding, then scaling, one instance at a time is
        # folding ``expr * c`` (in expr's dtype, as code generation multiplies the folded tile)
        value = self.expr(s.expr if s.fold_scale is None else Call("mul", (s.expr, s.fold_scale)), where, dtype)
        if s.op == "=":
            if s.scale is not None:
                raise ValueError(f"{where}: an assignment cannot be rescaled")

            def assign(env: Env) -> None:
                idx = index(env)
                arr[idx] = value(env)

            return assign
        if s.op not in COMBINERS:
            raise ValueError(f"{where}: unknown operator {s.op!r}")
        if s.scale is None:
            fold = _combiner(s.op, dtype, where)

            def reduce(env: Env) -> None:
                idx = index(env)
                arr[idx] = fold(arr[idx], value(env))

            return reduce
        online = _online_combiner(s.op, dtype, where)
        scale = self.expr(s.scale, where, dtype)

        def reduce_online(env: Env) -> None:
            idx = index(env)
            v, sc = value(env), scale(env)
            arr[idx] = online(arr[idx], v, sc)

        return reduce_online

    # }}}


# }}}


# {{{ entry point

def _initial(program: Program) -> dict[str, float | int | bool]:
    """The identity each reduction-targeted tensor starts at."""
    start: dict[str, tuple[str, float | int | bool]] = {}
    for s, _, _ in walk_stmts(program.body):
        if not s.is_reduction:
            continue
        name = s.target.tensor
        dtype = program.tensor(name).dtype
        ident = COMBINERS[s.op].identity(dtype)
        if name in start and start[name][1] != ident:
            raise ValueError(f"statement {s.name}: {name} is also reduced with {start[name][0]}, "
                             f"whose identity differs from that of {s.op}")
        start.setdefault(name, (s.op, ident))
    return {name: ident for name, (_, ident) in start.items()}


def _check_inputs(program: Program, inputs: Mapping[str, object]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The inputs as arrays of their declared dtypes, and the size parameters their shapes bind."""
    declared = {t.name: t for t in program.inputs}
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise ValueError(f"program {program.name} has no input named {', '.join(map(repr, unknown))}; "
                         f"its inputs are {', '.join(declared) or 'none'}")
    missing = [n for n in declared if n not in inputs]
    if missing:
        raise ValueError(f"program {program.name}: missing input {', '.join(map(repr, missing))}")
    sizes = bind_sizes(program, [np.shape(inputs[name]) for name in declared])
    arrays = {name: to_numpy(np.asarray(inputs[name]), decl.dtype) for name, decl in declared.items()}
    return arrays, sizes


def _fresh(decl: TensorDecl, start: float | int | bool | None, sizes: Mapping[str, int]) -> np.ndarray:
    """Storage of a temp or output: ``start`` everywhere, else NaN (floats) or zero."""
    if start is None:
        start = math.nan if dtypes.is_float(decl.dtype) else 0
    return np.full(dims_at(decl.shape, sizes), start, dtype=numpy_dtype(decl.dtype))


def interpret(program: Program, inputs: Mapping[str, np.ndarray], *,
              return_temps: bool = False) -> dict[str, np.ndarray]:
    """Run ``program`` on ``inputs`` and return its outputs by name (and its temps too when asked).

    Inputs are converted to the numpy representation of their declared dtype
    (:func:`numpy_dtype`); a missing, unknown or wrongly shaped input raises :class:`ValueError`.
    Results come back as ``float64``, ``float32``, ``float16``, ``float32`` (bf16, rounded),
    ``int64``, ``int32``, ``int16``, ``int8``, ``uint8`` or ``bool`` arrays.
    """
    arrays, sizes = _check_inputs(program, inputs)
    start = _initial(program)
    for decl in program.tensors:
        if decl.role != "input":
            arrays[decl.name] = _fresh(decl, start.get(decl.name), sizes)
    machine = _Machine(program, arrays, sizes)
    run = machine.body(program.body)
    with np.errstate(all="ignore"):
        run({name: np.int64(n) for name, n in sizes.items()})
    wanted = ("output", "temp") if return_temps else ("output",)
    return {t.name: arrays[t.name] for t in program.tensors if t.role in wanted}

# }}}
