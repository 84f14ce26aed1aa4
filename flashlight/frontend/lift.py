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
from flashlight.ir.expr import Expr, Iter
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


@dataclass
class LiftedGraph:
    graph: fx.Graph
    placeholders: list[fx.Node]
    segments: list[ProgramSegment | EagerSegment] = field(default_factory=list)

    @property
    def programs(self) -> list[Program]:
        return [s.program for s in self.segments if isinstance(s, ProgramSegment)]

    @property
    def fallbacks(self) -> list[EagerSegment]:
        return [s for s in self.segments if isinstance(s, EagerSegment)]

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
    for n in compute:
        reason = _try_lift(scratch, env, n)
        if reason is not None:
            reasons[n] = reason
            env[n] = _input_value(scratch, n, n.name) if _is_tensor(n) else None  # type: ignore[assignment]

    # pass 2: maximal runs of liftable nodes become programs; only-view runs stay eager
    lifted = LiftedGraph(graph, phs)
    runs: list[list[fx.Node]] = []
    for n in compute:
        if n in reasons:
            runs.append([n])
        elif runs and runs[-1] and runs[-1][0] not in reasons:
            runs[-1].append(n)
        else:
            runs.append([n])
    position = {n: k for k, n in enumerate(graph.nodes)}
    seg_index = 0
    for run in runs:
        if run[0] in reasons:
            lifted.segments.append(EagerSegment(run[0], reasons[run[0]]))
            continue
        if all(_is_view_like(n) for n in run):
            for n in run:
                lifted.segments.append(EagerSegment(n, "view only: nothing to compute"))
            continue
        members = set(run)
        last = max(position[n] for n in run)
        outputs = [n for n in run if any(u not in members and (position[u] > last or u is out_node)
                                         for u in n.users)]
        outputs = [n for n in outputs if _is_tensor(n)]
        prog_name = name if len(runs) == 1 else f"{name}_{seg_index}"
        seg_index += 1
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
                env[a] = _input_value(b, a, ph_name.get(a, a.name))
                inputs.append(a)
        reason = _try_lift(b, env, n)
        assert reason is None, f"node {n.name} lifted in pass 1 but not in pass 2: {reason}"
    outs = [(f"out{k}", env[n]) for k, n in enumerate(outputs)]
    prog = b.program(outs)
    rank = {n: arg_order.index(n) if n in arg_order else len(arg_order) + k
            for k, n in enumerate(d.name for d in prog.inputs)}
    pairs = sorted(zip(prog.inputs, inputs), key=lambda p: rank[p[0].name])
    decls = [d for d, _ in pairs] + [t for t in prog.tensors if t.role != "input"]
    return ProgramSegment(prog.replace(tensors=tuple(decls)), [n for _, n in pairs], outputs, list(run))


def _input_value(b: ProgramBuilder, n: fx.Node, name: str) -> Value:
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"input {name} is not a tensor")
    return b.input(name, tuple(int(s) for s in val.shape), ir_dtype(val.dtype))


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


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
        for a in n.all_input_nodes:
            if env.get(a) is None:
                raise Unsupported(f"its input {a.name} is not a tensor the IR can hold")
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
        if isinstance(x, float):
            raise Unsupported(f"real fill value {x} for an integer tensor")
        return int(x)
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
    """The statement ``out[its] = cast(fn(operands(its)))`` over the node's output shape."""
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
        if op in E.COMPARISONS or op in ("and", "or", "not"):
            common = _promoted(c, args)
            compute = opmath(common) if op in E.COMPARISONS else dtypes.BOOL
            fn = lambda xs: E.call(op, *xs)  # noqa: E731
            return _pointwise(c, [_operand(c, a, compute, c.out_shape) for a in args], fn, None)
        compute = opmath(c.out_dtype)
        if op in _FLOAT_ONLY and not dtypes.is_float(compute):
            raise Unsupported(f"{op} of integers")
        fn = lambda xs: E.call(op, *xs)  # noqa: E731
        return _pointwise(c, [_operand(c, a, compute, c.out_shape) for a in args], fn, compute)
    return handler


_FLOAT_ONLY = {"div", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid",
               "erf", "sin", "cos", "reciprocal", "atan2"}

for _packet_, _op, _arity in [
    (aten.mul, "mul", 2), (aten.neg, "neg", 1), (aten.exp, "exp", 1), (aten.exp2, "exp2", 1),
    (aten.expm1, "expm1", 1), (aten.log, "log", 1), (aten.log2, "log2", 1), (aten.log1p, "log1p", 1),
    (aten.sqrt, "sqrt", 1), (aten.rsqrt, "rsqrt", 1), (aten.tanh, "tanh", 1), (aten.sigmoid, "sigmoid", 1),
    (aten.erf, "erf", 1), (aten.abs, "abs", 1), (aten.sin, "sin", 1), (aten.cos, "cos", 1),
    (aten.floor, "floor", 1), (aten.ceil, "ceil", 1), (aten.reciprocal, "reciprocal", 1),
    (aten.maximum, "max", 2), (aten.minimum, "min", 2), (aten.atan2, "atan2", 2),
    (aten.remainder, "mod", 2),
    (aten.lt, "lt", 2), (aten.le, "le", 2), (aten.gt, "gt", 2), (aten.ge, "ge", 2), (aten.eq, "eq", 2),
    (aten.ne, "ne", 2), (aten.logical_and, "and", 2), (aten.logical_or, "or", 2),
    (aten.logical_not, "not", 1), (aten.logical_xor, "ne", 2),
]:
    _HANDLERS[_packet_] = _elementwise(_op, _arity)


@_handles(aten.pow)
def _pow(c: _Ctx) -> Value:
    """Small integer and half exponents are products and square roots (the same value, exactly
    rounded); other exponents stay ``pow``."""
    base, ex = c.node.args[:2]
    compute = opmath(c.out_dtype)
    if isinstance(ex, (int, float)) and not isinstance(ex, bool) and isinstance(base, fx.Node):
        get = _operand(c, base, compute, c.out_shape)

        def power(xs: list[Expr]) -> Expr:
            x = xs[0]
            if ex == 0.5:
                return E.call("sqrt", x)
            if ex == -0.5:
                return E.call("rsqrt", x)
            if float(ex).is_integer() and 1 <= abs(ex) <= 4:
                r = x
                for _ in range(int(abs(ex)) - 1):
                    r = E.call("mul", r, x)
                return r if ex > 0 else E.call("div", literal(1, compute), r)
            return E.call("pow", x, literal(ex, compute))
        return _pointwise(c, [get], power, compute)
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
    raise Unsupported(f"division with rounding_mode={mode!r}")


@_handles(aten.bitwise_not, aten.bitwise_and, aten.bitwise_or)
def _bitwise(c: _Ctx) -> Value:
    if c.out_dtype != dtypes.BOOL:
        raise Unsupported("bitwise operations on integers")
    op = {aten.bitwise_not: "not", aten.bitwise_and: "and", aten.bitwise_or: "or"}[_packet(c.node.target)]
    args = list(c.node.args[:1 if op == "not" else 2])
    return _pointwise(c, [_operand(c, a, dtypes.BOOL, c.out_shape) for a in args], lambda xs: E.call(op, *xs), None)


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
    if c.kwarg("approximate", "none") != "none":
        raise Unsupported("tanh-approximated gelu")
    compute = opmath(c.out_dtype)
    half, inv_sqrt2 = literal(0.5, compute), literal(1 / math.sqrt(2), compute)

    def fn(xs: list[Expr]) -> Expr:
        x = xs[0]
        erf = E.call("erf", E.call("mul", x, inv_sqrt2))
        return E.call("mul", E.call("mul", x, half), E.call("add", literal(1, compute), erf))
    return _pointwise(c, [_operand(c, c.arg(0), compute, c.out_shape)], fn, compute)


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
    """``sum((x - mean)^2) / (n - correction)``: two reductions, as eager computes it."""
    v = c.value(c.arg(0))
    dims = sorted(d % v.rank for d in c.arg(1))  # type: ignore[union-attr]
    correction = c.kwarg("correction", c.arg(2, 1))
    acc = opmath(c.out_dtype)
    n = 1
    for d in dims:
        n *= v.shape[d]
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims
    kinds = ["parallel"] * len(kept) + ["reduce"] * len(dims)

    def at(its: list[Iter]) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        return x if v.dtype == acc else E.call(acc, x)
    total = c.b.emit(c.hint() + "_sum", acc, [v.shape[d] for d in order], kinds, list(range(len(kept))), "+=", at)

    def sq(its: list[Iter]) -> Expr:
        mean = E.call("div", total.at(its[:len(kept)]), literal(n, acc))
        dev = E.call("sub", at(its), mean)
        return E.call("mul", dev, dev)
    ss = c.b.emit(c.hint() + "_ss", acc, [v.shape[d] for d in order], kinds, list(range(len(kept))), "+=", sq)
    return _pointwise(c, [ss], lambda xs: E.call("div", xs[0], literal(max(n - correction, 0), acc)), acc)


# reductions

_REDUCE_OPS = {aten.sum: "+=", aten.amax: "max=", aten.amin: "min=", aten.mean: "+=", aten.prod: "*=",
               prims.sum: "+=", prims.amax: "max=", prims.amin: "min="}


@_handles(*_REDUCE_OPS)
def _reduce(c: _Ctx) -> Value:
    packet = _packet(c.node.target)
    op = _REDUCE_OPS[packet]
    v = c.value(c.arg(0))
    dims = c.arg(1, c.kwarg("dim"))
    if packet is aten.prod:
        dims = None if len(c.node.args) < 2 else [dims]
    keepdim = bool(c.arg(2, c.kwarg("keepdim", False)))
    if dims is None or dims == []:
        dims = list(range(v.rank))
    dims = sorted({d % max(v.rank, 1) for d in (dims if isinstance(dims, (list, tuple)) else [dims])})  # type: ignore[union-attr]
    out = c.out_dtype
    acc = opmath(out) if dtypes.is_float(out) else ("i64" if op in ("+=", "*=") else out)
    if out == dtypes.BOOL:
        raise Unsupported("reductions producing booleans")
    if packet is aten.mean and not dtypes.is_float(out):
        raise Unsupported("mean of integers")
    kept = [d for d in range(v.rank) if d not in dims]
    order = kept + dims  # output dims outermost, reduced dims inside
    kinds = ["parallel"] * len(kept) + ["reduce"] * len(dims)

    def make(its: list[Iter]) -> Expr:
        idx: list[Expr] = [E.index(0)] * v.rank
        for it, d in zip(its, order):
            idx[d] = it
        x = v.at(idx)
        return x if v.dtype == acc else E.call(acc, x)
    hint = c.hint() if acc == out and packet is not aten.mean else c.hint() + "_acc"
    r = c.b.emit(hint, acc, [v.shape[d] for d in order], kinds, list(range(len(kept))), op, make)
    if keepdim:
        for d in dims:
            r = r.unsqueeze(d)
    count = 1
    for d in dims:
        count *= v.shape[d]
    if packet is aten.mean:
        return _pointwise(c, [r], lambda xs: E.call("div", xs[0], literal(count, acc)), acc)
    if acc != out:
        return _pointwise(c, [r], lambda xs: E.call(out, xs[0]), None)
    return r


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
    if c.kwarg("beta", 1) != 1 or c.kwarg("alpha", 1) != 1:
        raise Unsupported("addmm with beta or alpha")
    bias = c.value(c.arg(0))
    prod = _matmul(_Ctx(c.b, c.env, _with_args(c.node, c.node.args[1:3])))
    compute = opmath(c.out_dtype)
    ops = [_cast_getter(prod, compute, c.out_shape), _cast_getter(bias, compute, c.out_shape)]
    return _pointwise(c, ops, lambda xs: E.call("add", xs[0], xs[1]), compute)


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


# getitem on multi-output ops, and anything without a rule, run eagerly
_HANDLERS.pop(operator.getitem, None)
