"""A cut graph compiled by Inductor whole, with flashlight's programs inside it as opaque calls.

Where programs are cut (:mod:`flashlight.handoff`), a model's graph alternates between programs of
Inductor's and programs of ours. Compiled apart, each of Inductor's is a graph of its own behind
its own wrapper, and every call pays the wrappers' host time once per program: in run 25 a
4-layer Llama spent 3.2 ms of host time per call against 0.8 ms of GPU work, five Inductor wrappers
the most of it. Joined, Inductor compiles the whole graph once, as it would without us; each of
our programs is one node calling ``flashlight::program``, an operator Inductor treats as opaque
(it knows the outputs' shapes, dtypes and strides, as traced, and nothing else) whose
implementation launches the program's kernels. Inductor then plans the buffers and lays out
the values between the programs itself.

The operator names a program by a key into a table of this process; a key is drawn at random, so
that a graph compiled in another process (Inductor's on-disk caches) never names another program.
"""

from __future__ import annotations

import operator
import secrets
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.fx as fx

from flashlight.frontend.segments import EagerSegment, LiftedGraph, ProgramSegment, is_empty
from flashlight.handoff import copy_nodes
from flashlight.runtime import CompiledGraph, as_traced, launch_failed, run_node

_PROGRAMS: weakref.WeakValueDictionary[int, EmbeddedProgram] = weakref.WeakValueDictionary()


@dataclass(eq=False)
class EmbeddedProgram:
    """A program of ours as Inductor's graph calls it: its outputs come back as the graph traced
    them (shape and strides), which is what Inductor planned for."""

    segment: ProgramSegment
    run: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    device: torch.device
    fallbacks: list[tuple[str, str]]  # the graph's: a launch that fails is recorded there
    key: int = field(default_factory=lambda: secrets.randbits(62))

    @property
    def name(self) -> str:
        return self.segment.program.name

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            outs = self.run(inputs)
        except Exception as exc:  # noqa: BLE001  (a launch that fails is a fallback, said once)
            launch_failed(self.segment, exc, self.fallbacks)
            self.run = partial(run_nodes, self.segment)
            outs = self.run(inputs)
        return [as_traced(t, n.meta["val"].shape, n.meta["val"].stride()) for t, n in zip(outs, self.segment.outputs)]

    def fake(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        device = inputs[0].device if inputs else self.device
        return [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=device)
                for v in (n.meta["val"] for n in self.segment.outputs)]


# Defined through torch.library's lower layer, not ``custom_op``: a call then costs 3 us of
# dispatch rather than 24 (custom_op wraps it for autograd and for Dynamo, neither of which runs
# here: Inductor's graph is compiled after AOT autograd, and calls it without grad)
_LIBRARY = torch.library.Library("flashlight", "DEF")
_LIBRARY.define("program(Tensor[] inputs, int key) -> Tensor[]")


def call_program(inputs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Launches the kernels of the program registered under ``key``."""
    return _PROGRAMS[key](inputs)


_LIBRARY.impl("program", call_program, "CompositeExplicitAutograd")


@torch.library.register_fake("flashlight::program")
def _call_program_fake(inputs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    return _PROGRAMS[key].fake(inputs)


def joined_graph(lifted: LiftedGraph, ours: dict[int, EmbeddedProgram]) -> fx.GraphModule:
    """The lifted graph again, each segment in ``ours`` (by index) one call of its program, the
    other nodes copied as Inductor takes them (capture's prims as aten operators)."""
    g = fx.Graph()
    root = torch.nn.Module()
    env: dict[fx.Node, fx.Node] = {}
    for n in lifted.placeholders:
        env[n] = g.node_copy(n)
    for n, value in lifted.constants.items():  # tensor constants of the function, read by get_attr
        if isinstance(value, torch.Tensor):
            root.register_buffer(str(n.target), value)
        else:
            setattr(root, str(n.target), value)
        env[n] = g.node_copy(n)
    for k, seg in enumerate(lifted.segments):
        if isinstance(seg, EagerSegment):
            copy_nodes(g, [seg.node], env)
        elif k in ours:
            call = g.call_function(torch.ops.flashlight.program.default,
                                   ([env[n] for n in seg.inputs], ours[k].key))
            call.meta["val"] = [n.meta["val"] for n in seg.outputs]
            for j, n in enumerate(seg.outputs):
                env[n] = g.call_function(operator.getitem, (call, j))
                env[n].meta = dict(n.meta)
        else:  # Inductor's, or a program that runs eagerly: Inductor compiles its nodes
            copy_nodes(g, [n for n in seg.nodes if n not in env], env)
    output = next(n for n in lifted.graph.nodes if n.op == "output")
    g.output(fx.node.map_arg(output.args[0], env.__getitem__))
    return fx.GraphModule(root, g)


def embedded(seg: ProgramSegment, run: Callable[[list[torch.Tensor]], list[torch.Tensor]], device: torch.device,
             fallbacks: list[tuple[str, str]]) -> EmbeddedProgram:
    """A compiled program segment (of fixed sizes) as Inductor's graph calls it, registered for the
    operator (for as long as something else holds it)."""
    program = EmbeddedProgram(seg, run, device, fallbacks)
    _PROGRAMS[program.key] = program
    return program


@dataclass
class JoinedGraph(CompiledGraph):
    """A compiled graph that Inductor runs whole: its segments are as compiled (for reports and
    tests); ``inductor`` is Inductor's callable of the joined graph, ``programs`` the programs it
    calls (held here: the operator's table holds them only while this does)."""

    inductor: Callable[..., Any] | None = field(default=None, repr=False)
    programs: list[EmbeddedProgram] = field(default_factory=list, repr=False)
    traced: list[torch.Tensor | None] = field(default_factory=list, repr=False)  # each output's traced value

    def __call__(self, args: list) -> list:
        """The graph's outputs, laid out as traced: Inductor returns a value as it computed it (a
        key cache that is ``cat`` of an empty cache and a transposed key, the transposed key),
        while AOT compiled the backward, and eager returns, for the traced strides."""
        outs = self.inductor(*args)  # type: ignore[misc]
        return [t if v is None else as_traced(t, v.shape, v.stride()) for t, v in zip(outs, self.traced)]


def join(graph: CompiledGraph, example_inputs: Sequence[Any], ours: set[int]) -> JoinedGraph:
    """``graph`` compiled by Inductor whole (``torch._inductor.compile`` on the capture's fake
    inputs), each segment in ``ours`` (by index: compiled by flashlight) called through the
    operator, every other node compiled by Inductor. Raises where Inductor cannot compile it."""
    from torch._guards import TracingContext
    from torch._inductor import compile as inductor_compile
    from torch._inductor import config

    lifted = graph.lifted
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))

    programs = {}
    for k in sorted(ours):
        seg = lifted.segments[k]
        assert isinstance(seg, ProgramSegment)
        programs[k] = embedded(seg, graph.compiled[k], device, graph.fallbacks)  # type: ignore[arg-type]
    gm = joined_graph(lifted, programs)
    # the operator's keys are of this process: a graph cached on disk would name no program
    with config.patch(fx_graph_cache=False), TracingContext.report_output_strides():
        # the capture's inputs: a backward's are laid out as the forward's outputs are
        run = inductor_compile(gm, list(example_inputs))
    output = next(n for n in lifted.graph.nodes if n.op == "output")
    traced = [v if isinstance(n, fx.Node) and isinstance(v := n.meta.get("val"), torch.Tensor) else None
              for n in output.args[0]]
    return JoinedGraph(lifted, graph.compiled, graph.fallbacks, graph.saved, inductor=run,
                       programs=list(programs.values()), traced=traced)


def run_nodes(seg: ProgramSegment, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A program segment's graph nodes run by PyTorch, one operator after another."""
    env: dict[fx.Node, Any] = dict(zip(seg.inputs, inputs))
    for n in seg.nodes:
        for a in n.all_input_nodes:
            if a not in env and is_empty(a):  # a value with no elements that the program dropped
                val = a.meta["val"]
                env[a] = torch.empty(val.shape, dtype=val.dtype, device=inputs[0].device)
        env[n] = run_node(n, env)
    return [env[n] for n in seg.outputs]


def can_join(graph: CompiledGraph) -> bool:
    """Whether the graph's sizes are fixed: the operator reports its outputs' layouts as traced, at
    one size (a decode step's graph, whose cache length varies, compiles its segments apart)."""
    return not any(isinstance(d, torch.SymInt) for n in graph.lifted.placeholders
                   if isinstance(v := n.meta.get("val"), torch.Tensor) for d in (*v.shape, *v.stride()))
