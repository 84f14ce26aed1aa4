"""Which compiler compiles a program segment: flashlight, or Inductor (``torch._inductor``).

flashlight's passes earn their keep on dependent reductions: where a contraction's result is
reduced again (attention's scores under softmax, a loss's logits under log-sum-exp) or a
reduced value feeds a contraction's operand (a norm before a projection), its kernels keep in
registers a tensor that Inductor stores: Inductor calls the vendor GEMM for every contraction,
which reads its operands from memory and writes its result there. A segment without such a
tensor (pointwise chains, norms, softmax over a stored tensor, a lone GEMM and its epilogue)
moves the same bytes under either compiler, and Inductor's kernels and the vendor GEMM are the
well-kept ones: it is handed to Inductor. This is a model, not a measurement (docs/design.md
10.5 says what the benchmarks measure); the option ``inductor`` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from flashlight.ir.expr import Call, Iter, Load, loads
from flashlight.ir.nodes import Program, Stmt
from flashlight.ir.products import factor_load


def is_contraction(s: Stmt) -> bool:
    """``acc[..] += A[..] * B[..]`` whose two factors both use an iterator the target does not:
    a matrix product (or a batch of them), the work of a GEMM."""
    if s.op != "+=" or s.scale is not None or not (isinstance(s.expr, Call) and s.expr.op == "mul"):
        return False
    factors = [factor_load(x) for x in s.expr.args]
    if len(factors) != 2 or factors[0] is None or factors[1] is None:
        return False
    a, b = (_iterators(f) for f in factors)
    return bool((a & b) - _iterators(s.target))


def _iterators(ld: Load) -> set[str]:
    return {i.name for i in ld.indices if isinstance(i, Iter)}


def kept_in_registers(lifted: Program, final: Program | None) -> str | None:
    """Why the final program beats a compiler that stores every contraction's operands and result:
    the first tensor of ``lifted`` that is a contraction's result read by a reduction (through
    elementwise steps), or a computed operand of one that depends on a reduction, and that
    ``final`` does not store; None if there is none. With ``final`` None, the first such tensor
    any schedule might keep (None: the passes cannot gain, whatever they do)."""
    stmts = lifted.statements()
    writers: dict[str, list[Stmt]] = {}
    readers: dict[str, list[Stmt]] = {}
    for s in stmts:
        writers.setdefault(s.target.tensor, []).append(s)
        for t in _read(s):
            readers.setdefault(t, []).append(s)
    stored = {t.name for t in final.tensors if t.storage == "global"} if final is not None else set()
    temps = {t.name for t in lifted.temps}

    def reaches_reduction(t: str, seen: set[str]) -> bool:  # read by a reduction, through elementwise steps
        for r in readers.get(t, []):
            if r.is_reduction or (r.target.tensor not in seen and
                                  reaches_reduction(r.target.tensor, seen | {r.target.tensor})):
                return True
        return False

    def from_reduction(t: str, seen: set[str]) -> bool:  # computed from a reduction, through elementwise steps
        for w in writers.get(t, []):
            if w.is_reduction:
                return True
            if any(u not in seen and from_reduction(u, seen | {u}) for u in _read(w)):
                return True
        return False

    for s in stmts:
        if not is_contraction(s):
            continue
        result = s.target.tensor
        if result in temps and result not in stored and reaches_reduction(result, {result}):
            return (f"the contraction {result}{_shape(lifted, result)} is reduced again inside the kernel "
                    "and never stored; Inductor would store it")
        for t in _read(s):
            if t in temps and t not in stored and from_reduction(t, {t}):
                return (f"the operand {t}{_shape(lifted, t)} of the contraction {result} is computed from a "
                        "reduction inside the kernel and never stored; Inductor would store it")
    return None


def _read(s: Stmt) -> set[str]:
    return {ld.tensor for ld in loads(s.expr)} | ({s.target.tensor} if s.scale is not None else set())


def _shape(p: Program, name: str) -> str:
    return "[" + ", ".join(map(str, p.tensor(name).shape)) + "]"


@dataclass(frozen=True)
class Decision:
    """Who compiles a program segment, and why."""

    program: str
    compiler: str  # "flashlight" or "Inductor"
    reason: str


def decide(lifted: Program, final: Program | None, target: str, choice: bool | None) -> Decision:
    """The model's verdict on one segment, under the option ``inductor`` (``choice``): None hands
    a segment to Inductor on the GPU only (the interpreter is flashlight's test target), True on
    every device, False never."""
    gain = kept_in_registers(lifted, final)
    if gain is not None:
        return Decision(lifted.name, "flashlight", gain)
    plain = "no contraction's result or operand stays in registers (Inductor's kernels move the same bytes)"
    if choice is False:
        return Decision(lifted.name, "flashlight", f"{plain}; inductor=False keeps it")
    if choice is None and target != "cuda":
        return Decision(lifted.name, "flashlight", f"{plain}; handed to Inductor on the GPU (inductor=True: "
                                                   "on every device)")
    return Decision(lifted.name, "Inductor", plain)


def subgraph(nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """The graph nodes of a segment as a graph of their own (their traced values kept): its inputs
    placeholders, its outputs returned as a tuple."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for k, n in enumerate(inputs):
        env[n] = g.placeholder(f"in{k}")
        env[n].meta = dict(n.meta)
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(torch.nn.Module(), g)


def can_hand_off() -> bool:
    """Inductor compiles a segment where it compiles a graph of its own: inside the capture that
    traced it (AOT autograd's compiler call), whose fake tensors the segment's values are."""
    from torch._guards import TracingContext

    return TracingContext.try_get() is not None


@dataclass
class InductorSegment:
    """A program segment compiled by Inductor, as Inductor compiles the graph AOT autograd hands
    it (``compile_fx_inner``: an aten graph and the capture's fake inputs)."""

    program: Program = field(repr=False)  # the lifted program (for reports)
    run: Callable[[list], Any] = field(repr=False)

    @classmethod
    def of(cls, program: Program, nodes: list[fx.Node], inputs: list[fx.Node],
           outputs: list[fx.Node]) -> InductorSegment:
        from torch._inductor.compile_fx import compile_fx_inner

        gm = subgraph(nodes, inputs, outputs)
        return cls(program, compile_fx_inner(gm, [n.meta["val"] for n in inputs]))

    @property
    def launches(self) -> list:
        return []  # no kernel of flashlight's

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.run(list(inputs)))  # Inductor's boxed call empties the list it is given
