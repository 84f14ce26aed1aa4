"""The compiled callable of one captured graph: segments run in order.

A program segment allocates its outputs and global buffers on the device of its inputs and
launches its kernels; an eager segment calls the aten operator. A program segment whose
compilation failed runs its original graph nodes eagerly instead (the reason is recorded as a
fallback), so a compiled function always computes what eager computes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from flashlight.codegen.launcher import Launch
from flashlight.counting import counters
from flashlight.frontend.segments import EagerSegment, LiftedGraph
from flashlight.frontend.torch_dtypes import IR_TO_TORCH
from flashlight.ir.nodes import Program

log = logging.getLogger("flashlight")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
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
    input_strides: dict[str, tuple[int, ...]]
    device: torch.device = torch.device("cpu")

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        device = inputs[0].device if inputs else self.device
        for decl, t in zip(self.program.inputs, inputs):
            want = self.input_strides[decl.name]
            if tuple(t.stride()) != want and t.numel() > 1:
                t = restride(t, want)
            tensors[decl.name] = t
        for decl in self.program.tensors:
            if decl.role == "input" or decl.storage == "local":
                continue
            tensors[decl.name] = torch.empty(decl.shape, dtype=IR_TO_TORCH[decl.dtype], device=device)
        for launch in self.launches:
            launch(tensors)
        return [tensors[d.name] for d in self.program.outputs]


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
class CompiledGraph:
    lifted: LiftedGraph
    compiled: dict[int, CompiledProgram | TunedOnFirstCall | None]  # by segment; None runs it eagerly
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    saved: list[fx.Node] = field(default_factory=list)  # outputs the backward reads

    def __call__(self, args: list) -> Any:
        env: dict[fx.Node, Any] = dict(zip(self.lifted.placeholders, args))
        env.update(self.lifted.constants)  # tensor constants of the function (torch.tensor(2.0))
        for k, seg in enumerate(self.lifted.segments):
            if isinstance(seg, EagerSegment):
                env[seg.node] = _run_node(seg.node, env)
                continue
            prog = self.compiled.get(k)
            if prog is not None:
                try:
                    outs = prog([env[n] for n in seg.inputs])
                except Exception as exc:  # noqa: BLE001  (a launch that fails is a fallback, said once)
                    reason = f"launching its kernels failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    log.warning("flashlight: program %s runs in eager PyTorch from now on: %s", seg.program.name,
                                reason)
                    self.fallbacks.append((f"program {seg.program.name} ({len(seg.nodes)} ops)", reason))
                    self.compiled[k] = prog = None
            if prog is None:
                counters["eager_segments"] += 1
                for n in seg.nodes:
                    env[n] = _run_node(n, env)
                continue
            for n, t in zip(seg.outputs, outs):
                # a delinearised output ([B, Hkv, G, S, D] for [B, H, S, D]) is the same contiguous data;
                # laid out as the graph traced it (a backward views saved tensors by those strides)
                val = n.meta["val"]
                t = t.view(val.shape)
                env[n] = t if t.stride() == val.stride() or t.numel() <= 1 else restride(t, tuple(val.stride()))
        out_node = next(n for n in self.lifted.graph.nodes if n.op == "output")
        return fx.node.map_arg(out_node.args[0], lambda n: env[n])


def _run_node(n: fx.Node, env: dict[fx.Node, Any]) -> Any:
    args = fx.node.map_arg(n.args, lambda a: env[a])
    kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
    return n.target(*args, **kwargs)  # type: ignore[operator]

