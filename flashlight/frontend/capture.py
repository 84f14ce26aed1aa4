"""Capture through PyTorch's own tracing: Dynamo for Python, AOT autograd for aten.

Dynamo turns a Python function into FX graphs (breaking the graph where Python does something
it cannot trace), guards each graph on the shapes, dtypes, devices and strides of its inputs,
and recompiles when they change. AOT autograd functionalises each graph and decomposes it to
aten with :func:`decompositions` (softmax becomes ``amax, sub, exp, sum, div``), traces the
backward with it and partitions the two with :func:`~flashlight.frontend.partition.partition_statistics`
(the forward keeps row statistics, the backward recomputes the rest); we compile both graphs
(with ``compile_backward=False``: AOT autograd's partition, and the backward runs eagerly).

.. autofunction:: make_backend
.. autofunction:: capture_graphs
"""

from __future__ import annotations

import functools
import inspect
import linecache
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.exc import TorchDynamoException

from flashlight.frontend import attention
from flashlight.frontend.partition import partition_statistics

aten = torch.ops.aten

# A compiler callback: (aten graph, example inputs, input names) -> runner taking a list of tensors.
GraphCompiler = Callable[[fx.GraphModule, Sequence[Any], list[str]], Callable[[list], Any]]


@functools.lru_cache(maxsize=1)
def decompositions() -> dict:
    """Core aten decompositions, plus composite ops that core aten keeps whole but that lift
    better decomposed (softmax, norms, var/std, activations, batch norm, split)."""
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    table.update(get_decompositions([
        aten._softmax, aten._log_softmax, aten.native_layer_norm, aten.native_group_norm,
        aten.var_mean, aten.var, aten.std, aten.std_mean, aten.logsumexp, aten.addcmul, aten.addcdiv,
        # into where/clamp/expm1 and pow/sum/abs/amax, which lift
        aten.leaky_relu, aten.elu, aten.hardtanh, aten.linalg_vector_norm,
        aten._native_batch_norm_legit_functional,
    ]))
    # torch's own makes the mutating _native_batch_norm_legit, which AOT refuses
    table[aten._native_batch_norm_legit_no_training.default] = _batch_norm_inference
    # split/chunk into slices (torch's own decomposition makes as_strided views of the storage)
    table[aten.split_with_sizes.default] = _split_with_sizes
    table[aten.split.Tensor] = _split
    # these lift directly, better than their decompositions
    for op in (aten.gelu.default, aten.silu.default):
        table.pop(op, None)
    # its decomposition returns the attention weights where the backward reads the log-sum-exp (a
    # wrong gradient): SDPA without dropout is decomposed by DecomposeAttention, with dropout it
    # stays PyTorch's operator
    table.pop(aten._scaled_dot_product_flash_attention_for_cpu.default, None)
    table.update(attention.decompositions())
    return table


def _batch_norm_inference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          mean: torch.Tensor, var: torch.Tensor, momentum: float,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm with running statistics: ``(x - mean) * rsqrt(var + eps) * weight + bias``."""
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    out = (x - mean.reshape(shape)) * torch.rsqrt(var + eps).reshape(shape)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out.to(x.dtype), x.new_zeros((0,)), x.new_zeros((0,))


def _split_with_sizes(x: torch.Tensor, sizes: Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    out, start = [], 0
    for n in sizes:
        out.append(aten.slice.Tensor(x, dim, start, start + n))
        start += n
    return out


def _split(x: torch.Tensor, size: int, dim: int = 0) -> list[torch.Tensor]:
    n = x.shape[dim]
    return _split_with_sizes(x, [min(size, n - s) for s in range(0, n, size)] if size > 0 else [n], dim)


def _input_names(gm: fx.GraphModule) -> list[str]:
    """User-facing names of a Dynamo graph's inputs: ``l_q_`` -> ``q``."""
    names = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        name = n.name
        for prefix in ("l_", "L_", "g_", "G_"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        name = name.rstrip("_") or n.name
        names.append(name)
    return names


def make_backend(compile_graph: GraphCompiler, compile_backward: GraphCompiler | None = None) -> Callable:
    """A Dynamo backend that hands each forward aten graph to ``compile_graph``. With
    ``compile_backward``, the joint graph is partitioned by :mod:`.partition` (row statistics
    saved, the rest recomputed) and each backward graph goes to it; without, AOT autograd's own
    partition saves what eager's backward reads, and the backward runs in eager PyTorch on
    values all computed by the forward's program (recomputing them eagerly could round
    differently from the kernel that computed what was saved)."""
    from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func

    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        user_names = _input_names(gm)
        params = [name for name, _ in gm.named_parameters()] + [name for name, _ in gm.named_buffers()]

        def fw(aten_gm: fx.GraphModule, aten_inputs: Sequence[Any]) -> Callable:
            _mark_saved(aten_gm)
            n_in = len([n for n in aten_gm.graph.nodes if n.op == "placeholder"])
            names = [p.replace(".", "_") for p in params] + user_names
            if len(names) != n_in:
                names = [f"arg{k}" for k in range(n_in)]
            runner = compile_graph(aten_gm, aten_inputs, names)
            return make_boxed_func(runner) if not getattr(runner, "_boxed_call", False) else runner

        def bw(aten_gm: fx.GraphModule, aten_inputs: Sequence[Any]) -> Callable:
            if compile_backward is None:
                return make_boxed_func(aten_gm.forward)
            names = [n.name for n in aten_gm.graph.nodes if n.op == "placeholder"]
            runner = compile_backward(aten_gm, aten_inputs, names)
            return make_boxed_func(runner) if not getattr(runner, "_boxed_call", False) else runner

        own = {"partition_fn": partition_statistics} if compile_backward is not None else {}
        with attention.decompose_attention():
            return aot_module_simplified(gm, example_inputs, fw_compiler=fw, bw_compiler=bw,
                                         decompositions=decompositions(), **own)

    return backend


def _mark_saved(gm: fx.GraphModule) -> None:
    """Record which outputs of a forward graph AOT autograd's partition saves for the backward."""
    from torch._guards import TracingContext

    try:  # an inference graph has no partition (the property asserts)
        saved = TracingContext.try_get().fw_metadata.tensors_saved_for_backwards_slice  # type: ignore[union-attr]
    except (AssertionError, AttributeError):
        return
    if isinstance(saved, slice):
        gm.meta["flashlight_saved_for_backward"] = saved


def saved_for_backward(gm: fx.GraphModule) -> list[fx.Node]:
    """The forward graph's outputs that the backward reads (empty for an inference graph)."""
    saved = gm.meta.get("flashlight_saved_for_backward")
    if saved is None:
        return []
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return [n for n in list(outputs)[saved] if isinstance(n, fx.Node) and isinstance(n.meta.get("val"), torch.Tensor)]


@dataclass
class CapturedGraph:
    graph_module: fx.GraphModule
    example_inputs: list[Any]
    input_names: list[str]
    backward: bool = False  # a backward graph (its inputs: saved values and cotangents)


def fresh_copy(fn: Callable) -> Callable:
    """A copy of ``fn`` with its own code object, hence its own Dynamo cache."""
    if isinstance(fn, types.FunctionType):
        if _no_source_file(fn):
            _register_source_file(fn)
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                  fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        return functools.wraps(fn)(copy)
    if isinstance(fn, types.MethodType):
        return types.MethodType(fresh_copy(fn.__func__), fn.__self__)
    return fn


def _no_source_file(fn: types.FunctionType) -> bool:
    try:
        return inspect.getsourcefile(fn) is None
    except TypeError:
        return True


def _register_source_file(fn: types.FunctionType) -> None:
    """Give exec'd code a (blank) source in ``linecache``. Dynamo before torch 2.13 wraps a function
    without a source file in one frame shared by all such functions, whose recompilation limit (8)
    then makes every later one run eagerly, silently."""
    name = fn.__code__.co_filename
    if name not in linecache.cache:
        linecache.cache[name] = (0, None, [], name)


def capture_graphs(fn: Callable, args: Sequence[Any], kwargs: dict | None = None,
                   execute: bool = False, backward: bool = False) -> tuple[list[CapturedGraph], Any]:
    """The aten graphs of ``fn(*args, **kwargs)``, and its result; with ``backward``, also the
    backward graphs of the outputs that require grad (run once, on a cotangent of ones), as
    flashlight partitions and compiles them (else AOT autograd's partition, for an eager backward).

    Python code between graphs runs; the graphs themselves only run (eagerly) if ``execute``,
    else they return zeros of the right shapes, so that capturing a large program costs nothing.
    """
    graphs: list[CapturedGraph] = []

    def record(gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str]) -> Callable:
        graphs.append(CapturedGraph(gm, list(example_inputs), names))
        return _runner(gm, example_inputs, execute)

    def record_backward(gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str]) -> Callable:
        graphs.append(CapturedGraph(gm, list(example_inputs), names, backward=True))
        return _runner(gm, example_inputs, execute)

    # sizes stay concrete unless an input marks them varying (torch._dynamo.mark_dynamic): then
    # they are lifted as size parameters. Not Dynamo's automatic dynamic shapes: it remembers a
    # function's sizes by its source location, so tracing one function at two shapes would make
    # the second trace symbolic in every dimension that differed
    marked = any(getattr(a, "_dynamo_dynamic_indices", None) for a in [*args, *(kwargs or {}).values()])
    compiled = torch.compile(fresh_copy(fn), backend=make_backend(record, record_backward if backward else None),
                             dynamic=None if marked else False)
    try:
        result = compiled(*args, **(kwargs or {}))
    except Exception as exc:
        if not raised_while_tracing(exc):
            raise
        fn(*args, **(kwargs or {}))  # fn's own error (a shape mismatch): raise it as eager does
        raise  # else Dynamo's
    if backward:  # AOT autograd traces the backward when it first runs
        _run_backward(fn, args, kwargs or {}, result)
    return graphs, result


def _run_backward(fn: Callable, args: Sequence[Any], kwargs: dict, result: Any) -> None:
    """Run the backward of ``result`` once, into fresh gradients: the ``.grad`` of the caller's
    tensors and parameters stays as it was."""
    leaves = torch.utils._pytree.tree_leaves
    outs = [t for t in leaves(result) if isinstance(t, torch.Tensor) and t.requires_grad]
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    wrt = [t for t in [*leaves((list(args), kwargs)), *params] if isinstance(t, torch.Tensor) and t.requires_grad]
    if outs and wrt:
        torch.autograd.grad(outs, wrt, [torch.ones_like(t) for t in outs], allow_unused=True)


def _runner(gm: fx.GraphModule, example_inputs: Sequence[Any], execute: bool) -> Callable[[list], Any]:
    # zeros need concrete shapes: a graph with varying sizes runs to give its outputs theirs
    symbolic = any(isinstance(x, torch.SymInt) for x in example_inputs)
    return make_eager_runner(gm) if execute or symbolic else make_placeholder_runner(gm)


def raised_while_tracing(exc: BaseException) -> bool:
    """Dynamo's own exceptions, and an error of the traced function that Dynamo re-raised with
    its traceback and advice appended (fake tensors run fn's ops while tracing)."""
    return isinstance(exc, TorchDynamoException) or hasattr(exc, "innermost_user_frame_summary") or \
        hasattr(exc, "_torch_dynamo_tracer_output")


def make_placeholder_runner(gm: fx.GraphModule) -> Callable[[list], Any]:
    """Zeros shaped like the graph's outputs (what capture returns when it does not execute)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")

    def zeros(n: Any) -> Any:
        val = n.meta.get("val") if isinstance(n, fx.Node) else n
        if isinstance(val, torch.Tensor):
            return torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=val.device).zero_()
        return val

    def run(args: list) -> Any:
        return fx.node.map_aggregate(out.args[0], zeros)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run


def make_eager_runner(gm: fx.GraphModule) -> Callable[[list], Any]:
    def run(args: list) -> Any:
        return gm(*args)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run
