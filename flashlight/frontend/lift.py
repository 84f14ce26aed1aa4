"""Lifting an aten FX graph into IR programs, cutting out what the IR cannot express.

Every aten operator the IR can express becomes one loop nest (:mod:`.builder`); views become
index expressions. An operator that cannot be lifted (unknown op, unsupported dtype or
argument) runs in eager PyTorch: the graph is split into *segments*, maximal runs of liftable
nodes that become one :class:`~flashlight.ir.Program` each, and eager nodes in between. A
segment's inputs are the graph values it reads from outside, its outputs the values it defines
that anything later reads.

.. autofunction:: lift_graph
.. autoclass:: LiftedGraph
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter
from flashlight.ir.nodes import Program
from flashlight.frontend.builder import ProgramBuilder, broadcast_index, literal
from flashlight.frontend.values import Value, placeholder

aten = torch.ops.aten
prims = torch.ops.prims

TORCH_TO_IR = {
    torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "b1",
}
IR_TO_TORCH = {v: k for k, v in TORCH_TO_IR.items()}


class Unsupported(Exception):
    """This node cannot be lifted; the message says why (it is reported as the fallback reason)."""


def ir_dtype(dt: torch.dtype) -> str:
    try:
        return TORCH_TO_IR[dt]
    except KeyError:
        raise Unsupported(f"dtype {dt} is not supported by the IR") from None


def opmath(dtype: str) -> str:
    """The type eager PyTorch computes a pointwise op of ``dtype`` in."""
    return "f32" if dtype in ("f16", "bf16") else dtype


# {{{ segments

@dataclass
class ProgramSegment:
    program: Program
    inputs: list[fx.Node]   # in the order of program.inputs
    outputs: list[fx.Node]  # in the order of program.outputs
    nodes: list[fx.Node]    # the graph nodes it replaces, in order (for running it eagerly)


@dataclass
class EagerSegment:
    node: fx.Node
    reason: str
    computes: bool = True  # False for a view or an empty result: eager costs nothing, nothing is lost


@dataclass
class LiftedGraph:
    graph: fx.Graph
    placeholders: list[fx.Node]
    segments: list[ProgramSegment | EagerSegment] = field(default_factory=list)
    # get_attr nodes (tensor constants such as torch.tensor(2.0) in the function) and their values:
    # like placeholders, they are values of the graph that no segment computes
    constants: dict[fx.Node, object] = field(default_factory=dict)

    @property
    def programs(self) -> list[Program]:
        return [s.program for s in self.segments if isinstance(s, ProgramSegment)]

    @property
    def fallbacks(self) -> list[EagerSegment]:
        return [s for s in self.segments if isinstance(s, EagerSegment) and s.computes]

# }}}


def lift_graph(gm: fx.GraphModule, input_names: Sequence[str] | None = None, name: str = "program",
               arg_order: Sequence[str] = ()) -> LiftedGraph:
    """Lift ``gm`` (an aten graph with ``val`` metadata on every node) into segments.

    ``input_names`` name the graph's placeholders; program inputs are declared in the order of
    ``arg_order`` (the user's parameter names), then in order of first use.
    """
    graph = gm.graph
    phs = [n for n in graph.nodes if n.op == "placeholder"]
    names = list(input_names) if input_names and len(input_names) == len(phs) else [n.name for n in phs]
    ph_name = dict(zip(phs, names))
    out_node = next(n for n in graph.nodes if n.op == "output")
    compute = [n for n in graph.nodes if n.op == "call_function"]

    # pass 1: classify every node by lifting it into a scratch program
    reasons: dict[fx.Node, str] = {}
    scratch = ProgramBuilder(name)
    env: dict[fx.Node, Value] = {}
    for n in phs:
        env[n] = _input_value(scratch, n, ph_name[n])
    for n in graph.nodes:  # tensor constants are inputs of the programs that read them
        if n.op == "get_attr" and _is_tensor(n):
            env[n] = _input_value(scratch, n, n.name.lstrip("_"))
    for n in compute:
        reason = _try_lift(scratch, env, n)
        if reason is not None:
            reasons[n] = reason
            env[n] = _input_value(scratch, n, n.name) if _is_tensor(n) else None  # type: ignore[assignment]

    # pass 2: liftable nodes become programs, as few as the eager nodes between them allow. A
    # node's level counts the eager nodes its value waits for: program L holds the liftable nodes
    # of level L and runs after the eager nodes of level L, which wait for program L - 1.
    lifted = LiftedGraph(graph, phs)
    lifted.constants = {n: _attr(gm, str(n.target)) for n in graph.nodes if n.op == "get_attr"}
    level: dict[fx.Node, int] = {}
    for n in compute:
        ins = [a for a in n.all_input_nodes if a in level]
        level[n] = max((level[a] + (n in reasons and a not in reasons) for a in ins), default=0)
    runs: list[list[fx.Node]] = [
        [n for n in compute if level[n] == k and n not in reasons] for k in range(max(level.values(), default=-1) + 1)]
    programs = [run for run in runs if run and not all(_is_view_like(n) for n in run)]
    for k, run in enumerate(runs):
        lifted.segments += [EagerSegment(n, reasons[n], not _is_empty(n)) for n in compute
                            if level[n] == k and n in reasons]
        if run and run not in programs:
            lifted.segments += [EagerSegment(n, "view only: nothing to compute", False) for n in run]
        elif run:
            members = set(run)
            outputs = [n for n in run if _is_tensor(n) and any(u not in members for u in n.users)]
            prog_name = name if len(programs) == 1 else f"{name}_{programs.index(run)}"
            lifted.segments.append(_lift_run(run, outputs, ph_name, prog_name, list(arg_order)))
    return lifted


def _lift_run(run: list[fx.Node], outputs: list[fx.Node], ph_name: dict[fx.Node, str], name: str,
              arg_order: list[str]) -> ProgramSegment:
    b = ProgramBuilder(name)
    env: dict[fx.Node, Value] = {}
    inputs: list[fx.Node] = []
    members = set(run)
    for n in run:
        for a in n.all_input_nodes:
            if a not in members and a not in env:
                env[a] = _input_value(b, a, ph_name.get(a, a.name.lstrip("_") or "t"))
                inputs.append(a)
        reason = _try_lift(b, env, n)
        assert reason is None, f"node {n.name} lifted in pass 1 but not in pass 2: {reason}"
    outs = [(f"out{k}", env[n]) for k, n in enumerate(outputs)]
    prog = b.program(outs)
    # an empty input is only ever dropped (a cache of length 0 concatenated with new keys)
    keep = [k for k, d in enumerate(prog.inputs) if d.numel > 0]
    if len(keep) < len(prog.inputs):
        inputs = [inputs[k] for k in keep]
        prog = prog.replace(tensors=tuple(t for t in prog.tensors if t.role != "input" or t.numel > 0))
    rank = {n: arg_order.index(n) if n in arg_order else len(arg_order) + k
            for k, n in enumerate(d.name for d in prog.inputs)}
    pairs = sorted(zip(prog.inputs, inputs), key=lambda p: rank[p[0].name])
    decls = [d for d, _ in pairs] + [t for t in prog.tensors if t.role != "input"]
    return ProgramSegment(prog.replace(tensors=tuple(decls)), [n for _, n in pairs], outputs, list(run))


def _attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _input_value(b: ProgramBuilder, n: fx.Node, name: str) -> Value:
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"input {name} is not a tensor")
    return b.input(name, tuple(int(s) for s in val.shape), ir_dtype(val.dtype))


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


def _is_empty(n: fx.Node) -> bool:
    return _is_tensor(n) and n.meta["val"].numel() == 0


def _try_lift(b: ProgramBuilder, env: dict[fx.Node, Value], n: fx.Node) -> str | None:
    handler = _HANDLERS.get(_packet(n.target))
    if handler is None:
        return f"{_op_name(n.target)} has no lifting rule"
    snap = b.snapshot()
    try:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Unsupported("its result is not a single tensor")
        ir_dtype(val.dtype)
        if val.numel() == 0:
            raise Unsupported("its result is empty: nothing to compute")
        for a in n.all_input_nodes:
            if env.get(a) is None:
                raise Unsupported(f"its input {a.name} is not a tensor the IR can hold")
            if _is_empty(a) and _packet(n.target) not in _READS_EMPTY:
                raise Unsupported(f"its input {a.name} is empty")
        env[n] = handler(_Ctx(b, env, n))
        return None
    except Unsupported as exc:
        b.rollback(snap)
        return f"{_op_name(n.target)}: {exc}"


def _packet(target: object) -> object:
    return getattr(target, "overloadpacket", target)


def _op_name(target: object) -> str:
    return str(getattr(target, "__name__", target))


def _is_view_like(n: fx.Node) -> bool:
    return _packet(n.target) in _VIEW_OPS


# {{{ handlers

@dataclass
class _Ctx:
    b: ProgramBuilder
    env: dict[fx.Node, Value]
    node: fx.Node

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.node.meta["val"].shape)

    @property
    def out_dtype(self) -> str:
        return ir_dtype(self.node.meta["val"].dtype)

    def arg(self, k: int, default: object = None) -> object:
        args = self.node.args
        return args[k] if k < len(args) else default

    def kwarg(self, key: str, default: object = None) -> object:
        return self.node.kwargs.get(key, default)

    def value(self, a: object) -> Value:
        if isinstance(a, fx.Node):
            return self.env[a]
        raise Unsupported(f"expected a tensor argument, got {a!r}")

    def hint(self) -> str:
        return self.node.name


_HANDLERS: dict[object, Callable[[_Ctx], Value]] = {}
_VIEW_OPS: set[object] = set()


def _handles(*packets: object, view: bool = False) -> Callable:
    def deco(fn: Callable[[_Ctx], Value]) -> Callable[[_Ctx], Value]:
        for p in packets:
            _HANDLERS[p] = fn
            if view:
                _VIEW_OPS.add(p)
        return fn

    return deco


# views: index expressions only

@_handles(aten.view, aten._unsafe_view, aten.reshape, view=True)
def _view(c: _Ctx) -> Value:
    return c.value(c.arg(0)).reshape(c.out_shape)


@_handles(aten.permute, view=True)
def _permute(c: _Ctx) -> Value:
    return c.value(c.arg(0)).permute(c.arg(1))  # type: ignore[arg-type]


@_handles(aten.transpose, view=True)
def _transpose(c: _Ctx) -> Value:
    return c.value(c.arg(0)).transpose(c.arg(1), c.arg(2))  # type: ignore[arg-type]


@_handles(aten.t, view=True)
def _t(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    return v.transpose(0, 1) if v.rank == 2 else v


@_handles(aten.expand, view=True)
def _expand(c: _Ctx) -> Value:
    return c.value(c.arg(0)).expand(c.out_shape)


@_handles(aten.unsqueeze, view=True)
def _unsqueeze(c: _Ctx) -> Value:
    return c.value(c.arg(0)).unsqueeze(c.arg(1))  # type: ignore[arg-type]


@_handles(aten.squeeze, view=True)
def _squeeze(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    dims = c.arg(1)
    if dims is None:
        return v.squeeze()
    return v.squeeze([dims] if isinstance(dims, int) else list(dims))  # type: ignore[arg-type]


@_handles(aten.slice, view=True)
def _slice(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    dim, start, end, step = c.arg(1, 0), c.arg(2), c.arg(3), c.arg(4, 1)
    if end is not None and end > 2**62:  # type: ignore[operator]
        end = None
    return v.slice(dim, start, end, step)  # type: ignore[arg-type]


@_handles(aten.select, view=True)
def _select(c: _Ctx) -> Value:
    return c.value(c.arg(0)).select(c.arg(1), c.arg(2))  # type: ignore[arg-type]


@_handles(aten.alias, aten.clone, aten.detach, aten.lift_fresh_copy, view=True)
def _identity(c: _Ctx) -> Value:
    return c.value(c.arg(0))


@_handles(aten._to_copy, prims.convert_element_type, view=False)
def _to_copy(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    src = c.node.args[0]
    assert isinstance(src, fx.Node)
    if c.node.meta["val"].device != src.meta["val"].device:
        raise Unsupported("it moves data between devices")
    if v.dtype == c.out_dtype:
        return v
    return _pointwise(c, [v], lambda xs: E.call(c.out_dtype, xs[0]), compute=None)


# constants

@_handles(aten.full, aten.scalar_tensor)
def _full(c: _Ctx) -> Value:
    fill = c.arg(1) if _packet(c.node.target) is aten.full else c.arg(0)
    dt = c.out_dtype
    return _pointwise(c, [], lambda xs: literal(_as_python(fill, dt), dt), compute=None)


@_handles(aten.arange)
def _arange(c: _Ctx) -> Value:
    args = [a for a in c.node.args]
    if len(args) == 1:
        start, end, step = 0, args[0], 1
    else:
        start, end, step = args[0], args[1], (args[2] if len(args) > 2 else 1)
    dt = c.out_dtype
    if not all(isinstance(x, int) for x in (start, end, step)):
        if not dtypes.is_float(dt):
            raise Unsupported("non-integer arange bounds")

        def real(xs: list[Iter]) -> Expr:
            pos = E.call("add", E.call("mul", E.call("f64", xs[0]), E.const(step, "f64")), E.const(start, "f64"))
            return E.call(dt, pos) if dt != "f64" else pos
        return _pointwise(c, [lambda its: its[0]], real, compute=None)

    def integer(xs: list[Iter]) -> Expr:
        pos = E.add(E.mul(E.index(step), xs[0]), E.index(start))  # type: ignore[arg-type]
        return pos if dt == "i64" else E.call(dt, pos)
    return _pointwise(c, [lambda its: its[0]], integer, compute=None)


def _as_python(x: object, dtype: str) -> float | int | bool:
    if isinstance(x, (bool, int, float)):
        if dtypes.is_float(dtype):
            return float(x)
        if dtype == dtypes.BOOL:
            return bool(x)
        if isinstance(x, float) and not math.isfinite(x):
            raise Unsupported(f"fill value {x} for an integer tensor")
        return int(x)  # a real truncates, as eager's cast does
    raise Unsupported(f"fill value {x!r} is not a Python number")


# pointwise operators

def _operand(c: _Ctx, a: object, compute: str, out_shape: Sequence[int]) -> Callable[[list[Iter]], Expr]:
    """An operand as a function of the output iterators, cast to the compute dtype."""
    if isinstance(a, fx.Node):
        v = c.env[a]

        def load(its: list[Iter]) -> Expr:
            x = v.at(broadcast_index(its, out_shape, v.shape))
            return x if v.dtype == compute else E.call(compute, x)
        return load
    if isinstance(a, (bool, int, float)):
        if isinstance(a, float) and not dtypes.is_float(compute):
            raise Unsupported("a real scalar in an integer computation")
        return lambda its: literal(a, compute)  # type: ignore[arg-type]
    raise Unsupported(f"argument {a!r} is neither a tensor nor a Python number")


def _pointwise(c: _Ctx, operands: Sequence[Callable[[list[Iter]], Expr] | Value],
               fn: Callable[[list[Expr]], Expr], compute: str | None) -> Value:
    """The statement ``out[its] = cast(fn(operands(its)))`` over the node's output shape.

    An expression that reads no tensor (a constant, ``arange``, a mask computed from iterators,
    index arithmetic on those) creates no statement: like a view, it is a value over placeholder
    iterators, recomputed where it is used. So ``table[i - j + n]`` stays an affine access and a
    mask like ``j > i`` reaches its consumer as an affine condition."""
    shape, out = c.out_shape, c.out_dtype
    getters = []
    for o in operands:
        if isinstance(o, Value):
            getters.append(lambda its, v=o: v.at(broadcast_index(its, shape, v.shape)))
        else:
            getters.append(o)

    def make(its: list[Iter]) -> Expr:
        r = fn([g(its) for g in getters])
        return r if compute is None or compute == out else E.call(out, r)
    ps = [placeholder(k) for k in range(len(shape))]
    pure = make(ps)
    if not E.loads(pure):
        ranges = {p.name: (0, max(n - 1, 0)) for p, n in zip(ps, shape)}
        return Value(E.simplify_index(pure, ranges), shape, out)
    return c.b.emit(c.hint(), out, shape, ["parallel"] * len(shape), list(range(len(shape))), "=", make)


def _promoted(c: _Ctx, args: Sequence[object]) -> str:
    """The common dtype of (at most two) operands, by torch's promotion rules."""
    vals = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
    if len(vals) == 1:
        v = vals[0]
        return ir_dtype(v.dtype if isinstance(v, torch.Tensor) else torch.tensor(v).dtype)
    return ir_dtype(torch.result_type(vals[0], vals[1]))


def _elementwise(op: str, arity: int) -> Callable[[_Ctx], Value]:
    def handler(c: _Ctx) -> Value:
        args = list(c.node.args[:arity])
        if op in E.COMPARISONS:
            compute = opmath(_promoted(c, args))
            fn = lambda xs: E.call(op, *xs)  # noqa: E731
            return _pointwise(c, [_operand(c, a, compute, c.out_shape) for a in args], fn, None)
        compute = opmath(c.out_dtype)
        name = op
        if compute == dtypes.BOOL:  # arithmetic on booleans is logic (True + True is True)
            name = _BOOL_ARITH.get(op, op)
            if name not in E.LOGICAL:
                raise Unsupported(f"{op} of booleans")
        if name in _FLOAT_ONLY and not dtypes.is_float(compute):
            raise Unsupported(f"{op} of integers")
        fn = lambda xs: E.call(name, *xs)  # noqa: E731
        return _pointwise(c, [_operand(c, a, compute, c.out_shape) for a in args], fn, compute)
    return handler


_FLOAT_ONLY = {"div", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid",
               "erf", "sin", "cos", "reciprocal", "atan2", "pow"}
_BOOL_ARITH = {"mul": "and", "max": "or", "min": "and", "add": "or"}

for _packet_, _op, _arity in [
    (aten.mul, "mul", 2), (aten.neg, "neg", 1), (aten.exp, "exp", 1), (aten.exp2, "exp2", 1),
    (aten.expm1, "expm1", 1), (aten.log, "log", 1), (aten.log2, "log2", 1), (aten.log1p, "log1p", 1),
    (aten.sqrt, "sqrt", 1), (aten.rsqrt, "rsqrt", 1), (aten.tanh, "tanh", 1), (aten.sigmoid, "sigmoid", 1),
    (aten.erf, "erf", 1), (aten.abs, "abs", 1), (aten.sin, "sin", 1), (aten.cos, "cos", 1),
    (aten.floor, "floor", 1), (aten.ceil, "ceil", 1), (aten.reciprocal, "reciprocal", 1),
    (aten.maximum, "max", 2), (aten.minimum, "min", 2), (aten.atan2, "atan2", 2),
    (aten.remainder, "mod", 2),
    (aten.lt, "lt", 2), (aten.le, "le", 2), (aten.gt, "gt", 2), (aten.ge, "ge", 2), (aten.eq, "eq", 2),
    (aten.ne, "ne", 2),
]:
    _HANDLERS[_packet_] = _elementwise(_op, _arity)


_LOGICAL = {aten.logical_and: "and", aten.logical_or: "or", aten.logical_not: "not", aten.logical_xor: "ne",
            aten.bitwise_and: "and", aten.bitwise_or: "or", aten.bitwise_not: "not", aten.bitwise_xor: "ne"}


@_handles(*_LOGICAL)
def _logical(c: _Ctx) -> Value:
    """Logical operators read their operands as truth values (``x != 0``); the bitwise ones are
    the same operators on booleans (the IR has no bitwise integer operators)."""
    packet = _packet(c.node.target)
    op = _LOGICAL[packet]
    if packet in (aten.bitwise_and, aten.bitwise_or, aten.bitwise_not, aten.bitwise_xor) \
            and c.out_dtype != dtypes.BOOL:
        raise Unsupported("bitwise operations on integers")
    args = list(c.node.args[:1 if op == "not" else 2])
    ops = [_operand(c, a, dtypes.BOOL, c.out_shape) for a in args]
    return _pointwise(c, ops, lambda xs: E.call(op, *xs), dtypes.BOOL)


@_handles(aten.pow)
def _pow(c: _Ctx) -> Value:
    """Literal exponents 0, ±0.5 and small integers are a constant, square roots and products, as
    eager computes them; a power of the literal 2 is ``exp2``; other powers stay ``pow``."""
    base, ex = c.node.args[:2]
    compute = opmath(c.out_dtype)
    if isinstance(ex, (int, float)) and not isinstance(ex, bool) and isinstance(base, fx.Node):
        get = _operand(c, base, compute, c.out_shape)
        integral = float(ex).is_integer()
        if not dtypes.is_float(compute) and not (integral and 0 <= ex <= 4):
            raise Unsupported(f"integer power {ex}")

        def power(xs: list[Expr]) -> Expr:
            x = xs[0]
            if ex == 0:
                return literal(1, compute)
            if ex == 0.5:
                return E.call("sqrt", x)
            if ex == -0.5:
                return E.call("rsqrt", x)
            if integral and 1 <= abs(ex) <= 4:
                r = x
                for _ in range(int(abs(ex)) - 1):
                    r = E.call("mul", r, x)
                return r if ex > 0 else E.call("div", literal(1, compute), r)
            return E.call("pow", x, literal(ex, compute))
        return _pointwise(c, [get], power, compute)
    if isinstance(base, (int, float)) and not isinstance(base, bool) and base == 2 and dtypes.is_float(compute):
        return _pointwise(c, [_operand(c, ex, compute, c.out_shape)], lambda xs: E.call("exp2", xs[0]), compute)
    return _elementwise("pow", 2)(c)


@_handles(aten.round)
def _round(c: _Ctx) -> Value:
    if c.kwarg("decimals", 0):
        raise Unsupported("round with decimals")
    return _elementwise("round", 1)(c)


@_handles(aten.add, aten.sub, aten.rsub)
def _add_sub(c: _Ctx) -> Value:
    a, b = c.node.args[:2]
    alpha = c.kwarg("alpha", 1)
    packet = _packet(c.node.target)
    if packet is aten.rsub:
        a, b = b, a
    op = "add" if packet is aten.add else "sub"
    compute = opmath(c.out_dtype)
    ga, gb = _operand(c, a, compute, c.out_shape), _operand(c, b, compute, c.out_shape)

    if compute == dtypes.BOOL:  # True + True is True
        if op != "add" or alpha != 1:
            raise Unsupported("subtraction or scaled addition of booleans")
        op = "or"

    def fn(xs: list[Expr]) -> Expr:
        rhs = xs[1] if alpha == 1 else E.call("mul", literal(alpha, compute), xs[1])  # type: ignore[arg-type]
        return E.call(op, xs[0], rhs)
    return _pointwise(c, [ga, gb], fn, compute)


@_handles(aten.div)
def _div(c: _Ctx) -> Value:
    mode = c.kwarg("rounding_mode")
    a, b = c.node.args[:2]
    compute = opmath(c.out_dtype)
    ops = [_operand(c, a, compute, c.out_shape), _operand(c, b, compute, c.out_shape)]
    if mode is None:
        return _pointwise(c, ops, lambda xs: E.call("div", *xs), compute)
    if mode == "floor":
        if dtypes.is_float(compute):
            return _pointwise(c, ops, lambda xs: E.call("floor", E.call("div", *xs)), compute)
        return _pointwise(c, ops, lambda xs: E.call("floordiv", *xs), compute)
    if mode == "trunc":
        if dtypes.is_float(compute):
            return _pointwise(c, ops, lambda xs: _trunc(E.call("div", *xs), compute), compute)
        return _pointwise(c, ops, lambda xs: _trunc_div(xs[0], xs[1], compute), compute)
    raise Unsupported(f"division with rounding_mode={mode!r}")


def _trunc(x: Expr, dtype: str) -> Expr:
    """Rounding of a real towards zero: ``ceil`` below zero, ``floor`` elsewhere (NaN stays NaN)."""
    return E.call("where", E.call("lt", x, literal(0, dtype)), E.call("ceil", x), E.call("floor", x))


def _trunc_div(a: Expr, b: Expr, dtype: str) -> Expr:
    """C division of integers: the floor quotient, plus one where a negative quotient was inexact."""
    zero = literal(0, dtype)
    q = E.call("floordiv", a, b)
    inexact = E.call("ne", E.call("mul", q, b), a)
    negative = E.call("ne", E.call("lt", a, zero), E.call("lt", b, zero))
    return E.call("where", E.call("and", inexact, negative), E.call("add", q, literal(1, dtype)), q)


@_handles(aten.where)
def _where(c: _Ctx) -> Value:
    cond, a, b = c.node.args[:3]
    out = c.out_dtype
    ops = [_operand(c, cond, dtypes.BOOL, c.out_shape), _operand(c, a, out, c.out_shape),
           _operand(c, b, out, c.out_shape)]
    return _pointwise(c, ops, lambda xs: E.call("where", *xs), None)


@_handles(aten.masked_fill)
def _masked_fill(c: _Ctx) -> Value:
    x, mask, fill = c.node.args[:3]
    out = c.out_dtype
    ops = [_operand(c, mask, dtypes.BOOL, c.out_shape), _operand(c, fill, out, c.out_shape),
           _operand(c, x, out, c.out_shape)]
    return _pointwise(c, ops, lambda xs: E.call("where", *xs), None)


@_handles(aten.clamp, aten.clamp_min, aten.clamp_max)
def _clamp(c: _Ctx) -> Value:
    packet = _packet(c.node.target)
    x = c.node.args[0]
    lo = c.arg(1) if packet is not aten.clamp_max else None
    hi = c.arg(2) if packet is aten.clamp else (c.arg(1) if packet is aten.clamp_max else None)
    lo, hi = c.kwarg("min", lo), c.kwarg("max", hi)
    compute = opmath(c.out_dtype)
    ops = [_operand(c, x, compute, c.out_shape)]
    for bound in (lo, hi):
        if bound is not None:
            ops.append(_operand(c, bound, compute, c.out_shape))

    def fn(xs: list[Expr]) -> Expr:
        r, k = xs[0], 1
        if lo is not None:
            r, k = E.call("max", r, xs[k]), k + 1
        if hi is not None:
            r = E.call("min", r, xs[k])
        return r
    return _pointwise(c, ops, fn, compute)


@_handles(aten.relu)
def _relu(c: _Ctx) -> Value:
    compute = opmath(c.out_dtype)
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)],
                      lambda xs: E.call("max", xs[0], literal(0, compute)), compute)


@_handles(aten.isnan, aten.isinf)
def _isnan(c: _Ctx) -> Value:
    op = "isnan" if _packet(c.node.target) is aten.isnan else "isinf"
    src = c.node.args[0]
    compute = opmath(ir_dtype(src.meta["val"].dtype))  # type: ignore[union-attr]
    return _pointwise(c, [_operand(c, src, compute, c.out_shape)], lambda xs: E.call(op, xs[0]), dtypes.BOOL)


@_handles(aten.silu)
def _silu(c: _Ctx) -> Value:
    compute = opmath(c.out_dtype)
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)],
                      lambda xs: E.call("mul", xs[0], E.call("sigmoid", xs[0])), compute)


@_handles(aten.gelu)
def _gelu(c: _Ctx) -> Value:
    """``x/2 (1 + erf(x/√2))``, or with ``approximate='tanh'`` eager's
    ``x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))``."""
    approximate = c.kwarg("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"gelu with approximate={approximate!r}")
    compute = opmath(c.out_dtype)
    half, one = literal(0.5, compute), literal(1, compute)

    def fn(xs: list[Expr]) -> Expr:
        x = xs[0]
        if approximate == "tanh":
            cube = E.call("mul", E.call("mul", x, x), x)
            inner = E.call("add", x, E.call("mul", literal(0.044715, compute), cube))
            t = E.call("tanh", E.call("mul", literal(math.sqrt(2 / math.pi), compute), inner))
            return E.call("mul", E.call("mul", half, x), E.call("add", one, t))
        erf = E.call("erf", E.call("mul", x, literal(1 / math.sqrt(2), compute)))
        return E.call("mul", E.call("mul", x, half), E.call("add", one, erf))
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)], fn, compute)


@_handles(aten.sign, aten.sgn)
def _sign(c: _Ctx) -> Value:
    """-1, 0 or 1 (0 for NaN and -0.0, as eager); booleans are their own sign."""
    dt = c.out_dtype
    if dt == dtypes.BOOL:
        return _pointwise(c, [_operand(c, c.arg(0), dt, c.out_shape)], lambda xs: xs[0], None)
    compute = opmath(dt)

    def fn(xs: list[Expr]) -> Expr:
        x, zero = xs[0], literal(0, compute)
        return E.call("where", E.call("gt", x, zero), literal(1, compute),
                      E.call("where", E.call("lt", x, zero), literal(-1, compute), zero))
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)], fn, compute)


@_handles(aten.trunc, aten.fix)
def _trunc_op(c: _Ctx) -> Value:
    compute = opmath(c.out_dtype)
    if not dtypes.is_float(compute):
        return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)], lambda xs: xs[0], compute)
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)], lambda xs: _trunc(xs[0], compute), compute)


@_handles(aten.fmod)
def _fmod(c: _Ctx) -> Value:
    """C remainder (the sign of the dividend) of integers: the floor remainder ``mod``, minus the
    divisor where the signs differ and it is not zero; exactly ``mod`` when the dividend is
    provably non-negative and the divisor a positive literal."""
    compute = opmath(c.out_dtype)
    if not dtypes.is_int(compute):
        raise Unsupported("fmod of reals (the IR has no exact real remainder)")
    a, b = c.node.args[:2]
    ga, gb = _operand(c, a, compute, c.out_shape), _operand(c, b, compute, c.out_shape)

    def make(its: list[Iter]) -> Expr:
        x, y = ga(its), gb(its)
        r = E.call("mod", x, y)
        if isinstance(y, E.Const) and y.value > 0 and _nonnegative(x, _ranges(its, c.out_shape)):
            return r
        zero = literal(0, compute)
        fix = E.call("and", E.call("ne", r, zero), E.call("ne", E.call("lt", x, zero), E.call("lt", y, zero)))
        return E.call("where", fix, E.call("sub", r, y), r)
    return _pointwise(c, [make], lambda xs: xs[0], compute)


@_handles(aten.max, aten.min)
def _max_min(c: _Ctx) -> Value:
    """``max(x)`` is ``amax`` over every dimension, ``max(x, y)`` is ``maximum``; ``max(x, dim)``
    (values and indices) is not lifted."""
    is_max = _packet(c.node.target) is aten.max
    overload = getattr(c.node.target, "_overloadname", "")
    if overload == "other":
        return _elementwise("max" if is_max else "min", 2)(c)
    if overload == "default":
        v = c.value(c.arg(0))
        return _reduction(c, "max=" if is_max else "min=", v, list(range(v.rank)), False)
    raise Unsupported(f"{overload} overload")


@_handles(aten.copy)
def _copy(c: _Ctx) -> Value:
    """``copy(dst, src)``: ``src`` broadcast to the shape and cast to the dtype of ``dst``."""
    out = c.out_dtype
    return _pointwise(c, [_operand(c, c.arg(1), out, c.out_shape)], lambda xs: xs[0], None)


def _nonnegative(e: Expr, ranges: dict[str, tuple[int, int]]) -> bool:
    """Whether an integer index expression is provably >= 0 on iterator ``ranges``."""
    if isinstance(e, Call) and e.op == "mod" and isinstance(e.args[1], E.Const) and e.args[1].value > 0:
        return True
    if isinstance(e, Call) and e.op == "floordiv" and isinstance(e.args[1], E.Const) and e.args[1].value > 0:
        return _nonnegative(e.args[0], ranges)
    if isinstance(e, Call) and e.op in ("i64", "i32"):
        return _nonnegative(e.args[0], ranges)
    form = E.affine_form(e)
    if form is None:
        return False
    lo = form[1]
    for name, k in form[0].items():
        if name not in ranges:
            return False
        a, b = ranges[name]
        lo += min(k * a, k * b)
    return lo >= 0


# prims that some decompositions produce

@_handles(prims.broadcast_in_dim, view=True)
def _broadcast_in_dim(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    shape, dims = list(c.arg(1)), list(c.arg(2))  # type: ignore[arg-type]
    idx: list[Expr] = []
    for a, d in enumerate(dims):
        idx.append(E.index(0) if v.shape[a] == 1 and shape[d] != 1 else placeholder(d))
    return v.reindex(shape, idx)


@_handles(prims.div)
def _prims_div(c: _Ctx) -> Value:
    if not dtypes.is_float(c.out_dtype):
        raise Unsupported("truncating integer division")
    return _div(c)


@_handles(prims.var)
def _prims_var(c: _Ctx) -> Value:
    """``sum((d - mean(d))^2) / (n - correction)`` of ``d = x - x0``, with ``x0`` the first value
    along the reduced dims: the variance is shift-invariant, and with a shift by one of the values,
    values that are all equal give exactly 0 (as eager's Welford does; the plain two-pass gives
    the rounding error of the sum: 4096 for thirteen values of -1e9)."""
    v = c.value(c.arg(0))
    dims = sorted(d % v.rank for d in c.arg(1))  # type: ignore[union-attr]
    correction = c.kwarg("correction", c.arg(2, 1))
    acc = opmath(c.out_dtype)
    n = 1
    for d in dims:
        n *= v.shape[d]
    order, kinds, at = _reduction_nest(v, dims, acc)
    kept = len(order) - len(dims)

    def shifted(its: list[Iter]) -> Expr:
        return E.call("sub", at(its), at(its[:kept] + [E.index(0)] * len(dims)))
    total = c.b.emit(c.hint() + "_sum", acc, [v.shape[d] for d in order], kinds, list(range(kept)), "+=", shifted)

    def sq(its: list[Iter]) -> Expr:
        mean = E.call("div", total.at(its[:kept]), literal(n, acc))
        dev = E.call("sub", shifted(its), mean)
        return E.call("mul", dev, dev)
    ss = c.b.emit(c.hint() + "_ss", acc, [v.shape[d] for d in order], kinds, list(range(kept)), "+=", sq)
    return _pointwise(c, [ss], lambda xs: E.call("div", xs[0], literal(max(n - correction, 0), acc)), acc)


def _reduction_nest(v: Value, dims: list[int], acc: str) -> tuple[list[int], list[str], Callable[[list], Expr]]:
    """The nest that reduces ``v`` over ``dims``: dim order (kept dims outermost), loop kinds, and
    ``v`` at the nest's iterators, in the accumulator's dtype."""
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims
    kinds = ["parallel"] * len(kept) + ["reduce"] * len(dims)

    def at(its: list) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        return x if v.dtype == acc else E.call(acc, x)
    return order, kinds, at


# reductions

_REDUCE_OPS = {aten.sum: "+=", aten.amax: "max=", aten.amin: "min=", aten.mean: "+=", aten.prod: "*=",
               prims.sum: "+=", prims.amax: "max=", prims.amin: "min="}


@_handles(*_REDUCE_OPS)
def _reduce(c: _Ctx) -> Value:
    packet = _packet(c.node.target)
    v = c.value(c.arg(0))
    dims = c.arg(1, c.kwarg("dim"))
    if packet is aten.prod:
        dims = None if len(c.node.args) < 2 else [dims]
    keepdim = bool(c.arg(2, c.kwarg("keepdim", False)))
    return _reduction(c, _REDUCE_OPS[packet], v, _reduced_dims(v, dims), keepdim, mean=packet is aten.mean)


def _reduced_dims(v: Value, dims: object) -> list[int]:
    """The reduced dimensions of ``v``, sorted; ``None`` or ``[]`` reduce all of them."""
    if dims is None or dims == []:
        return list(range(v.rank))
    listed = dims if isinstance(dims, (list, tuple)) else [dims]
    return sorted({d % max(v.rank, 1) for d in listed})  # type: ignore[operator]


def _reduction(c: _Ctx, op: str, v: Value, dims: list[int], keepdim: bool, mean: bool = False) -> Value:
    """``op``-reduce ``v`` over ``dims`` into the node's dtype: reals accumulate in their opmath
    type, integer sums and products in i64; ``mean`` divides by the count."""
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else ("i64" if op in ("+=", "*=") else out)
    if out == dtypes.BOOL:
        raise Unsupported("reductions producing booleans")
    if mean and not dtypes.is_float(out):
        raise Unsupported("mean of integers")
    order, kinds, make = _reduction_nest(v, dims, acc)
    hint = c.hint() if acc == out and not mean else c.hint() + "_acc"
    r = c.b.emit(hint, acc, [v.shape[d] for d in order], kinds, list(range(len(order) - len(dims))), op, make)
    if keepdim:
        for d in dims:
            r = r.unsqueeze(d)
    count = 1
    for d in dims:
        count *= v.shape[d]
    if mean:
        return _pointwise(c, [r], lambda xs: E.call("div", xs[0], literal(count, acc)), acc)
    if acc != out:
        return _pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)
    return r


@_handles(aten.cumsum)
def _cumsum(c: _Ctx) -> Value:
    """``cumsum`` along ``dim``: ``out[.., i, ..] = sum_j where(j <= i, x[.., j, ..], 0)``, a reduction
    of a masked term (which masks-to-domains turns into the domain ``j <= i``, and tile ranges into
    skipped tiles). Quadratic in the length where a scan is linear: cumsums in attention programs
    run along the sequence of a mask or of positions (ALiBi, model libraries' position ids)."""
    v = c.value(c.arg(0))
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else "i64"
    if out == dtypes.BOOL or not v.rank:
        raise Unsupported("cumsum to booleans or of a 0-d tensor")
    dim = int(c.arg(1, c.kwarg("dim"))) % v.rank  # type: ignore[arg-type]
    n = v.shape[dim]

    def make(its: list[Iter]) -> Expr:
        idx = list(its[:v.rank])
        idx[dim] = its[v.rank]  # the summed position j
        x = v.at(idx)
        x = x if v.dtype == acc else E.call(acc, x)
        return E.call("where", E.call("le", its[v.rank], its[dim]), x, literal(0, acc))

    kinds = ["parallel"] * v.rank + ["reduce"]
    r = c.b.emit(c.hint() if acc == out else c.hint() + "_acc", acc, list(v.shape) + [n], kinds,
                 list(range(v.rank)), "+=", make)
    return r if acc == out else _pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)


@_handles(aten.any, aten.all)
def _any_all(c: _Ctx) -> Value:
    """``any``: the count of true elements is positive; ``all``: the count of false ones is zero
    (counts, so that an empty reduction gives eager's False and True)."""
    is_any = _packet(c.node.target) is aten.any
    v = c.value(c.arg(0))
    dims = _reduced_dims(v, c.arg(1, c.kwarg("dim")))
    keepdim = bool(c.arg(2, c.kwarg("keepdim", False)))
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims

    def make(its: list[Iter]) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        truth = x if v.dtype == dtypes.BOOL else E.call(dtypes.BOOL, x)
        return E.call("i64", truth if is_any else E.call("not", truth))
    count = c.b.emit(c.hint() + "_count", "i64", [v.shape[d] for d in order],
                     ["parallel"] * len(kept) + ["reduce"] * len(dims), list(range(len(kept))), "+=", make)
    if keepdim:
        for d in dims:
            count = count.unsqueeze(d)
    test = "gt" if is_any else "eq"
    return _pointwise(c, [count], lambda xs: E.call(test, xs[0], E.index(0)), dtypes.BOOL)


# contractions

@_handles(aten.bmm, aten.mm)
def _matmul(c: _Ctx) -> Value:
    a, b = c.value(c.arg(0)), c.value(c.arg(1))
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else "i64"
    batch = a.shape[:-2]
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    nb = len(batch)
    extents = list(batch) + [m, n, k]
    kinds = ["parallel"] * (nb + 2) + ["reduce"]

    def make(its: list[Iter]) -> Expr:
        bi, (i, j, r) = its[:nb], its[nb:]
        x, y = a.at(bi + [i, r]), b.at(bi + [r, j])
        if a.dtype != acc:
            x = E.call(acc, x)
        if b.dtype != acc:
            y = E.call(acc, y)
        return E.call("mul", x, y)
    r = c.b.emit(c.hint() if acc == out else c.hint() + "_acc", acc, extents, kinds, list(range(nb + 2)), "+=", make)
    if acc != out:
        return _pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)
    return r


@_handles(aten.addmm)
def _addmm(c: _Ctx) -> Value:
    """``beta * bias + alpha * (a @ b)``; with ``beta == 0`` the bias is not read (eager ignores
    even its NaNs)."""
    beta, alpha = c.kwarg("beta", 1), c.kwarg("alpha", 1)
    if not all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in (beta, alpha)):
        raise Unsupported("addmm with non-numeric beta or alpha")
    bias = c.value(c.arg(0))
    prod = _matmul(_Ctx(c.b, c.env, _with_args(c.node, c.node.args[1:3])))
    compute = opmath(c.out_dtype)
    if not dtypes.is_float(compute) and any(isinstance(k, float) for k in (beta, alpha)):
        raise Unsupported("real beta or alpha for an integer addmm")
    ops = [_cast_getter(prod, compute, c.out_shape), _cast_getter(bias, compute, c.out_shape)]

    def fn(xs: list[Expr]) -> Expr:
        p = xs[0] if alpha == 1 else E.call("mul", literal(alpha, compute), xs[0])  # type: ignore[arg-type]
        if beta == 0:
            return p
        b = xs[1] if beta == 1 else E.call("mul", literal(beta, compute), xs[1])  # type: ignore[arg-type]
        return E.call("add", p, b)
    return _pointwise(c, ops, fn, compute)


def _cast_getter(v: Value, dtype: str, out_shape: Sequence[int]) -> Callable[[list[Iter]], Expr]:
    def get(its: list[Iter]) -> Expr:
        x = v.at(broadcast_index(its, out_shape, v.shape))
        return x if v.dtype == dtype else E.call(dtype, x)
    return get


class _NodeView:
    """A node with replaced arguments (for lifting one aten op as a combination of others)."""

    def __init__(self, node: fx.Node, args: tuple) -> None:
        self.args, self.kwargs, self.meta, self.name, self.target = args, {}, node.meta, node.name, node.target


def _with_args(node: fx.Node, args: tuple) -> fx.Node:
    return _NodeView(node, tuple(args))  # type: ignore[return-value]

# }}}


# {{{ index maps: copies whose elements are elements of their inputs

@_handles(aten.repeat)
def _repeat(c: _Ctx) -> Value:
    """``x.repeat(r0, ...)``: element ``p`` is ``x[p % n]`` along every repeated dimension."""
    v = c.value(c.arg(0))
    reps = list(c.arg(1))  # type: ignore[arg-type]
    off = len(reps) - v.rank
    idx: list[Expr] = []
    for a, n in enumerate(v.shape):
        p = placeholder(a + off)
        idx.append(E.index(0) if n <= 1 else (p if reps[a + off] == 1 else E.mod(p, n)))
    return v.reindex(c.out_shape, idx)


@_handles(aten.repeat_interleave)
def _repeat_interleave(c: _Ctx) -> Value:
    """``repeat_interleave(x, r, dim)`` with an integer ``r``: element ``p`` is ``x[p // r]``."""
    if getattr(c.node.target, "_overloadname", "") != "self_int":
        raise Unsupported("repeat counts given as a tensor (a data-dependent shape)")
    v = c.value(c.arg(0))
    r, dim = int(c.arg(1)), c.arg(2, c.kwarg("dim"))  # type: ignore[arg-type]
    if dim is None:
        v, dim = v.reshape([math.prod(v.shape)]), 0
    dim = dim % v.rank  # type: ignore[operator]
    idx: list[Expr] = [placeholder(k) for k in range(v.rank)]
    idx[dim] = E.floordiv(placeholder(dim), r)
    return v.reindex(c.out_shape, idx)


@_handles(aten.flip)
def _flip(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    dims = {d % max(v.rank, 1) for d in c.arg(1)}  # type: ignore[union-attr]
    idx = [E.sub(E.index(n - 1), placeholder(k)) if k in dims else placeholder(k) for k, n in enumerate(v.shape)]
    return v.reindex(v.shape, idx)


_READS_EMPTY = {aten.cat}  # ops whose handlers drop empty operands


@_handles(aten.cat)
def _cat(c: _Ctx) -> Value:
    """Concatenation along ``dim``: a ``where`` over the index ranges of the operands. Each operand
    is read at ``(p - offset) mod size``, a quasi-affine index that stays in bounds where its
    branch is not taken."""
    shape, out = c.out_shape, c.out_dtype
    rank = len(shape)
    dim = c.arg(1, c.kwarg("dim", 0)) % rank  # type: ignore[operator]
    parts: list[tuple[int, int, Value]] = []
    off = 0
    for a in c.arg(0):  # type: ignore[union-attr]
        v = c.value(a)
        if v.rank != rank or v.shape[dim] == 0:  # empty operands (legacy 1-d empties included) add nothing
            continue
        parts.append((off, v.shape[dim], v))
        off += v.shape[dim]
    if not parts:
        raise Unsupported("concatenation of empty tensors")

    def make(its: list[Iter]) -> Expr:
        p, e = its[dim], None
        for start, n, v in reversed(parts):
            idx: list[Expr] = list(its)
            local = E.sub(p, E.index(start))
            idx[dim] = local if len(parts) == 1 else E.mod(local, n)
            x = v.at(broadcast_index(idx, shape, v.shape))
            x = x if v.dtype == out else E.call(out, x)
            e = x if e is None else E.call("where", E.call("lt", p, E.index(start + n)), x, e)
        return e  # type: ignore[return-value]
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.constant_pad_nd)
def _constant_pad(c: _Ctx) -> Value:
    """``F.pad`` with a constant: ``x[p - low]`` inside, the value outside (negative pads crop)."""
    v = c.value(c.arg(0))
    pad = list(c.arg(1))  # type: ignore[arg-type]
    out = c.out_dtype
    fill = literal(_as_python(c.arg(2, 0), out), out)
    lows, highs = [0] * v.rank, [0] * v.rank
    for k in range(len(pad) // 2):
        lows[v.rank - 1 - k], highs[v.rank - 1 - k] = pad[2 * k], pad[2 * k + 1]

    def make(its: list[Iter]) -> Expr:
        idx: list[Expr] = []
        conds: list[Expr] = []
        for d, n in enumerate(v.shape):
            local = E.sub(its[d], E.index(lows[d]))
            if lows[d] > 0:
                conds.append(E.call("ge", its[d], E.index(lows[d])))
            if highs[d] > 0:
                conds.append(E.call("lt", its[d], E.index(n + lows[d])))
            if (lows[d] > 0 or highs[d] > 0) and n == 0:
                raise Unsupported("padding an empty dimension")
            idx.append(E.mod(local, n) if lows[d] > 0 or highs[d] > 0 else local)
        x = v.at(idx)
        x = x if v.dtype == out else E.call(out, x)
        if not conds:
            return x
        cond = conds[0]
        for k in conds[1:]:
            cond = E.call("and", cond, k)
        return E.call("where", cond, x, fill)
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.diagonal, view=True)
def _diagonal(c: _Ctx) -> Value:
    v = c.value(c.arg(0))
    off = c.arg(1, c.kwarg("offset", 0))
    d1, d2 = c.arg(2, c.kwarg("dim1", 0)) % v.rank, c.arg(3, c.kwarg("dim2", 1)) % v.rank  # type: ignore[operator]
    rest = [d for d in range(v.rank) if d not in (d1, d2)]
    idx: list[Expr] = [E.index(0)] * v.rank
    for k, d in enumerate(rest):
        idx[d] = placeholder(k)
    p = placeholder(len(rest))
    idx[d1] = E.add(p, E.index(max(-off, 0)))  # type: ignore[operator]
    idx[d2] = E.add(p, E.index(max(off, 0)))  # type: ignore[call-overload]
    return v.reindex(c.out_shape, idx)


@_handles(aten.unfold, view=True)
def _unfold(c: _Ctx) -> Value:
    """``x.unfold(dim, size, step)``: windows along ``dim`` in a new last dimension,
    element ``[.., w, .., k]`` is ``x[.., step * w + k, ..]``."""
    v = c.value(c.arg(0))
    dim, step = c.arg(1) % max(v.rank, 1), c.arg(3)  # type: ignore[operator]
    if v.rank == 0:
        raise Unsupported("unfold of a 0-d tensor")
    idx: list[Expr] = [placeholder(k) for k in range(v.rank)]
    idx[dim] = E.add(E.mul(E.index(step), placeholder(dim)), placeholder(v.rank))  # type: ignore[arg-type]
    return v.reindex(c.out_shape, idx)


@_handles(aten.as_strided, view=True)
def _as_strided(c: _Ctx) -> Value:
    """A strided view of a contiguous tensor that starts its storage: element ``p`` is element
    ``offset + sum(p * stride)`` of the flattened tensor. Other sources are refused: their
    storage is not what the value's indices describe."""
    src = c.node.args[0]
    assert isinstance(src, fx.Node)
    val = src.meta["val"]
    size, stride = list(c.arg(1)), list(c.arg(2))  # type: ignore[arg-type]
    offset = c.arg(3, c.kwarg("storage_offset"))
    offset = val.storage_offset() if offset is None else offset
    if not val.is_contiguous() or val.storage_offset() != 0:
        raise Unsupported("as_strided of a tensor that does not start a contiguous storage")
    numel = val.numel()
    last = offset + sum((n - 1) * st for n, st in zip(size, stride) if n > 0)
    if any(st < 0 for st in stride) or (math.prod(size) > 0 and last >= numel):
        raise Unsupported("as_strided reaching beyond its source")
    flat = c.value(src).reshape([numel])
    linear: Expr = E.index(offset)
    for k, st in enumerate(stride):
        linear = E.add(linear, E.mul(E.index(st), placeholder(k)))
    return flat.reindex(size, [linear])


@_handles(aten.slice_scatter)
def _slice_scatter(c: _Ctx) -> Value:
    """``base`` with ``src`` in ``base[start:end:step]`` along ``dim`` (an in-place slice update):
    a ``where`` over the slice's indices; ``src`` is read at an in-bounds index everywhere."""
    base, src = c.value(c.arg(0)), c.value(c.arg(1))
    dim = c.arg(2, c.kwarg("dim", 0)) % base.rank  # type: ignore[operator]
    start, step = c.arg(3, c.kwarg("start")), c.arg(5, c.kwarg("step", 1))
    n, size = base.shape[dim], src.shape[dim]
    start = 0 if start is None else (start + n if start < 0 else start)  # type: ignore[operator]
    start = min(max(start, 0), n)
    out = c.out_dtype

    def make(its: list[Iter]) -> Expr:
        y = base.at(its)
        y = y if base.dtype == out else E.call(out, y)
        if size == 0:
            return y
        p = its[dim]
        local = E.sub(p, E.index(start))
        idx: list[Expr] = list(its)
        idx[dim] = E.mod(local if step == 1 else E.floordiv(local, step), size)  # type: ignore[arg-type]
        x = src.at(idx)
        x = x if src.dtype == out else E.call(out, x)
        cond = E.call("and", E.call("ge", p, E.index(start)),
                      E.call("lt", p, E.index(start + (size - 1) * step + 1)))  # type: ignore[operator]
        if step != 1:
            cond = E.call("and", cond, E.call("eq", E.mod(local, step), E.index(0)))  # type: ignore[arg-type]
        return E.call("where", cond, x, y)
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.select_scatter)
def _select_scatter(c: _Ctx) -> Value:
    """``base`` with ``src`` in ``base.select(dim, index)`` (an in-place update of one slice)."""
    base, src = c.value(c.arg(0)), c.value(c.arg(1))
    dim = c.arg(2) % base.rank  # type: ignore[operator]
    i = c.arg(3)
    i = i + base.shape[dim] if i < 0 else i  # type: ignore[operator]
    out = c.out_dtype

    def make(its: list[Iter]) -> Expr:
        y, x = base.at(its), src.at(its[:dim] + its[dim + 1:])
        y = y if base.dtype == out else E.call(out, y)
        x = x if src.dtype == out else E.call(out, x)
        return E.call("where", E.call("eq", its[dim], E.index(i)), x, y)  # type: ignore[arg-type]
    return _pointwise(c, [make], lambda xs: xs[0], None)

# }}}


# {{{ constants shaped like other tensors

_FILLS = {aten.full_like: 1, aten.new_full: 2, aten.fill: 1}
_ZEROS = {aten.zeros_like, aten.new_zeros, aten.zeros, aten.empty_like, aten.empty, aten.empty_strided,
          aten.empty_permuted, aten.new_empty, aten.new_empty_strided}
_ONES = {aten.ones_like, aten.new_ones, aten.ones}


@_handles(*_FILLS, *_ZEROS, *_ONES)
def _fill(c: _Ctx) -> Value:
    """A tensor of one value, shaped by the node. ``empty`` tensors are zeros (their contents are
    unspecified, so any value is what eager gives)."""
    packet, dt = _packet(c.node.target), c.out_dtype
    value = 0 if packet in _ZEROS else 1 if packet in _ONES else c.arg(_FILLS[packet])
    if isinstance(value, fx.Node):  # fill with a 0-d tensor
        return _pointwise(c, [_operand(c, value, dt, c.out_shape)], lambda xs: xs[0], None)
    return _pointwise(c, [], lambda xs: literal(_as_python(value, dt), dt), compute=None)


@_handles(prims.iota)
def _iota(c: _Ctx) -> Value:
    start, step, dt = c.kwarg("start", 0), c.kwarg("step", 1), c.out_dtype
    if dt not in dtypes.SIGNED:
        raise Unsupported(f"iota of {dt}")

    def integer(its: list[Iter]) -> Expr:
        pos = E.add(E.mul(E.index(step), its[0]), E.index(start))  # type: ignore[arg-type]
        return pos if dt == "i64" else E.call(dt, pos)
    return _pointwise(c, [integer], lambda xs: xs[0], None)

# }}}


# {{{ gathers: indirect accesses

def _as_index(e: Expr, dtype: str, wrap_size: int | None = None,
              ranges: dict[str, tuple[int, int]] | None = None) -> Expr:
    """An element of an index tensor as an i64 index. With ``wrap_size``, a negative index counts
    from the end (``i + n`` where ``i < 0``), as advanced indexing does in eager, unless it is
    provably non-negative."""
    if not dtypes.is_int(dtype):
        raise Unsupported(f"indices of dtype {dtype}")
    i = e if dtype == "i64" else E.call("i64", e)
    if wrap_size is None or dtype == "u8" or _nonnegative(i, ranges or {}):
        return i
    return E.call("where", E.call("lt", i, E.index(0)), E.add(i, E.index(wrap_size)), i)


def _ranges(its: Sequence[Iter], shape: Sequence[int]) -> dict[str, tuple[int, int]]:
    return {it.name: (0, max(n - 1, 0)) for it, n in zip(its, shape)}


@_handles(aten.index, aten._unsafe_index)
def _index(c: _Ctx) -> Value:
    """Advanced indexing ``x[..., idx, ...]`` with integer index tensors: ``x[.., idx[b], ..]``.

    The index tensors broadcast to one shape B, which replaces the indexed dimensions where they
    are adjacent and comes first otherwise (numpy's rule). Boolean masks (a data-dependent shape)
    are not lifted."""
    x = c.value(c.arg(0))
    given = list(c.arg(1))  # type: ignore[arg-type]
    if len(given) > x.rank:
        raise Unsupported("more indices than dimensions")
    given += [None] * (x.rank - len(given))
    vals: dict[int, Value] = {}
    for d, a in enumerate(given):
        if a is None:
            continue
        if not isinstance(a, fx.Node) or a.meta["val"].dtype in (torch.bool, torch.uint8):
            raise Unsupported("boolean mask indexing (a data-dependent shape)")
        vals[d] = c.value(a)
    if not vals:
        raise Unsupported("indexing without index tensors")
    bshape = tuple(int(s) for s in torch.broadcast_shapes(*[v.shape for v in vals.values()]))
    dims = sorted(vals)
    rest = [d for d in range(x.rank) if d not in vals]
    batch = [("b", k) for k in range(len(bshape))]
    if dims == list(range(dims[0], dims[-1] + 1)):
        layout = [("x", d) for d in rest if d < dims[0]] + batch + [("x", d) for d in rest if d > dims[-1]]
    else:
        layout = batch + [("x", d) for d in rest]
    shape, out = c.out_shape, c.out_dtype
    if len(layout) != len(shape):
        raise Unsupported(f"unexpected result shape {list(shape)}")

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = [E.index(0)] * x.rank
        b_its: list[Expr] = [E.index(0)] * len(bshape)
        for it, (kind, k) in zip(its, layout):
            if kind == "x":
                src[k] = it
            else:
                b_its[k] = it
        for d, v in vals.items():
            e = v.at(broadcast_index(b_its, bshape, v.shape))
            src[d] = _as_index(e, v.dtype, x.shape[d], _ranges(its, shape))
        r = x.at(src)
        return r if x.dtype == out else E.call(out, r)
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.gather)
def _gather(c: _Ctx) -> Value:
    """``gather(x, dim, idx)``: ``x[.., idx[p], ..]`` with ``idx[p]`` in dimension ``dim``
    (negative indices are an error in eager, so they are not wrapped)."""
    x, index = c.value(c.arg(0)), c.value(c.arg(2))
    if x.rank == 0 or index.rank != x.rank:
        raise Unsupported("gather of a 0-d tensor")
    dim = c.arg(1) % x.rank  # type: ignore[operator]

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = list(its)
        src[dim] = _as_index(index.at(its), index.dtype)
        return x.at(src)
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.index_select)
def _index_select(c: _Ctx) -> Value:
    """``index_select(x, dim, idx)``: ``x[.., idx[p], ..]`` for a 1-d ``idx``."""
    x, index = c.value(c.arg(0)), c.value(c.arg(2))
    if index.rank > 1 or x.rank == 0:
        raise Unsupported("index_select with a multi-dimensional index or a 0-d source")
    dim = c.arg(1) % x.rank  # type: ignore[operator]

    def make(its: list[Iter]) -> Expr:
        src: list[Expr] = list(its)
        src[dim] = _as_index(index.at([its[dim]] if index.rank else []), index.dtype)
        return x.at(src)
    return _pointwise(c, [make], lambda xs: xs[0], None)


@_handles(aten.embedding)
def _embedding(c: _Ctx) -> Value:
    """``embedding(weight, idx)``: row ``idx[p]`` of ``weight``."""
    w, index = c.value(c.arg(0)), c.value(c.arg(1))
    if w.rank != 2:
        raise Unsupported("embedding with a weight that is not a matrix")

    def make(its: list[Iter]) -> Expr:
        return w.at([_as_index(index.at(its[:-1]), index.dtype), its[-1]])
    return _pointwise(c, [make], lambda xs: xs[0], None)

# }}}


# getitem on multi-output ops, and anything without a rule, run eagerly
_HANDLERS.pop(operator.getitem, None)
