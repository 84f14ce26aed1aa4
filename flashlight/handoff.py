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
    the first tensor of :func:`fused_region` that is a contraction's result reduced again, or a
    contraction's computed operand, and that ``final`` does not store; None if there is none.
    With ``final`` None, the first such tensor any schedule might keep (None: the passes cannot
    gain, whatever they do)."""
    region = fused_region(lifted)
    stored = {t.name for t in final.tensors if t.storage == "global"} if final is not None else set()
    temps = {t.name for t in lifted.temps}
    kept = (region & temps) - stored
    for s in lifted.statements():
        if not is_contraction(s):
            continue
        for t in sorted(_read(s) & kept):
            return (f"the operand {t}{_shape(lifted, t)} of the contraction {s.target.tensor} is computed from a "
                    "reduction inside the kernel and never stored; Inductor would store it")
        if s.target.tensor in kept:
            return (f"the contraction {s.target.tensor}{_shape(lifted, s.target.tensor)} is reduced again inside "
                    "the kernel and never stored; Inductor would store it")
    return None


def fused_region(lifted: Program) -> set[str]:
    """The tensors of ``lifted`` whose kernels flashlight keeps (the rest may be Inductor's): each
    contraction reduced again (through elementwise steps) with those steps, the reductions, what
    follows them elementwise up to the contractions that read it (attention's ``P @ V``), and each
    contraction whose operand is computed from a reduction, with that chain; every member also
    brings the elementwise steps that compute its operands (a norm's squares)."""
    stmts = lifted.statements()
    writer = {s.target.tensor: s for s in stmts}
    readers: dict[str, list[Stmt]] = {}
    for s in stmts:
        for t in _read(s):
            readers.setdefault(t, []).append(s)
    region: set[str] = set()

    def forward(t: str, path: tuple[str, ...], to_contraction: bool) -> None:
        """Add the paths from ``t`` through elementwise steps to a reduction that is no contraction
        (or, ``to_contraction``, to a contraction), and what lies on them."""
        for r in readers.get(t, []):
            u = r.target.tensor
            if u in path:
                continue
            if not r.is_reduction:
                forward(u, path + (u,), to_contraction)
            elif is_contraction(r) == to_contraction:
                region.update(path + (u,))
                if not to_contraction:
                    forward(u, (u,), True)  # on to the contraction that reads what it normalises

    for s in stmts:
        if is_contraction(s):
            forward(s.target.tensor, (s.target.tensor,), False)
    for s in stmts:  # a reduction whose result reaches a contraction's operand
        if s.is_reduction and not is_contraction(s):
            forward(s.target.tensor, (s.target.tensor,), True)
    grown = True
    while grown:  # the elementwise steps that compute a member's operands come with it
        grown = False
        for t in list(region):
            w = writer.get(t)
            for u in _read(w) if w is not None else ():
                v = writer.get(u)
                if v is not None and u not in region and not v.is_reduction:
                    region.add(u)
                    grown = True
    return region


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
    """A program segment compiled by Inductor (``torch._inductor.compile`` on the segment's nodes
    and the capture's fake inputs: Inductor decomposes the graph its own way, as it does Dynamo's)."""

    program: Program = field(repr=False)  # the lifted program (for reports)
    run: Callable[[list], Any] = field(repr=False)

    @classmethod
    def of(cls, program: Program, nodes: list[fx.Node], inputs: list[fx.Node],
           outputs: list[fx.Node]) -> InductorSegment:
        from torch._inductor import compile as inductor_compile  # called as the graph is

        gm = subgraph(nodes, inputs, outputs)
        return cls(program, inductor_compile(gm, [n.meta["val"] for n in inputs]))

    @property
    def launches(self) -> list:
        return []  # no kernel of flashlight's

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.run(*inputs))
