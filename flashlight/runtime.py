"""The compiled callable of one captured graph: segments run in order.

A program segment allocates its outputs and global buffers on the device of its inputs and
launches its kernels; an eager segment calls the aten operator. A program segment whose
compilation failed runs its original graph nodes eagerly instead (the reason is recorded as a
fallback), so a compiled function always computes what eager computes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx

from flashlight.codegen.kernel_state import INT32_LIMIT
from flashlight.codegen.launcher import Launch
from flashlight.counting import counters
from flashlight.frontend.segments import EagerSegment, LiftedGraph, ProgramSegment
from flashlight.frontend.symbolic import size_inputs, value_at
from flashlight.frontend.torch_dtypes import IR_TO_TORCH
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter
from flashlight.ir.nodes import Program, bind_sizes, dims_at, scatters, walk_stmts

log = logging.getLogger("flashlight")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def symbolic_strides(shape: tuple[int | str, ...]) -> tuple[int | Expr, ...]:
    """Contiguous strides of a shape with size parameters: a number where the dimensions after it
    are numbers, else an expression of the sizes (``16 * S`` for ``[2, S, 16]``)."""
    if all(isinstance(d, int) for d in shape):
        return contiguous_strides(shape)  # type: ignore[arg-type]
    strides: list[int | Expr] = []
    acc: int | Expr = 1
    for d in reversed(shape):
        strides.append(acc)
        if isinstance(d, int) and isinstance(acc, int):
            acc *= max(d, 1)
        else:  # with a size parameter after it (which may be 0: then nothing is addressed)
            a = E.index(acc) if isinstance(acc, int) else acc
            acc = E.mul(a, E.index(d) if isinstance(d, int) else Iter(d))
    return tuple(reversed(strides))


def restride(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """``t`` laid out with ``strides``, the layout the kernels were generated for. A stride of 0
    (an ``expand`` when the program was captured) reads one element along that dimension, which
    then holds equal values (another program's materialised output of that expand)."""
    broadcast = [d for d, st in enumerate(strides) if st == 0 and t.shape[d] > 1]
    base = t
    for d in broadcast:
        base = base.narrow(d, 0, 1)
    out = torch.empty_strided(base.shape, strides, dtype=t.dtype, device=t.device).copy_(base)
    return out.expand(t.shape) if broadcast else out


@dataclass
class CompiledProgram:
    """A program whose kernels are loaded: call it with its input tensors, get its outputs."""

    program: Program
    launches: list[Launch]
    # the layout the kernels read each input in; with size parameters, a stride may be an
    # expression of them (see symbolic_strides), evaluated at each call's sizes
    input_strides: dict[str, tuple[int | Expr, ...]]
    device: torch.device = torch.device("cpu")
    _layouts: dict = field(default_factory=dict, repr=False)

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        tensors, sizes = self.bind(inputs)
        for launch in self.launches:
            launch(tensors, sizes)
        return [tensors[d.name] for d in self.program.outputs]

    def bind(self, inputs: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Every global tensor of a call on ``inputs`` (the inputs in the kernels' layout, the rest
        allocated) and the sizes the call binds: what each launch takes."""
        tensors: dict[str, torch.Tensor] = {}
        device = inputs[0].device if inputs else self.device
        sizes = bind_sizes(self.program, [tuple(t.shape) for t in inputs]) if self.program.params else {}
        strides, shapes = self._layout(sizes)
        for decl, t in zip(self.program.inputs, inputs):
            want = strides[decl.name]
            if tuple(t.stride()) != want and t.numel() > 1:
                t = restride(t, want)
            tensors[decl.name] = t
        for name, (shape, dtype, zeroed) in shapes.items():
            # a scatter's target starts at its sum's identity (its kernel adds into memory)
            tensors[name] = (torch.zeros if zeroed else torch.empty)(shape, dtype=dtype, device=device)
        if sizes:  # kernels over size parameters form offsets in 32 bits (codegen's is_wide)
            big = [n for n, t in tensors.items() if t.numel() > INT32_LIMIT]
            if big:
                raise ValueError(f"program {self.program.name}: {', '.join(big)} exceed 2**31 - 1 elements "
                                 f"at {sizes}, beyond 32-bit offsets")
        return tensors, sizes

    def with_warps(self, warps: Sequence[int]) -> CompiledProgram:
        """The same kernels launched with ``warps[k]`` warps each (a tuning choice per kernel)."""
        if len(warps) != len(self.launches):
            raise ValueError(f"{len(warps)} warp counts for the {len(self.launches)} kernels of {self.program.name}")
        return replace(self, launches=[replace(ln, kernel=replace(ln.kernel, num_warps=w))
                                       for ln, w in zip(self.launches, warps)], _layouts={})


    def _layout(self, sizes: dict[str, int]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
        """The inputs' strides and the other global tensors' shapes and dtypes at these sizes."""
        def make() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
            strides = {d.name: dims_at(self.input_strides[d.name], sizes) for d in self.program.inputs}
            scattered = {s.target.tensor for s, loops, _ in walk_stmts(self.program.body) if scatters(s, loops)}
            shapes = {d.name: (dims_at(d.shape, sizes), IR_TO_TORCH[d.dtype], d.name in scattered)
                      for d in self.program.tensors if d.role != "input" and d.storage != "local"}
            return strides, shapes
        return memoised(self._layouts, tuple(sizes.items()), make)


@dataclass
class TunedOnFirstCall:
    """A program whose configuration is chosen on its first call, by timing the candidates on that
    call's inputs (see ``autotune.data_steers``); until then, and if choosing fails, it is the
    program compiled with the default configuration."""

    default: CompiledProgram
    choose: Callable[[list[torch.Tensor]], CompiledProgram]
    chosen: CompiledProgram | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def program(self) -> Program:
        return (self.chosen or self.default).program

    @property
    def launches(self) -> list[Launch]:
        return (self.chosen or self.default).launches

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.chosen is None:
            with self.lock:  # one thread tunes; the others wait for its choice
                if self.chosen is None:
                    try:
                        self.chosen = self.choose(inputs)
                    except Exception as exc:  # noqa: BLE001  (the default configuration is correct too)
                        log.warning("flashlight: tuning %s on its inputs failed, keeping the default "
                                    "configuration: %s", self.default.program.name, exc)
                        self.chosen = self.default
        return self.chosen(inputs)


@dataclass
class TunedPerBucket:
    """A program with size parameters whose configuration is chosen per power-of-two bucket of its
    sizes (``bucket_of``): ``first`` was tuned at the sizes it was compiled at; a call whose sizes
    fall in another bucket tunes there (or reads the choice back from disk) once, and keeps it."""

    first: CompiledProgram | TunedOnFirstCall
    first_bucket: tuple
    tune_at: Callable[[dict[str, int]], CompiledProgram | TunedOnFirstCall]
    bucket_of: Callable[[dict[str, int]], tuple]
    chosen: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.chosen.setdefault(self.first_bucket, self.first)

    @property
    def program(self) -> Program:
        return self.first.program

    @property
    def launches(self) -> list[Launch]:
        return self.first.launches

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = bind_sizes(self.program, [tuple(t.shape) for t in inputs])
        key = self.bucket_of(sizes)
        prog = self.chosen.get(key)
        if prog is None:
            with self.lock:
                prog = self.chosen.get(key)
                if prog is None:
                    try:
                        prog = self.tune_at(sizes)
                    except Exception as exc:  # noqa: BLE001  (the first configuration is correct too)
                        log.warning("flashlight: tuning %s for sizes %s failed, keeping the first "
                                    "configuration: %s", self.program.name, key, exc)
                        prog = self.first
                    self.chosen[key] = prog
        return prog(inputs)


@dataclass
class CompiledGraph:
    lifted: LiftedGraph
    compiled: dict[int, CompiledProgram | TunedOnFirstCall | TunedPerBucket | None]  # by segment; None: eagerly
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    saved: list[fx.Node] = field(default_factory=list)  # outputs the backward reads
    _layouts: dict = field(default_factory=dict, repr=False)
    _size_inputs: dict[str, int] | None = field(default=None, repr=False)
    _output: fx.Node | None = field(default=None, repr=False)

    def _layout(self, n: fx.Node, sizes: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The traced shape and strides of ``n`` at these sizes (sympy evaluates them: once)."""
        val = n.meta["val"]
        return memoised(self._layouts, (n, tuple(sizes.items())),
                        lambda: (concrete(val.shape, sizes), concrete(val.stride(), sizes)))

    def _sizes(self, args: list) -> dict[str, int]:
        """This call's value of each symbolic size of the graph (its size inputs are numbers)."""
        if self._size_inputs is None:  # naming a sympy symbol costs microseconds: once
            self._size_inputs = size_inputs(self.lifted.placeholders)
        return {name: int(args[k]) for name, k in self._size_inputs.items()}

    def __call__(self, args: list) -> Any:
        env: dict[fx.Node, Any] = dict(zip(self.lifted.placeholders, args))
        env.update(self.lifted.constants)  # tensor constants of the function (torch.tensor(2.0))
        sizes: dict[str, int] | None = None
        for k, seg in enumerate(self.lifted.segments):
            if isinstance(seg, EagerSegment):
                env[seg.node] = run_node(seg.node, env)
                continue
            prog = self.compiled.get(k)
            if prog is not None:
                try:
                    outs = prog([env[n] for n in seg.inputs])
                except Exception as exc:  # noqa: BLE001  (a launch that fails is a fallback, said once)
                    launch_failed(seg, exc, self.fallbacks)
                    self.compiled[k] = prog = None
            if prog is None:
                counters["eager_segments"] += 1
                for n in seg.nodes:
                    env[n] = run_node(n, env)
                continue
            if sizes is None:
                sizes = self._sizes(args)
            for n, t in zip(seg.outputs, outs):
                # a delinearised output ([B, Hkv, G, S, D] for [B, H, S, D]) is the same contiguous data;
                # laid out as the graph traced it (a backward views saved tensors by those strides)
                env[n] = as_traced(t, *self._layout(n, sizes))
        if self._output is None:  # walking the graph for it costs microseconds a call
            self._output = next(n for n in self.lifted.graph.nodes if n.op == "output")
        return fx.node.map_arg(self._output.args[0], env.__getitem__)


def as_traced(t: torch.Tensor, shape: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """A program's output as the graph traced it: the traced shape (a delinearised output,
    ``[B, Hkv, G, S, D]`` for ``[B, H, S, D]``, is the same contiguous data) and strides (a
    backward views saved tensors by them)."""
    t = t if t.shape == shape else t.view(shape)
    return t if t.stride() == tuple(stride) or t.numel() <= 1 else restride(t, tuple(stride))


def program_label(seg: ProgramSegment) -> str:
    """How a fallback names a program segment."""
    return f"program {seg.program.name} ({len(seg.nodes)} ops)"


def launch_failed(seg: ProgramSegment, exc: Exception, fallbacks: list[tuple[str, str]]) -> None:
    """A program whose kernels failed to launch runs in eager PyTorch from now on: said once, and
    recorded among the graph's fallbacks."""
    reason = f"launching its kernels failed: {type(exc).__name__}: {exc}".splitlines()[0]
    log.warning("flashlight: program %s runs in eager PyTorch from now on: %s", seg.program.name, reason)
    fallbacks.append((program_label(seg), reason))


def concrete(dims: Any, sizes: Mapping[str, int]) -> tuple[int, ...]:
    """A traced shape or strides at one call's sizes: a symbolic entry evaluated, never guarded."""
    return tuple(value_at(d, sizes) for d in dims)  # type: ignore[misc]


def memoised(store: dict, key: Any, make: Callable[[], Any]) -> Any:
    """``store[key]``, made on first use. Evaluating a layout at one call's sizes costs more than
    a small kernel, and a decode loop meets a new size per step: the store is bounded."""
    hit = store.get(key)
    if hit is None:
        if len(store) > 4096:
            store.clear()
        hit = store[key] = make()
    return hit


def run_node(n: fx.Node, env: dict[fx.Node, Any]) -> Any:
    args = fx.node.map_arg(n.args, lambda a: env[a])
    kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
    return n.target(*args, **kwargs)  # type: ignore[operator]



@dataclass
class CompiledPerSize:
    """A graph with varying sizes that no one program serves (``reason``): compiled at each
    call's sizes, which its size inputs (``positions``: Dynamo's symbol -> graph input) give,
    and kept per sizes."""

    positions: dict[str, int]
    reason: str
    compile_at: Callable[[dict[str, int]], CompiledGraph]
    graphs: dict[tuple[tuple[str, int], ...], CompiledGraph] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        return [f for g in self.graphs.values() for f in g.fallbacks]

    def __call__(self, args: list) -> Any:
        sizes = {s: int(args[k]) for s, k in self.positions.items()}
        key = tuple(sorted(sizes.items()))
        with self.lock:
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = self.compile_at(sizes)
        return graph(args)
